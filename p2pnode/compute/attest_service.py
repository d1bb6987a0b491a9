"""Capacity attestation on running nodes: the provider's ``/iog/attest/1.0.0`` server, the operator's challenger,
and the ``/iog/attest/1`` gossip validator.

:mod:`p2pnode.compute.attest` has the protocol over any framed stream (``serve_challenge`` / ``verify_provider``)
and the signed :class:`~p2pnode.compute.attest.Attestation`. This module puts them on libp2p:

* :class:`AttestServer` (provider): registers the stream handler, answers one challenge at a time per device, and
  refuses — with a signed ``attest-refused`` frame naming a reason, then closing the stream — a challenge from a
  peer that is not one of the network's operators (when the node has a network.json), for a device it does not
  have, too large for the device's memory or too long, or while that device is already answering another
  challenge. Malformed frames, a verifier that vanishes and torch errors end that one stream, never the node.
* :class:`Challenger` (operator): the ``challenge`` and ``providers`` callables of
  :class:`p2pnode.operator_epochs.EpochService`. It dials the provider at the addresses in its offer, challenges
  every device the offer lists at its claimed TFLOPS (a floor for devices never attested), records the signed
  verdict and gossips it. A ``busy`` refusal is retried with backoff (two operators may pick the same instant);
  every other failure to start is raised, so the epoch service records the challenge as issued and not answered.
* :class:`AttestTopic`: the ``/iog/attest/1`` validator every node runs (signature, signer = verifier = gossip
  origin, time window, and — when the network is known — the verifier is one of its operators).

``attest-refused`` is an addition to ``/iog/attest/1.0.0``: a verifier that does not know it sees an unexpected
message type where the fingerprints should be, i.e. a failed challenge, which is also what a refusal means to it.

**Why the prover runs in a worker thread, not in the sandbox.** ``serve_challenge`` runs ``Prover.setup/run`` and
each opening with ``trio.to_thread.run_sync``: torch releases the GIL inside its kernels, so the trio loop keeps
serving gossip, jobs and status while the chain runs, and each step's fingerprint reaches the stream at once
(``trio.from_thread``), which is what the verifier times. The sandbox exists to contain *renter* code and inputs;
a challenge is our own fixed code on bounded integer inputs (size and memory checked here before anything is
allocated), and a process hop per step — or a worker pool shared with paid jobs — would add latency to exactly
the figure being measured. The thread is never abandoned: cancelling the stream sets ``prover.cancelled`` and
waits for the current step to return.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ..errors import P2PNodeError, ProtocolError
from ..identity import Identity, peer_id_from_public_key, public_key_from_peer_id
from ..net.gossip import GossipMessage, TopicValidator
from ..wire import (
    Device,
    FramedStream,
    Message,
    Signed,
    UnknownType,
    bounded,
    message,
    open_envelope,
    seal,
)
from .attest import (
    DEFAULT_STORE_BUDGET,
    MAX_N,
    PROTOCOL_ID,
    TOPIC,
    Attestation,
    AttestationError,
    AttestationRejected,
    AttestChallenge,
    AttestOutcome,
    ChallengeParams,
    Prover,
    plan_challenge,
    record_attestation,
    serve_challenge,
    validate_attestation,
    verify_provider,
)

log = logging.getLogger(__name__)

MAX_CHALLENGE_DEADLINE_S = 300.0  # a provider refuses a challenge that says it may occupy the device longer
CHALLENGE_READ_TIMEOUT_S = 30.0
SERVE_TIMEOUT_S = 900.0  # one whole challenge stream on the provider, openings included
MIN_PROVER_BUDGET = 256 << 20
CPU_PROVER_BUDGET = 4 << 30  # when a device does not say how much memory it has
# Claimed speed for a device whose offer carries no attested figure yet (tflops = 0): a challenge must claim
# something to set its deadline; these floors are far below any real device of that kind, so an honest one always
# makes it, and the measured figure in the verdict is what counts for rewards.
FLOOR_TFLOPS = {"cpu": 0.0005, "cuda": 1.0}
REFUSAL_TEXT = 256


# --- errors and the refusal frame ---------------------------------------------------------------------------


class ChallengeRefused(AttestationError):
    """The prover declined the challenge (reason in ``reason``); raised on both sides of the stream."""

    reason = "refused"

    def __init__(self, detail: str = "", *, retry_after_s: float = 0.0, proof: bytes = b"") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.proof = proof  # busy: the operator-signed challenge the device is answering right now


class NotAnOperator(ChallengeRefused):
    """The challenger is not one of the network's operators (network.json)."""

    reason = "not_operator"


class ProverBusy(ChallengeRefused):
    """That device is answering another challenge; ask again after ``retry_after_s``.

    ``proof`` is that other challenge's signed envelope: a provider cannot claim "busy" to dodge a challenge
    unless an operator really is challenging the same device at that moment (:meth:`Challenger.busy_proven`).
    """

    reason = "busy"


class UnknownDevice(ChallengeRefused):
    """The challenge names a device index the provider does not have."""

    reason = "no_device"


class ChallengeTooLarge(ChallengeRefused):
    """The challenge would need more memory than the device has, or occupy it too long."""

    reason = "too_large"


class UnknownVerifier(AttestationRejected):
    """A gossiped attestation signed by a key that is not one of the network's operators."""


class NoOffer(P2PNodeError):
    """The provider to challenge has no live offer in the book (it left, or its offer expired)."""


REFUSALS: dict[str, type[ChallengeRefused]] = {c.reason: c for c in (NotAnOperator, ProverBusy, UnknownDevice,
                                                                     ChallengeTooLarge)}


@message("attest-refused", max_size=8192)
@dataclass(frozen=True)
class AttestRefusal(Message):
    """Prover -> verifier, instead of fingerprints: the challenge is declined, and why.

    ``busy_with`` (reason ``busy``) is the envelope of the challenge the device is answering, as its verifier
    signed it.
    """

    reason: str = bounded(max_len=32)
    detail: str = bounded(max_len=REFUSAL_TEXT, default="")
    retry_after_s: float = bounded(min=0.0, max=3600.0, default=0.0)
    busy_with: bytes = bounded(max_len=4096, default=b"")


def refusal_error(refusal: AttestRefusal) -> ChallengeRefused:
    cls = REFUSALS.get(refusal.reason, ChallengeRefused)
    return cls(refusal.detail, retry_after_s=refusal.retry_after_s, proof=refusal.busy_with)


def operator_peer_ids(params: Any) -> set[str]:
    """network.json names operators by Solana address; streams and attestations name them by PeerID."""
    import base58

    return {peer_id_from_public_key(base58.b58decode(op)) for op in params.operators}


def remote_peer(stream: Any) -> str:
    """The PeerID at the other end of a libp2p stream (authenticated by Noise)."""
    return stream.muxed_conn.peer_id.to_base58()


async def _close(stream: Any) -> None:
    with trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:  # the peer may already have reset it
            pass


# --- the gossip validator -----------------------------------------------------------------------------------


class AttestTopic(TopicValidator):
    """``/iog/attest/1``: :func:`validate_attestation` plus, when the network is known, verifier is an operator."""

    topic = TOPIC
    max_size = 16 * 1024

    def __init__(self, verifiers: set[str] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.verifiers = verifiers
        self.clock = clock

    def validate(self, msg: GossipMessage) -> Signed[Attestation]:
        signed = validate_attestation(msg.data, origin=msg.origin, now=self.clock())
        if self.verifiers is not None and signed.message.verifier not in self.verifiers:
            raise UnknownVerifier(f"attestation by {signed.message.verifier[:16]}, not a network operator")
        return signed


# --- provider side ------------------------------------------------------------------------------------------


def torch_devices(devices: Sequence[Device]) -> list[str]:
    """The torch device of each offered device, by position (CUDA devices in order, CPU as ``cpu``)."""
    out, cuda = [], 0
    for d in devices:
        if d.kind == "cuda":
            out.append(f"cuda:{cuda}")
            cuda += 1
        else:
            out.append("cpu")
    return out


def prover_bytes(ch: AttestChallenge) -> int:
    """About what the prover allocates: W (fp32), hashing temporaries, X/Y/C, and its Y-mod-256 checkpoints."""
    n, b = ch.n, ch.b
    return ch.mats * n * n * 4 + 2 * n * n * 8 + n * b * 32 + min(ch.steps * n * b, DEFAULT_STORE_BUDGET)


class DeviceProver(Prover):
    """A :class:`Prover` that picks its torch device from the challenge's ``device_index``."""

    def __init__(self, devices: Sequence[str]) -> None:
        super().__init__(devices[0] if devices else "cpu")
        self.devices = list(devices)

    def warm(self) -> None:
        import torch

        for dev in sorted(set(self.devices)):
            torch.zeros(8, device=dev).sum().item()

    def warm_chain(self) -> None:
        """A tiny chain and opening once per device: first-call costs (kernels, thread pools) before any deadline."""
        firsts = {dev: i for i, dev in reversed(list(enumerate(self.devices)))}
        for i in firsts.values():
            ch = AttestChallenge(seed=bytes(32), n=64, b=8, steps=2, mats=1, opened=1, claimed_tflops=1.0,
                                 device_index=i, provider="", issued_at=0, deadline_s=1.0)
            p = DeviceProver(self.devices)
            p.setup(ch)
            p.run(lambda t, fp: None)
            p.opening(1)

    def setup(self, ch: AttestChallenge) -> None:
        self.device = self.devices[ch.device_index]
        super().setup(ch)


class _ProverStream(FramedStream):
    """The provider's framed stream: every challenge is checked (and its device taken) the moment it is read."""

    def __init__(self, stream: Any, on_challenge: Callable[[Signed[AttestChallenge]], None]) -> None:
        super().__init__(stream)
        self._on_challenge = on_challenge

    async def receive_message(self, expect, max_size: int | None = None):  # type: ignore[override]
        signed = await (super().receive_message(expect) if max_size is None
                        else super().receive_message(expect, max_size))
        if isinstance(signed.message, AttestChallenge):
            self._on_challenge(signed)
        return signed


@dataclass
class AttestStats:
    served: int = 0
    passed: int = 0
    failed: int = 0
    refused: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)


class AttestServer:
    """A provider's ``/iog/attest/1.0.0`` handler. ``await nursery.start(server.run, host)``; leaving stops it.

    `devices` returns the provider's full device list (challenge ``device_index`` is a position in it);
    `operators` is the set of PeerIDs allowed to challenge (None: anyone, for a node without network.json);
    `store`, when given, keeps each verdict the verifier sends back (the gossip copy is then a duplicate).
    """

    def __init__(self, identity: Identity, devices: Callable[[], Sequence[Device]], *,
                 operators: set[str] | None = None, store: Any = None,
                 max_deadline_s: float = MAX_CHALLENGE_DEADLINE_S, prover_factory: Callable[..., Prover] | None = None,
                 on_verdict: Callable[[Signed[Attestation]], None] | None = None, cpu_threads: int = 0) -> None:
        self.identity = identity
        self.devices = devices
        self.cpu_threads = cpu_threads  # torch threads on the cpu device, as paid jobs get (0 = torch's default)
        self.operators = operators
        self.store = store
        self.max_deadline_s = max_deadline_s
        self.prover_factory = prover_factory or DeviceProver
        self.on_verdict = on_verdict
        self.busy: dict[int, Signed[AttestChallenge]] = {}  # device index -> the challenge it is answering
        self.stats = AttestStats()
        self.verdicts: list[Signed[Attestation]] = []  # the latest few, for status and tests
        self.warmed = trio.Event()  # torch imported and every device touched (or that failed)

    async def run(self, host: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from ..net.host import handing_to

        async with trio.open_nursery() as nursery:
            # import torch and touch each device in the background: the verifier's clock starts when it sends the
            # challenge, and an import under load takes seconds. Done when operators will challenge us (network
            # known) or torch is loaded anyway (devices detected); a network-less node given its devices starts
            # as light as before and warms on its first challenge.
            if self.operators is not None or "torch" in sys.modules:
                nursery.start_soon(self.warm)
            host.set_stream_handler(PROTOCOL_ID, handing_to(nursery, self._serve))
            task_status.started()
            await trio.sleep_forever()

    async def warm(self) -> None:
        """Import torch and touch every device (in a worker thread); sets :attr:`warmed`."""
        def warm() -> None:
            if self.cpu_threads:  # a challenge measures the cpu device as jobs will use it
                import torch

                torch.set_num_threads(self.cpu_threads)
            DeviceProver(torch_devices(self.devices())).warm_chain()

        try:
            with trio.move_on_after(300):
                await trio.to_thread.run_sync(warm)
        except Exception as exc:  # no torch or a broken device: challenges will fail and say so
            log.warning("attestation prover could not warm up: %s: %s", type(exc).__name__, exc)
        finally:
            self.warmed.set()

    def _check(self, remote: str, signed: Signed[AttestChallenge]) -> int:
        """Every rule a challenge must pass before the device is taken; returns the device index taken."""
        ch = signed.message
        if signed.signer_peer_id != remote:
            raise AttestationError("challenge signed by a key other than the stream's peer")
        if ch.provider != self.identity.peer_id:
            raise AttestationError("challenge addressed to another provider")
        devices = list(self.devices())
        if ch.device_index >= len(devices):
            raise UnknownDevice(f"device {ch.device_index} of {len(devices)}")
        dev = devices[ch.device_index]
        if ch.deadline_s > self.max_deadline_s:
            raise ChallengeTooLarge(f"deadline {ch.deadline_s:.0f} s exceeds {self.max_deadline_s:.0f} s")
        budget = max(MIN_PROVER_BUDGET, dev.mem_bytes // 2) if dev.mem_bytes else CPU_PROVER_BUDGET
        need = prover_bytes(ch)
        if need > budget:
            raise ChallengeTooLarge(f"needs about {need >> 20} MiB, device allows {budget >> 20} MiB")
        current = self.busy.get(ch.device_index)
        if current is not None:
            # it ends by its deadline plus the openings (a few seconds); never promise less than a moment
            left = current.message.issued_at + current.message.deadline_s + 2.0 - time.time()
            raise ProverBusy(f"device {ch.device_index} is answering another challenge",
                             retry_after_s=max(0.2, min(left, 30.0)), proof=current.raw)
        self.busy[ch.device_index] = signed
        return ch.device_index

    async def _serve(self, stream: Any) -> None:
        taken: list[int] = []
        fs: FramedStream | None = None
        try:
            remote = remote_peer(stream)

            def on_challenge(signed: Signed[AttestChallenge]) -> None:
                taken.append(self._check(remote, signed))

            fs = _ProverStream(stream, on_challenge)
            if self.operators is not None and remote not in self.operators:
                raise NotAnOperator("only the network's operators challenge providers")
            prover = self.prover_factory(torch_devices(self.devices()))
            self.stats.served += 1
            with trio.fail_after(SERVE_TIMEOUT_S):
                verdict = await serve_challenge(fs, self.identity, prover, expect_verifier=remote, max_n=MAX_N,
                                                timeout_s=SERVE_TIMEOUT_S)
            if verdict is not None:
                self._keep(remote, verdict)
        except ChallengeRefused as exc:
            self.stats.refused[exc.reason] += 1
            log.info("refused a challenge: %s", exc)
            if fs is not None:
                with trio.move_on_after(2):
                    try:
                        await fs.send_message(AttestRefusal(reason=exc.reason, detail=exc.detail[:REFUSAL_TEXT],
                                                            retry_after_s=exc.retry_after_s, busy_with=exc.proof),
                                              self.identity)
                    except Exception:
                        pass
        except ProtocolError as exc:  # malformed frames, a bad challenge, openings out of range
            self.stats.errors[type(exc).__name__] += 1
            log.info("attestation stream dropped: %s: %s", type(exc).__name__, exc)
        except trio.TooSlowError:
            self.stats.errors["timeout"] += 1
            log.info("attestation stream timed out")
        except Exception as exc:  # the verifier went away, or torch failed: this stream ends, the node serves on
            self.stats.errors[type(exc).__name__] += 1
            log.info("attestation stream failed: %s: %s", type(exc).__name__, exc)
        finally:
            for i in taken:
                self.busy.pop(i, None)
            await _close(stream)

    def _keep(self, remote: str, verdict: Signed[Attestation]) -> None:
        """The verifier's signed verdict about us: check it like gossip, keep it, count it."""
        try:
            signed = validate_attestation(verdict.raw, origin=remote)
        except ProtocolError as exc:
            self.stats.errors[type(exc).__name__] += 1
            log.info("verdict from %s rejected: %s", remote, exc)
            return
        a = signed.message
        if a.provider != self.identity.peer_id:
            return
        if a.passed:
            self.stats.passed += 1
        else:
            self.stats.failed += 1
        log.info("attested by %s: %s, %.4f TFLOPS (%s)", remote, "passed" if a.passed else "FAILED", a.tflops,
                 a.reason)
        self.verdicts = [*self.verdicts[-15:], signed]
        if self.store is not None:
            record_attestation(self.store, signed)
        if self.on_verdict is not None:
            self.on_verdict(signed)


# --- operator side ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChallengePolicy:
    """How big a challenge is and which claim it tests, derived from the epoch length.

    An hour-long epoch gets DESIGN's sizes (a few seconds at the claimed speed). A devnet epoch of seconds gets
    small matrices (n=256) so several challenges fit in one epoch on a CPU.
    """

    target_s: float = 3.0
    n: int | None = None
    b: int | None = None
    opened: int = 6
    floor_tflops: dict[str, float] = field(default_factory=lambda: dict(FLOOR_TFLOPS))

    @classmethod
    def for_epoch(cls, epoch_s: float) -> "ChallengePolicy":
        if epoch_s >= 600:
            return cls()
        # devnet: ~17 MFLOP steps and a CPU floor 10x lower (deadline ~4 s for 8 steps), so a shared, loaded
        # test machine still answers in time
        return cls(target_s=max(0.2, min(3.0, epoch_s / 60)), n=256, b=128, opened=4,
                   floor_tflops={**FLOOR_TFLOPS, "cpu": FLOOR_TFLOPS["cpu"] / 10})

    def claim(self, device: Device) -> float:
        return device.tflops if device.tflops > 0 else self.floor_tflops.get(device.kind, 1.0)

    def params(self, claimed_tflops: float) -> ChallengeParams:
        return plan_challenge(claimed_tflops, target_s=self.target_s, n=self.n, b=self.b, opened=self.opened)


class _VerifierStream(FramedStream):
    """The verifier's framed stream: an ``attest-refused`` frame from the provider becomes a typed error."""

    def __init__(self, stream: Any, provider_key: bytes) -> None:
        super().__init__(stream)
        self.provider_key = provider_key

    async def receive_message(self, expect, max_size: int | None = None):  # type: ignore[override]
        raw = await (self.receive() if max_size is None else self.receive(max_size))
        try:
            return open_envelope(raw, expect)
        except UnknownType:
            raise self._refusal(raw) from None

    def _refusal(self, raw: bytes) -> ChallengeRefused:
        refusal = open_envelope(raw, AttestRefusal)  # anything else re-raises as a wire error
        if refusal.signer != self.provider_key:
            raise AttestationError("refusal not signed by the provider")
        return refusal_error(refusal.message)

    async def pending_refusal(self, timeout_s: float = 1.0) -> ChallengeRefused | None:
        """After a write failed: did the provider refuse (and close) before reading our challenge?"""
        with trio.move_on_after(timeout_s):
            try:
                return self._refusal(await self.receive())
            except Exception:  # nothing readable, or not a refusal: the original error stands
                return None
        return None


Publish = Callable[[str, bytes], Awaitable[None]]


class Challenger:
    """An operator's attestations: ``providers()`` and ``challenge(peer_id)`` for the epoch service.

    `net` is the operator's running :class:`~p2pnode.net.node.NetNode` (host + offer book).
    """

    def __init__(self, net: Any, identity: Identity, store: Any, *, publish: Publish | None = None,
                 policy: ChallengePolicy | None = None, busy_wait_s: float = 30.0, open_timeout_s: float = 10.0,
                 operators: set[str] | None = None,
                 verify: Callable[..., Awaitable[AttestOutcome]] = verify_provider) -> None:
        self.net = net
        self.operators = operators  # PeerIDs whose challenges prove a "busy" refusal (None: any signer)
        self.identity = identity
        self.store = store
        self.publish = publish
        self.policy = policy or ChallengePolicy()
        self.busy_wait_s = busy_wait_s
        self.open_timeout_s = open_timeout_s
        self._verify = verify
        self.outcomes: list[AttestOutcome] = []  # the latest few, for status and tests
        self.busy_retries = 0
        self.busy_skipped = 0  # challenges dropped because the device was proven busy with another operator

    def providers(self) -> list[str]:
        """Providers with a live offer listing at least one device (never ourselves)."""
        me = self.identity.peer_id
        return sorted(o.peer_id for o in self.net.book.offers() if o.devices and o.peer_id != me)

    async def _connect(self, peer_id: str, addrs: Sequence[str]) -> Any:
        from libp2p.peer.id import ID

        from ..net.host import peer_info

        host = self.net.host
        pid = ID.from_base58(peer_id)
        if pid in host.get_connected_peers():
            return pid
        last: Exception | None = None
        for addr in addrs:
            try:
                info = peer_info(addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}", what="offer address")
                if info.peer_id != pid:
                    continue
                with trio.fail_after(self.open_timeout_s):
                    await host.connect(info)
                return pid
            except Exception as exc:
                last = exc
        raise ConnectionError(f"cannot dial {peer_id[:16]}: {type(last).__name__ if last else 'no address'}")

    async def challenge(self, peer_id: str) -> None:
        """Challenge every device of the provider's offer; record and gossip each verdict.

        Raises when the first device cannot even be challenged (no offer, unreachable, refused): the caller then
        records the challenge as not answered. A later device that fails to start gets a signed failed verdict.
        """
        offer = self.net.book.get(peer_id)
        if offer is None or not offer.devices:
            raise NoOffer(f"no live offer from {peer_id[:16]}")
        pid = await self._connect(peer_id, offer.addrs)
        for index, device in enumerate(offer.devices):
            try:
                out = await self._challenge_device(pid, peer_id, index, device)
            except ProverBusy as exc:
                if not self.busy_proven(peer_id, index, exc):
                    if index == 0:
                        raise
                    await self._keep(self._failed(peer_id, index, device, f"busy without proof: {exc}"))
                    continue
                # the device was answering another operator's challenge all along: this one is not issued
                self.busy_skipped += 1
                log.info("%s device %d stayed busy with a proven challenge; not counted", peer_id, index)
                continue
            except Exception as exc:
                if index == 0:
                    raise
                log.info("challenge of %s device %d failed to start: %s", peer_id, index, exc)
                await self._keep(self._failed(peer_id, index, device, f"unreachable: {type(exc).__name__}: {exc}"))
                continue
            self.outcomes = [*self.outcomes[-31:], out]
            await self._keep(out.envelope)

    def busy_proven(self, peer_id: str, index: int, exc: ProverBusy, now: float | None = None) -> bool:
        """Whether a busy refusal carries a fresh challenge of the same device signed by an operator."""
        if not exc.proof:
            return False
        try:
            signed = open_envelope(exc.proof, AttestChallenge)
        except ProtocolError:
            return False
        ch = signed.message
        now = time.time() if now is None else now
        if self.operators is not None and signed.signer_peer_id not in self.operators:
            return False
        return (ch.provider == peer_id and ch.device_index == index
                and ch.issued_at - 60 <= now <= ch.issued_at + ch.deadline_s + 60)  # clock skew + openings

    async def _challenge_device(self, pid: Any, peer_id: str, index: int, device: Device) -> AttestOutcome:
        """One device, retrying while the provider says it is busy (within `busy_wait_s`)."""
        give_up = trio.current_time() + self.busy_wait_s
        backoff = 0.5
        while True:
            try:
                return await self._verify_once(pid, peer_id, index, device)
            except ProverBusy as exc:
                wait = max(backoff, exc.retry_after_s) * (0.5 + random.random())
                if trio.current_time() + wait > give_up:
                    raise
                self.busy_retries += 1
                log.debug("%s device %d busy; asking again in %.2f s", peer_id, index, wait)
                await trio.sleep(wait)
                backoff = min(backoff * 2, 4.0)

    async def _verify_once(self, pid: Any, peer_id: str, index: int, device: Device) -> AttestOutcome:
        claimed = self.policy.claim(device)
        params = self.policy.params(claimed)
        t0 = trio.current_time()
        with trio.fail_after(self.open_timeout_s):
            stream = await self.net.host.new_stream(pid, [PROTOCOL_ID])
        # protocol negotiation is one round trip: a fair, slightly generous RTT for the deadline
        rtt = min(trio.current_time() - t0, 2.0)
        fs = _VerifierStream(stream, public_key_from_peer_id(peer_id))
        try:
            return await self._verify(fs, self.identity, provider=peer_id, device=device, device_index=index,
                                      claimed_tflops=claimed, params=params, rtt_s=rtt)
        except ChallengeRefused:
            raise
        except Exception as exc:
            # a provider that refuses writes its reason and closes at once: our challenge write may fail first
            refusal = await fs.pending_refusal()
            if refusal is not None:
                raise refusal from exc
            raise
        finally:
            await _close(stream)

    def _failed(self, peer_id: str, index: int, device: Device, reason: str) -> bytes:
        import hashlib
        import secrets

        now = int(time.time())
        challenge = hashlib.sha256(b"iog/attest/unanswered\x00" + peer_id.encode() + now.to_bytes(8, "big")
                                   + secrets.token_bytes(16)).digest()
        att = Attestation(provider=peer_id, device=replace(device, attestation=b""), device_index=index, tflops=0.0,
                          challenge=challenge, passed=False, reason=reason[:256], verifier=self.identity.peer_id,
                          time=now)
        return seal(att, self.identity)

    async def _keep(self, raw: bytes) -> None:
        """Durable evidence first, then gossip (best effort: the record is on disk)."""
        signed = open_envelope(raw, Attestation)
        a = signed.message
        record_attestation(self.store, signed)
        log.info("attested %s device %d: %s, %.4f TFLOPS (%s)", a.provider, a.device_index,
                 "passed" if a.passed else "FAILED", a.tflops, a.reason)
        if self.publish is not None:
            with trio.move_on_after(10):
                try:
                    await self.publish(TOPIC, raw)
                except Exception as exc:
                    log.warning("could not gossip an attestation: %s", exc)


def epoch_settings(epoch_s: float) -> dict[str, float]:
    """EpochService settings that follow from the epoch length (hour: the defaults; devnet seconds: lighter)."""
    if epoch_s >= 600:
        return {}
    return {"challenges_per_epoch": 1 if epoch_s < 60 else 2,
            "challenge_timeout_s": max(15.0, min(60.0, float(epoch_s)))}


__all__ = ["AttestRefusal", "AttestServer", "AttestTopic", "ChallengePolicy", "ChallengeRefused",
           "ChallengeTooLarge", "Challenger", "DeviceProver", "NoOffer", "NotAnOperator", "ProverBusy",
           "UnknownDevice", "UnknownVerifier", "epoch_settings", "operator_peer_ids", "torch_devices"]
