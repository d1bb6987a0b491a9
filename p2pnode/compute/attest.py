"""Capacity attestation: a timed, seeded integer-matmul chain a provider cannot shortcut, checked cheaply.

The chain (DESIGN.md "Capacity attestation"): from a fresh 256-bit seed every party derives, with 32-bit integer
hashing that torch and numpy compute bit-identically, L matrices ``W_l`` (n x n), a start ``X_0`` (n x b), a
seeded S-box mapping a byte to a 4-bit value, and fingerprint coefficients ``C`` (n x b, 16-bit). Step t computes
``Y_t = W_(t mod L) @ X_t`` and ``X_(t+1) = SBOX[Y_t mod 256]``. Entries are 4-bit integers, so every product is
exact in fp32/TF32/bf16-with-fp32-accumulate (|Y| <= 64 n < 2^24), while a prover whose output is rounded to a
lower precision gets different bits. The prover streams ``fp_t = sum(C * Y_t) mod 2^32`` after each step; the
clock stops at the last one. The verifier then opens s random steps: the prover sends ``Y_(t-1)`` and ``Y_t``,
and the verifier (numpy only) checks both fingerprints, rebuilds ``X_t`` through the S-box and checks
``Y_t = W X_t`` exactly with Freivalds (integer vectors in [-1024, 1024], float64 is exact at these magnitudes).

A prover that skips or fakes a fraction f of the steps escapes with probability about (1 - f)^s; one that is slow
misses the deadline (1.25 x the claimed time + RTT + a setup grace). Honest limit, as in DESIGN.md: timing cannot
stop a prover from outsourcing the work, and nothing here proves memory size.

torch is imported only by :class:`Prover`; the verifier and messages import with numpy alone.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..errors import ProtocolError
from ..identity import Identity, peer_id_from_public_key
from ..store import schema
from ..wire import (
    Device,
    FramedStream,
    Message,
    SchemaError,
    Signed,
    bounded,
    message,
    open_envelope,
)
from .blobs import BlobRef, receive_blob, send_blob

PROTOCOL_ID = "/iog/attest/1.0.0"
TOPIC = "/iog/attest/1"

M32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2^31, so the torch int64 path never overflows before masking
MAX_N = 16384
MAX_B = 16384
MAX_STEPS = 1_000_000
MAX_MATS = 8
MAX_OPENED = 32
FREIVALDS_ROUNDS = 2
R_BOUND = 1024
DEFAULT_STORE_BUDGET = 512 << 20  # bytes of Y mod 256 checkpoints a prover keeps
SETUP_GRACE_S = 0.5  # prover builds W/X/C before step 0; counted against the deadline but not the claim
ATTESTATION_MAX_AGE_S = 2 * 3600  # gossip validators drop attestations older than this
ATTESTATION_MAX_SKEW_S = 120  # ...or claiming to be from the future beyond clock skew


class AttestationError(ProtocolError):
    """A peer broke the attestation protocol (bad challenge, wrong step count, malformed opening)."""


class AttestationRejected(AttestationError):
    """A received attestation result fails validation (bad time, signer is not the named verifier)."""


# --- seeded derivation, shared bit-for-bit by torch and numpy ---------------------------------------------


def derive_key(seed: bytes, label: bytes, index: int = 0) -> int:
    """A 32-bit key per (seed, purpose, index): the hash below then expands it to a matrix."""
    return int.from_bytes(hashlib.blake2b(seed + label + index.to_bytes(4, "little"), digest_size=4).digest(),
                          "little")


def np_hash(key: int, count: int) -> np.ndarray:
    """32-bit integer hash of (key, 0..count-1) in uint32 (wrapping multiply is native here)."""
    x = np.arange(count, dtype=np.uint32) ^ np.uint32(key)
    x = ((x >> np.uint32(16)) ^ x) * np.uint32(_HASH_MUL)
    x = ((x >> np.uint32(16)) ^ x) * np.uint32(_HASH_MUL)
    return (x >> np.uint32(16)) ^ x


def torch_hash(key: int, count: int, device: Any):
    """The same hash in torch int64 with explicit masking (torch has no wrapping uint32 multiply)."""
    import torch

    x = torch.arange(count, dtype=torch.int64, device=device) ^ key
    x = (((x >> 16) ^ x) * _HASH_MUL) & M32
    x = (((x >> 16) ^ x) * _HASH_MUL) & M32
    return (x >> 16) ^ x


def sbox(seed: bytes) -> list[int]:
    """A seeded byte -> [-8, 7] table, each value 16 times, Fisher-Yates shuffled by the seed."""
    table = [v for v in range(-8, 8) for _ in range(16)]
    stream = hashlib.shake_256(seed + b"sbox").digest(4 * 256)
    for i in range(255, 0, -1):
        j = int.from_bytes(stream[4 * i:4 * i + 4], "little") % (i + 1)
        table[i], table[j] = table[j], table[i]
    return table


def np_matrix(seed: bytes, label: bytes, index: int, rows: int, cols: int) -> np.ndarray:
    """4-bit signed entries in [-8, 7] as int8."""
    h = np_hash(derive_key(seed, label, index), rows * cols)
    return ((h & np.uint32(15)).astype(np.int8) - np.int8(8)).reshape(rows, cols)


def np_coeffs(seed: bytes, n: int, b: int) -> np.ndarray:
    return (np_hash(derive_key(seed, b"C"), n * b) & np.uint32(0xFFFF)).astype(np.int64).reshape(n, b)


def np_fingerprint(y: np.ndarray, coeffs: np.ndarray) -> int:
    """sum(C * Y) mod 2^32 in int64 (wraps mod 2^64, so the low 32 bits are exact)."""
    with np.errstate(over="ignore"):
        return int(np.sum(y.astype(np.int64) * coeffs, dtype=np.int64)) & M32


# --- challenge sizing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChallengeParams:
    n: int
    b: int
    steps: int
    mats: int
    opened: int

    @property
    def flops_per_step(self) -> float:
        return 2.0 * self.n * self.n * self.b

    @property
    def flops(self) -> float:
        return self.steps * self.flops_per_step

    def expected_s(self, tflops: float) -> float:
        return self.flops / (max(tflops, 1e-6) * 1e12)

    def deadline_s(self, claimed_tflops: float, rtt_s: float) -> float:
        """DESIGN: ~1.25 x the claimed time + RTT, plus a fixed grace for building the matrices."""
        return 1.25 * self.expected_s(claimed_tflops) + rtt_s + SETUP_GRACE_S


def plan_challenge(claimed_tflops: float, *, target_s: float = 3.0, n: int | None = None, b: int | None = None,
                   mats: int = 2, opened: int = 6) -> ChallengeParams:
    """Pick sizes so an honest device of the claimed speed takes about `target_s`.

    CPU-class claims (< 2 TFLOPS) use n=1024, b=512 (about 1 GFLOP a step); GPU-class claims use n=8192 and
    b=2048 (275 GFLOP a step) so each step is long enough to time and the per-step fingerprint sync is noise.
    """
    if n is None or b is None:
        n0, b0 = (1024, 512) if claimed_tflops < 2.0 else (8192, 2048)
        n, b = n or n0, b or b0
    per_step = 2.0 * n * n * b
    steps = int(min(MAX_STEPS, max(8, round(target_s * claimed_tflops * 1e12 / per_step))))
    return ChallengeParams(n=n, b=b, steps=steps, mats=mats, opened=min(opened, steps))


# --- wire messages ------------------------------------------------------------------------------------------


@message("attest-challenge", max_size=4096)
@dataclass(frozen=True)
class AttestChallenge(Message):
    """Verifier -> prover: the seeded chain to run now."""

    seed: bytes = bounded(exact_len=32)
    n: int = bounded(min=8, max=MAX_N)
    b: int = bounded(min=1, max=MAX_B)
    steps: int = bounded(min=1, max=MAX_STEPS)
    mats: int = bounded(min=1, max=MAX_MATS)
    opened: int = bounded(min=1, max=MAX_OPENED)
    claimed_tflops: float = bounded(min=0.0, max=1e6)
    device_index: int = bounded(min=0, max=63)
    provider: str = bounded(max_len=64)
    issued_at: int = bounded(min=0, max=2**40)
    deadline_s: float = bounded(min=0.0, max=3600.0)

    def params(self) -> ChallengeParams:
        return ChallengeParams(self.n, self.b, self.steps, self.mats, self.opened)

    def check(self, where: str) -> None:
        if self.opened > self.steps:
            raise SchemaError(f"{where}: opens {self.opened} of only {self.steps} steps")


@message("attest-fps", max_size=64 * 1024)
@dataclass(frozen=True)
class AttestFingerprints(Message):
    """Prover -> verifier: fingerprints of steps first, first+1, ... (4 bytes each, big-endian)."""

    challenge: bytes = bounded(exact_len=32)
    first: int = bounded(min=0, max=MAX_STEPS)
    fps: bytes = bounded(max_len=4 * 8192)

    def check(self, where: str) -> None:
        if not self.fps or len(self.fps) % 4:
            raise SchemaError(f"{where}.fps: a non-empty multiple of 4 bytes")


@message("attest-open", max_size=4096)
@dataclass(frozen=True)
class AttestOpen(Message):
    """Verifier -> prover: the steps to reveal, chosen after the last fingerprint arrived."""

    challenge: bytes = bounded(exact_len=32)
    steps: list[int] = bounded(max_len=MAX_OPENED)


@message("attest-opening", max_size=4096)
@dataclass(frozen=True)
class AttestOpening(Message):
    """Prover -> verifier: the hashes of Y_(t-1) (absent for t = 0) and Y_t, whose bytes follow as chunks."""

    challenge: bytes = bounded(exact_len=32)
    step: int = bounded(min=0, max=MAX_STEPS)
    prev: BlobRef | None = None
    cur: BlobRef | None = None


@message("attestation", max_size=8192)
@dataclass(frozen=True)
class Attestation(Message):
    """The verifier's signed verdict, gossiped on /iog/attest/1 and stored by operators for rewards."""

    provider: str = bounded(max_len=64)
    device: Device
    device_index: int = bounded(min=0, max=63)
    tflops: float = bounded(min=0.0, max=1e6)
    challenge: bytes = bounded(exact_len=32)
    passed: bool = False
    reason: str = bounded(max_len=256, default="")
    verifier: str = bounded(max_len=64, default="")
    time: int = bounded(min=0, max=2**40, default=0)
    n: int = bounded(min=0, max=MAX_N, default=0)
    steps: int = bounded(min=0, max=MAX_STEPS, default=0)

    def check(self, where: str) -> None:
        if self.device is not None and self.device.attestation:  # offers carry attestations, not the reverse
            raise SchemaError(f"{where}.device: an attested device does not carry an attestation itself")


def challenge_hash(challenge: AttestChallenge) -> bytes:
    return hashlib.sha256(challenge.encode_body()).digest()


def validate_attestation(data: bytes, *, origin: str | None = None, now: float | None = None) -> Signed[Attestation]:
    """Topic validator for /iog/attest/1: signature (open_envelope), schema, signer == verifier, sane time.

    `origin` is the gossip creator's PeerID when known; it must be the verifier too.
    """
    signed = open_envelope(data, Attestation)
    att = signed.message
    signer = peer_id_from_public_key(signed.signer)
    if att.verifier != signer:
        raise AttestationRejected(f"attestation names verifier {att.verifier[:16]} but is signed by {signer[:16]}")
    if origin is not None and origin != signer:
        raise AttestationRejected("attestation gossiped by a peer other than its verifier")
    now = time.time() if now is None else now
    if att.time > now + ATTESTATION_MAX_SKEW_S:
        raise AttestationRejected(f"attestation time {att.time} is in the future")
    if att.time < now - ATTESTATION_MAX_AGE_S:
        raise AttestationRejected(f"attestation time {att.time} is older than {ATTESTATION_MAX_AGE_S} s")
    if att.device is None:
        raise AttestationRejected("attestation without a device")
    return signed


schema("attestations", """
    CREATE TABLE IF NOT EXISTS attestations (
        challenge BLOB PRIMARY KEY,
        provider  TEXT NOT NULL,
        verifier  TEXT NOT NULL,
        time      INTEGER NOT NULL,
        passed    INTEGER NOT NULL,
        tflops    REAL NOT NULL,
        envelope  BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS attestations_provider ON attestations(provider, time);
""")


def record_attestation(store: Any, signed: Signed[Attestation]) -> bool:
    """Keep a validated attestation (the signed bytes are the evidence); False if already known (replay)."""
    a = signed.message
    with store.tx() as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO attestations(challenge, provider, verifier, time, passed, tflops, envelope) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            (a.challenge, a.provider, a.verifier, a.time, int(a.passed), a.tflops, signed.raw))
        return cur.rowcount == 1


# --- prover (torch) -----------------------------------------------------------------------------------------


class Prover:
    """Runs a challenge on one torch device and answers openings; subclassed by tests to model cheaters.

    Keeps ``Y_t mod 256`` (n*b bytes) every `checkpoint_every` steps so any Y_t can be recomputed for an opening
    without holding the whole chain; the opening deadline allows that recomputation.
    """

    def __init__(self, device: str = "cpu", *, store_budget_bytes: int = DEFAULT_STORE_BUDGET) -> None:
        self.device = device
        self.store_budget = store_budget_bytes
        self.cancelled = False

    def warm(self) -> None:
        """Import torch and touch the device before a challenge arrives: the deadline is not for imports."""
        import torch

        torch.zeros(8, device=self.device).sum().item()

    def setup(self, ch: AttestChallenge) -> None:
        import torch

        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # exact for 4-bit entries; fp32 accumulate
        n, b = ch.n, ch.b
        self.ch = ch
        self.dev = dev
        self.W = [((torch_hash(derive_key(ch.seed, b"W", l), n * n, dev) & 15) - 8).reshape(n, n).to(torch.float32)
                  for l in range(ch.mats)]
        self.X0 = ((torch_hash(derive_key(ch.seed, b"X", 0), n * b, dev) & 15) - 8).reshape(n, b).to(torch.float32)
        self.C = (torch_hash(derive_key(ch.seed, b"C"), n * b, dev) & 0xFFFF).reshape(n, b)
        self.SBOX = torch.tensor(sbox(ch.seed), dtype=torch.float32, device=dev)
        self.every = max(1, math.ceil(ch.steps * n * b / self.store_budget))
        self.saved: dict[int, Any] = {}

    def matmul(self, w, x):
        """One step's product; the only place a cheater would cut precision."""
        return w @ x

    def step(self, t: int, x):
        """Y_t as int32 and X_(t+1)."""
        import torch

        y = self.matmul(self.W[t % self.ch.mats], x).to(torch.int32)
        return y, self.SBOX[(y & 255).long()]

    def fingerprint(self, y) -> int:
        return int(((y.to(self.C.dtype) * self.C).sum() & M32).item())  # .item() synchronises the device

    def run(self, emit: Callable[[int, int], None]) -> None:
        """Run every step, calling emit(t, fp) as each finishes."""
        x = self.X0
        for t in range(self.ch.steps):
            if self.cancelled:
                return
            y, x = self.step(t, x)
            if t % self.every == 0 or t == self.ch.steps - 1:
                self.saved[t] = (y & 255).to(__import__("torch").uint8)
            emit(t, self.fingerprint(y))

    def y_at(self, t: int):
        """Recompute Y_t from the nearest saved Y mod 256 at or before t - 1."""

        start = max((c for c in self.saved if c < t), default=None)
        x = self.X0 if start is None else self.SBOX[self.saved[start].long()]
        for s in range(0 if start is None else start + 1, t + 1):
            y, x = self.step(s, x)
        return y

    def opening(self, t: int) -> tuple[bytes | None, bytes]:
        """Little-endian int32 bytes of Y_(t-1) (None for t = 0) and Y_t."""
        prev = self.y_bytes(t - 1) if t > 0 else None
        return prev, self.y_bytes(t)

    def y_bytes(self, t: int) -> bytes:
        return self.y_at(t).to("cpu").contiguous().numpy().astype("<i4").tobytes()


# --- verifier (numpy only) ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    passed: bool
    reason: str = ""


class ChainVerifier:
    """Checks openings of one challenge with numpy; W matrices are built lazily, only those opened steps use."""

    def __init__(self, ch: AttestChallenge, fps: list[int], rng: np.random.Generator | None = None) -> None:
        self.ch = ch
        self.fps = fps
        self.rng = rng or np.random.default_rng(secrets.randbits(128))
        self._w: dict[int, np.ndarray] = {}
        self.C = np_coeffs(ch.seed, ch.n, ch.b)
        self.SBOX = np.array(sbox(ch.seed), dtype=np.int8)

    def w(self, l: int) -> np.ndarray:
        if l not in self._w:
            self._w[l] = np_matrix(self.ch.seed, b"W", l, self.ch.n, self.ch.n).astype(np.float64)
        return self._w[l]

    def parse_y(self, data: bytes) -> np.ndarray:
        if len(data) != 4 * self.ch.n * self.ch.b:
            raise AttestationError(f"opening of {len(data)} bytes; expected {4 * self.ch.n * self.ch.b}")
        return np.frombuffer(data, dtype="<i4").reshape(self.ch.n, self.ch.b)

    def check_step(self, t: int, prev: bytes | None, cur: bytes) -> Verdict:
        ch = self.ch
        if t > 0:
            if prev is None:
                return Verdict(False, f"step {t}: Y_(t-1) missing")
            yp = self.parse_y(prev)
            if np_fingerprint(yp, self.C) != self.fps[t - 1]:
                return Verdict(False, f"step {t - 1}: fingerprint does not match the opened values")
            x = self.SBOX[(yp & 255).astype(np.intp)]
        else:
            x = np_matrix(ch.seed, b"X", 0, ch.n, ch.b)
        y = self.parse_y(cur)
        if np_fingerprint(y, self.C) != self.fps[t]:
            return Verdict(False, f"step {t}: fingerprint does not match the opened values")
        xf = x.astype(np.float64)
        yf = y.astype(np.float64)
        w = self.w(t % ch.mats)
        for _ in range(FREIVALDS_ROUNDS):
            r = self.rng.integers(-R_BOUND, R_BOUND + 1, size=ch.n).astype(np.float64)
            if not np.array_equal((r @ w) @ xf, r @ yf):  # exact: every partial sum < 2^53
                return Verdict(False, f"step {t}: Y_t != W X_t (Freivalds)")
        return Verdict(True)


def choose_openings(steps: int, count: int, rng: np.random.Generator | None = None) -> list[int]:
    """Random distinct steps; the last step is always opened (it is where a lazy prover stops)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    count = min(count, steps)
    picks = set(rng.choice(steps - 1, size=min(count - 1, steps - 1), replace=False).tolist()) if steps > 1 else set()
    picks.add(steps - 1)
    return sorted(picks)


# --- the /iog/attest/1.0.0 stream protocol ------------------------------------------------------------------


@dataclass
class AttestOutcome:
    """What the verifier side learns; `signed` is the attestation to gossip."""

    attestation: Attestation
    envelope: bytes
    elapsed_s: float
    rtt_s: float
    opened: list[int] = field(default_factory=list)


def _fps_bytes(fps: list[int]) -> bytes:
    return b"".join(f.to_bytes(4, "big") for f in fps)


async def verify_provider(fs: FramedStream, identity: Identity, *, provider: str, device: Device,
                          device_index: int = 0, claimed_tflops: float, params: ChallengeParams | None = None,
                          rtt_s: float = 0.0, target_s: float = 3.0, opening_timeout_s: float | None = None,
                          openings: list[int] | None = None, rng: np.random.Generator | None = None) -> AttestOutcome:
    """Verifier side over any framed stream: challenge, fingerprints, openings, verdict (sent back and returned).

    `openings` fixes the opened steps (tests); normally they are random and chosen after the last fingerprint.
    """
    import trio

    params = params or plan_challenge(claimed_tflops, target_s=target_s)
    deadline = params.deadline_s(claimed_tflops, rtt_s)
    ch = AttestChallenge(seed=secrets.token_bytes(32), n=params.n, b=params.b, steps=params.steps,
                         mats=params.mats, opened=params.opened, claimed_tflops=claimed_tflops,
                         device_index=device_index, provider=provider, issued_at=int(time.time()),
                         deadline_s=deadline)
    chash = challenge_hash(ch)
    fps: list[int] = []
    reason = ""
    passed = False
    elapsed = 0.0
    opened: list[int] = []

    def result(tflops: float) -> AttestOutcome:
        att = Attestation(provider=provider, device=replace(device, attestation=b""), device_index=device_index,
                          tflops=round(tflops, 6),
                          challenge=chash, passed=passed, reason=reason[:256], verifier=identity.peer_id,
                          time=int(time.time()), n=ch.n, steps=ch.steps)
        from ..wire import seal

        return AttestOutcome(att, seal(att, identity), elapsed, rtt_s, opened)

    t0 = time.perf_counter()
    await fs.send_message(ch, identity)
    try:
        with trio.fail_after(deadline):
            while len(fps) < ch.steps:
                got_signed = await fs.receive_message(AttestFingerprints)
                if got_signed.signer_peer_id != provider:  # the fingerprints are the provider's commitment
                    raise AttestationError(f"fingerprints signed by {got_signed.signer_peer_id[:16]}, "
                                           f"not by the challenged provider {provider[:16]}")
                got = got_signed.message
                if got.challenge != chash or got.first != len(fps):
                    raise AttestationError("fingerprints out of order or for another challenge")
                fps.extend(int.from_bytes(got.fps[i:i + 4], "big") for i in range(0, len(got.fps), 4))
                if len(fps) > ch.steps:
                    raise AttestationError("more fingerprints than steps")
    except trio.TooSlowError:
        elapsed = time.perf_counter() - t0
        reason = f"too slow: {len(fps)}/{ch.steps} steps within the {deadline:.2f} s deadline"
        out = result(0.0)
        with trio.move_on_after(5):
            await fs.send(out.envelope)
        return out
    elapsed = time.perf_counter() - t0
    compute_s = max(elapsed - rtt_s, 1e-9)
    tflops = ch.params().flops / compute_s / 1e12

    opened = openings if openings is not None else choose_openings(ch.steps, ch.opened, rng)
    await fs.send_message(AttestOpen(challenge=chash, steps=opened), identity)
    verifier = ChainVerifier(ch, fps, rng)
    # Recomputing an opening costs at most `every` steps plus the transfer of 8 n b bytes.
    step_s = ch.params().expected_s(max(claimed_tflops, 1e-3)) / ch.steps
    y_size = 4 * ch.n * ch.b
    every = max(1, math.ceil(ch.steps * ch.n * ch.b / DEFAULT_STORE_BUDGET))
    timeout = opening_timeout_s or (10.0 + rtt_s + len(opened) * (3 * (every + 2) * step_s + 2 * y_size / 20e6))
    verdict = Verdict(True)
    try:
        with trio.fail_after(timeout):
            for t in opened:
                hdr_signed = await fs.receive_message(AttestOpening)
                if hdr_signed.signer_peer_id != provider:
                    raise AttestationError("opening not signed by the challenged provider")
                hdr = hdr_signed.message
                if hdr.challenge != chash or hdr.step != t or hdr.cur is None or (t > 0) != (hdr.prev is not None):
                    raise AttestationError(f"opening header for step {hdr.step} does not match step {t}")
                prev = await receive_blob(fs, hdr.prev, max_size=y_size) if hdr.prev is not None else None
                cur = await receive_blob(fs, hdr.cur, max_size=y_size)
                if verdict.passed:
                    verdict = await trio.to_thread.run_sync(verifier.check_step, t, prev, cur)
    except trio.TooSlowError:
        verdict = Verdict(False, f"openings not delivered within {timeout:.1f} s")
    except ProtocolError as exc:
        verdict = Verdict(False, f"bad opening: {exc}")
    passed = verdict.passed
    reason = verdict.reason or f"{len(opened)} steps opened and verified"
    out = result(tflops if passed else 0.0)
    with trio.move_on_after(5):
        await fs.send(out.envelope)
    return out


async def serve_challenge(fs: FramedStream, identity: Identity, prover: Prover, *,
                          expect_verifier: str | None = None, max_n: int = MAX_N,
                          timeout_s: float = 3600.0) -> Signed[Attestation] | None:
    """Prover side of one /iog/attest/1.0.0 stream; returns the verifier's signed verdict if one arrives."""
    import trio

    await trio.to_thread.run_sync(prover.warm)
    with trio.fail_after(30):
        signed = await fs.receive_message(AttestChallenge)
    ch = signed.message
    if expect_verifier is not None and peer_id_from_public_key(signed.signer) != expect_verifier:
        raise AttestationError("challenge signed by a key other than the stream's peer")
    if ch.n > max_n:
        raise AttestationError(f"challenge n={ch.n} exceeds this prover's limit {max_n}")
    if ch.provider != identity.peer_id:
        raise AttestationError("challenge addressed to another provider")
    chash = challenge_hash(ch)
    prover.cancelled = False  # a Prover is reusable: the previous challenge's end must not stop this one
    send, recv = trio.open_memory_channel[tuple[int, int]](math.inf)

    def to_loop(fn, *args) -> None:
        """Hand a result to the trio side; if that side is gone (verifier hung up, stream cancelled), stop the
        chain instead of raising in the worker thread — the device is not kept busy for nobody."""
        try:
            trio.from_thread.run_sync(fn, *args)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError, trio.Cancelled):
            prover.cancelled = True

    def work() -> None:
        prover.setup(ch)
        prover.run(lambda t, fp: to_loop(send.send_nowait, (t, fp)))
        to_loop(send.close)

    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            async def compute() -> None:
                try:
                    await trio.to_thread.run_sync(work, abandon_on_cancel=False)
                finally:
                    prover.cancelled = True

            nursery.start_soon(compute)
            sent = 0
            async with recv:
                async for t, fp in recv:
                    batch = [fp]
                    while True:  # coalesce fingerprints that piled up while we were writing
                        try:
                            batch.append(recv.receive_nowait()[1])
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await fs.send_message(AttestFingerprints(challenge=chash, first=sent, fps=_fps_bytes(batch)),
                                          identity)
                    sent += len(batch)
        while True:
            raw = await fs.receive(max_size=64 * 1024)
            env = open_envelope(raw, (AttestOpen, Attestation))
            if isinstance(env.message, Attestation):
                return env  # the verifier gave up (too slow) before asking for openings
            req = env.message
            if req.challenge != chash or len(req.steps) > ch.opened or any(not 0 <= t < ch.steps for t in req.steps):
                raise AttestationError("opening request out of range")
            for t in req.steps:
                prev, cur = await trio.to_thread.run_sync(prover.opening, t)
                await fs.send_message(AttestOpening(challenge=chash, step=t,
                                                    prev=BlobRef.of(prev) if prev is not None else None,
                                                    cur=BlobRef.of(cur)), identity)
                if prev is not None:
                    await send_blob(fs, prev)
                await send_blob(fs, cur)
            with trio.fail_after(120):
                return open_envelope(await fs.receive(), Attestation)


async def attest_self(device: str = "cpu", *, claimed_tflops: float | None = None, target_s: float = 3.0,
                      params: ChallengeParams | None = None, identity: Identity | None = None,
                      device_info: Device | None = None) -> AttestOutcome:
    """Prover and verifier in one process over an in-memory stream: `p2pnode attest --self`."""
    import trio
    import trio.testing

    from ..wire import trio_stream_adapter

    identity = identity or Identity.generate()
    if claimed_tflops is None:
        claimed_tflops = calibrate(device) / 2  # a conservative claim: calibration is noisy on a shared machine
    if device_info is None:
        device_info = Device(kind="cuda" if device.startswith("cuda") else "cpu", name=device, mem_bytes=0)
    a, b = trio.testing.memory_stream_pair()
    vfs, pfs = FramedStream(trio_stream_adapter(a)), FramedStream(trio_stream_adapter(b))
    out: list[AttestOutcome] = []
    prover = Prover(device)
    await trio.to_thread.run_sync(prover.warm)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_challenge, pfs, identity, prover)
        out.append(await verify_provider(vfs, identity, provider=identity.peer_id, device=device_info,
                                         claimed_tflops=claimed_tflops, params=params, target_s=target_s))
    return out[0]


def calibrate(device: str = "cpu", n: int = 1024, b: int = 512, reps: int = 3) -> float:
    """A rough TFLOPS estimate (best of a few fp32 matmuls) used to size a self-attestation."""
    import torch

    dev = torch.device(device)
    w = torch.randint(-8, 8, (n, n), device=dev).float()
    x = torch.randint(-8, 8, (n, b), device=dev).float()
    best = math.inf
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        (w @ x).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * n * b / best / 1e12
