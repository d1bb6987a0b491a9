"""The operators' rewards epoch service: challenge providers during each epoch, then close it.

Closing epoch ``e`` (after its end plus a grace period for late gossip): compute the allocation from the
attestations this operator stored and the stake on chain, sign the manifest, keep it, gossip it on
``/iog/rewards/1``, and — on the operator that holds the pool's delegate allowance — pay it. Epochs are closed
and paid strictly in order; after downtime the service catches up from the first unclosed epoch, so a missed
hour is late, never skipped. Challenges are issued at random times inside the epoch (a provider cannot be "up"
only when it expects a check).

A challenge that cannot even start (provider unreachable, stream refused, no answer before the timeout) is a
challenge *issued and not answered*: the service signs and records a failed attestation for it (and gossips it on
``/iog/attest/1`` when it can), because the weight is capacity x the fraction of the epoch's challenges answered
and a provider that is simply offline must not keep a perfect fraction. Recorded as evidence, it is recomputable
by anyone like every other attestation.

Who pays: the rewards pool has one SPL delegate at a time (see :mod:`p2pnode.chain.rewards_distribute`). Every
operator closes, signs and gossips manifests; only the operator whose key is the pool's current delegate sends
transfers, decided from chain state on each round, so re-approving another operator moves the duty without any
configuration change. :meth:`EpochService.for_operator` builds the service the way ``p2pnode bootstrap`` runs it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from .chain.rewards import Allocation, EpochClock
from .chain.rewards_inputs import (
    compute_allocation,
    own_manifest,
    record_manifest,
    record_own_manifest,
    stored_manifest,
)
from .chain.rewards_manifest import TOPIC, RewardsManifest
from .identity import Identity
from .store import Store
from .wire import open_envelope, seal

log = logging.getLogger(__name__)

# Run one attestation of a provider (PeerID) and record its signed result (passed or failed). Raising (or not
# finishing within challenge_timeout_s) means no result was recorded: the service records "unreachable".
Challenge = Callable[[str], Awaitable[None]]
Publish = Callable[[str, bytes], Awaitable[None]]  # gossip publish(topic, data)


@dataclass
class EpochService:
    identity: Identity
    params: object  # chain.network.NetworkParams
    store: Store
    client: object  # chain.rpc.ChainClient (stake reads)
    distributor: object | None = None  # chain.rewards_distribute.Distributor on the delegate operator
    publish: Publish | None = None
    challenge: Challenge | None = None
    providers: Callable[[], Sequence[str]] = lambda: ()
    challenges_per_epoch: int = 2
    grace_s: float | None = None  # wait after an epoch ends before closing it (late attestations)
    challenge_timeout_s: float = 60.0
    first_epoch: int | None = None  # None: resume after the last closed epoch, else from the current one
    now: Callable[[], float] = time.time
    closed: list[int] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # providers recorded as not answering (observability)
    retry_min_s: float = 1.0  # after a failed round (RPC down, allowance too low): first retry, doubling ...
    retry_max_s: float = 60.0  # ... up to this

    @classmethod
    def for_operator(cls, identity: Identity, params, store: Store, client, rpc, *, publish: Publish | None = None,
                     challenge: Challenge | None = None, providers: Callable[[], Sequence[str]] = lambda: (),
                     **kw) -> "EpochService | None":
        """The service as ``p2pnode bootstrap`` runs it, or None when this key is not one of the network's operators.

        `client` is a :class:`p2pnode.chain.rpc.ChainClient` (stake reads), `rpc` a solana-py ``AsyncClient`` on
        the same URL (payouts). Every operator gets a distributor with its own key; it pays only while that key is
        the pool's delegate (:meth:`is_delegate`), so the quorum moves the duty by approving another operator.
        """
        from .chain.rewards_distribute import Distributor, Pool

        if identity.address not in params.operators:
            return None
        dist = Distributor(rpc, store, identity.solana_keypair(), Pool.from_network(params))
        return cls(identity=identity, params=params, store=store, client=client, distributor=dist, publish=publish,
                   challenge=challenge, providers=providers, **kw)

    def __post_init__(self) -> None:
        self.clock = EpochClock(genesis_time=self.params.genesis_time, epoch_s=self.params.epoch_s)
        if self.grace_s is None:
            self.grace_s = min(30.0, self.params.epoch_s / 4)

    # ---- closing epochs -------------------------------------------------------------------------------------

    def next_epoch_to_close(self) -> int:
        row = self.store.query("SELECT MAX(epoch) FROM reward_own_manifests")
        if row and row[0][0] is not None:
            return int(row[0][0]) + 1
        if self.first_epoch is not None:
            return self.first_epoch
        return max(0, self.clock.epoch_at(self.now()) - 1)

    async def close_epoch(self, epoch: int) -> Allocation:
        """Build, sign, keep and gossip the manifest of `epoch` (idempotent: a stored manifest is reused)."""
        existing = own_manifest(self.store, epoch)
        if existing is not None:
            alloc = existing.message.allocation()
            raw = existing.raw
        else:
            carry_in = None
            prev = own_manifest(self.store, epoch - 1) if epoch > 0 else None
            if prev is not None:
                carry_in = prev.message.carry_out  # our own chain of carries, not whichever manifest came first
            alloc = await compute_allocation(self.store, self.client, self.params, epoch, carry_in=carry_in)
            m = RewardsManifest.from_allocation(alloc, pool=self.params.rewards_pool, epoch_s=self.params.epoch_s,
                                                created_at=int(self.now()))
            raw = seal(m, self.identity)
            signed = open_envelope(raw, RewardsManifest)
            record_own_manifest(self.store, signed)
            if not record_manifest(self.store, signed):
                other = stored_manifest(self.store, epoch)
                if other is not None and other.message.root != alloc.root:
                    log.warning("rewards epoch %d: our root %s differs from the manifest received from %s (%s); "
                                "`p2pnode rewards verify --epoch %d` shows the differing entries", epoch,
                                alloc.root.hex()[:16], other.signer_peer_id, other.message.root.hex()[:16], epoch)
            log.info("rewards epoch %d: %d paid, %d excluded, carry %d, root %s", epoch, len(alloc.entries),
                     len(alloc.excluded), alloc.carry_out, alloc.root.hex()[:16])
        if self.publish is not None:
            try:
                with trio.fail_after(10):
                    await self.publish(TOPIC, raw)
            except (trio.TooSlowError, Exception) as exc:  # gossip is best effort; the manifest is on disk
                log.warning("could not gossip the epoch %d manifest: %s", epoch, exc)
        self.closed.append(epoch)
        return alloc

    async def pay_closed(self) -> None:
        """Pay every closed, unpaid epoch in order (the delegate operator only)."""
        if self.distributor is None:
            return
        if not await self.is_delegate():
            log.debug("not the rewards pool's delegate: closing and gossiping epochs, not paying them")
            return  # another operator holds the allowance and pays; we only closed and gossiped
        rows = self.store.query("SELECT envelope FROM reward_own_manifests ORDER BY epoch")
        allocs = [open_envelope(bytes(r[0]), RewardsManifest).message.allocation() for r in rows]
        todo = [a for a in allocs if self.distributor.epoch_status(a.epoch) != "paid"]
        await self.distributor.pay_pending(todo)

    async def is_delegate(self) -> bool:
        """Whether our distributor key is the pool's current delegate (read from chain every round)."""
        from .chain import token
        from .chain.rewards_distribute import _accounts

        (acc,) = await _accounts(self.distributor.rpc, [self.distributor.pool.pool])
        if acc is None:
            return False
        return token.parse_token_account(bytes(acc.data)).delegate == self.distributor.key

    async def catch_up(self) -> list[int]:
        """Close every ended epoch not closed yet, in order, then pay them."""
        done = []
        epoch = self.next_epoch_to_close()
        while self.clock.bounds(epoch)[1] + self.grace_s <= self.now():
            await self.close_epoch(epoch)
            done.append(epoch)
            epoch += 1
        await self.pay_closed()
        return done

    # ---- challenges -----------------------------------------------------------------------------------------

    def challenge_times(self, epoch: int, providers: Sequence[str], rng: random.Random) -> list[tuple[float, str]]:
        """Random instants in the epoch's [start, end - grace) at which each provider is challenged."""
        start, end = self.clock.bounds(epoch)
        span = max(1.0, end - start - self.grace_s)
        plan = [(start + rng.random() * span, p) for p in providers for _ in range(self.challenges_per_epoch)]
        return sorted(plan)

    async def _challenger(self) -> None:
        rng = random.SystemRandom()  # providers must not predict when they are checked
        while True:
            epoch = self.clock.epoch_at(self.now())
            plan = self.challenge_times(epoch, list(self.providers()), rng)
            async with trio.open_nursery() as nursery:
                for at, provider in plan:
                    if at < self.now():
                        continue
                    await trio.sleep(max(0.0, at - self.now()))
                    nursery.start_soon(self._one_challenge, provider)
            await trio.sleep(max(0.0, self.clock.bounds(epoch)[1] - self.now()))

    async def _one_challenge(self, provider: str) -> None:
        assert self.challenge is not None
        reason = None
        with trio.move_on_after(self.challenge_timeout_s) as scope:
            try:
                await self.challenge(provider)
            except Exception as exc:  # one provider's failure must not stop the others' challenges
                log.info("challenge of %s failed: %s", provider, exc)
                reason = f"unreachable: {type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            log.info("challenge of %s timed out", provider)
            reason = f"unreachable: no answer within {self.challenge_timeout_s:.0f} s"
        if reason is not None:
            await self.record_unanswered(provider, reason)

    async def record_unanswered(self, provider: str, reason: str) -> bytes:
        """Sign, store and gossip a failed attestation for a challenge the provider never answered."""
        from .compute.attest import TOPIC as ATTEST_TOPIC
        from .compute.attest import Attestation, record_attestation
        from .wire import Device

        now = int(self.now())
        challenge = hashlib.sha256(b"iog/attest/unanswered\x00" + provider.encode() + now.to_bytes(8, "big")
                                   + secrets.token_bytes(16)).digest()
        att = Attestation(provider=provider, device=Device(kind="cpu", name="unreachable", mem_bytes=0),
                          device_index=0, tflops=0.0, challenge=challenge, passed=False, reason=reason[:256],
                          verifier=self.identity.peer_id, time=now)
        raw = seal(att, self.identity)
        record_attestation(self.store, open_envelope(raw, Attestation))  # durable evidence first
        self.unreachable.append(provider)
        if self.publish is not None:
            with trio.move_on_after(10):
                try:
                    await self.publish(ATTEST_TOPIC, raw)
                except Exception as exc:  # gossip is best effort; the record is on disk
                    log.warning("could not gossip an unanswered-challenge attestation: %s", exc)
        return raw

    # ---- run ------------------------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: challenge providers and close epochs as they end (catching up first)."""
        async with trio.open_nursery() as nursery:
            if self.challenge is not None:
                nursery.start_soon(self._challenger)
            task_status.started(self)
            retry_s = self.retry_min_s
            while True:
                try:
                    await self.catch_up()
                except Exception as exc:  # RPC down, allowance low: retry soon, nothing is lost (all durable)
                    log.warning("rewards epoch service: %s (retrying in %.0f s)", exc, retry_s)
                    # a failed payout or close is retried with backoff, not an epoch later: an RPC blip must not
                    # delay everyone's rewards by an hour
                    await trio.sleep(retry_s)
                    retry_s = min(2 * retry_s, self.retry_max_s)
                    continue
                retry_s = self.retry_min_s
                nxt = self.next_epoch_to_close()
                wake = self.clock.bounds(nxt)[1] + self.grace_s
                await trio.sleep(max(0.2, min(wake - self.now(), self.params.epoch_s)))
