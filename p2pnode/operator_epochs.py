"""The operators' rewards epoch service: challenge providers during each epoch, then close it.

Closing epoch ``e`` (after its end plus a grace period for late gossip): compute the allocation from the
attestations this operator stored and the stake on chain, sign the manifest, keep it, gossip it on
``/iog/rewards/1``, and — on the operator that holds the pool's delegate allowance — pay it. Epochs are closed
and paid strictly in order; after downtime the service catches up from the first unclosed epoch, so a missed
hour is late, never skipped. Challenges are issued at random times inside the epoch (a provider cannot be "up"
only when it expects a check). Composed into ``p2pnode bootstrap`` by the operator role.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from .chain.rewards import Allocation, EpochClock
from .chain.rewards_inputs import compute_allocation, record_manifest, stored_manifest
from .chain.rewards_manifest import TOPIC, RewardsManifest
from .identity import Identity
from .store import Store
from .wire import open_envelope, seal

log = logging.getLogger(__name__)

Challenge = Callable[[str], Awaitable[None]]  # run one attestation of a provider (PeerID) and record the result
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

    def __post_init__(self) -> None:
        self.clock = EpochClock(genesis_time=self.params.genesis_time, epoch_s=self.params.epoch_s)
        if self.grace_s is None:
            self.grace_s = min(30.0, self.params.epoch_s / 4)

    # ---- closing epochs -------------------------------------------------------------------------------------

    def next_epoch_to_close(self) -> int:
        row = self.store.query("SELECT MAX(epoch) FROM reward_manifests")
        if row and row[0][0] is not None:
            return int(row[0][0]) + 1
        if self.first_epoch is not None:
            return self.first_epoch
        return max(0, self.clock.epoch_at(self.now()) - 1)

    async def close_epoch(self, epoch: int) -> Allocation:
        """Build, sign, keep and gossip the manifest of `epoch` (idempotent: a stored manifest is reused)."""
        existing = stored_manifest(self.store, epoch)
        if existing is not None:
            alloc = existing.message.allocation()
            raw = existing.raw
        else:
            alloc = await compute_allocation(self.store, self.client, self.params, epoch)
            m = RewardsManifest.from_allocation(alloc, pool=self.params.rewards_pool, epoch_s=self.params.epoch_s,
                                                created_at=int(self.now()))
            raw = seal(m, self.identity)
            record_manifest(self.store, open_envelope(raw, RewardsManifest))
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
        rows = self.store.query("SELECT envelope FROM reward_manifests ORDER BY epoch")
        allocs = [open_envelope(bytes(r[0]), RewardsManifest).message.allocation() for r in rows]
        todo = [a for a in allocs if self.distributor.epoch_status(a.epoch) != "paid"]
        await self.distributor.pay_pending(todo)

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
        with trio.move_on_after(self.challenge_timeout_s) as scope:
            try:
                await self.challenge(provider)
            except Exception as exc:  # one provider's failure must not stop the others' challenges
                log.info("challenge of %s failed: %s", provider, exc)
        if scope.cancelled_caught:
            log.info("challenge of %s timed out", provider)

    # ---- run ------------------------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: challenge providers and close epochs as they end (catching up first)."""
        async with trio.open_nursery() as nursery:
            if self.challenge is not None:
                nursery.start_soon(self._challenger)
            task_status.started(self)
            while True:
                try:
                    await self.catch_up()
                except Exception as exc:  # RPC down, allowance low: retry next round, nothing is lost
                    log.warning("rewards epoch service: %s", exc)
                nxt = self.next_epoch_to_close()
                wake = self.clock.bounds(nxt)[1] + self.grace_s
                await trio.sleep(max(0.2, min(wake - self.now(), self.params.epoch_s)))
