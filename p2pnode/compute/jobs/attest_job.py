"""`attest`: the capacity chain as a non-interactive job (Fiat-Shamir openings derived from the fingerprints).

Used when attestation travels inside the job pipeline rather than the interactive /iog/attest/1.0.0 stream:
outputs are the fingerprint list and the openings of steps chosen by sha256(seed, fingerprints), so a prover must
commit to every fingerprint before it learns which steps are opened (re-rolling costs a whole chain).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...wire import Record, bounded, pack, unpack
from .. import attest as A
from . import Data, Verdict


@dataclass(frozen=True)
class AttestSpec(Record):
    seed: bytes = bounded(exact_len=32)
    n: int = bounded(min=8, max=A.MAX_N)
    b: int = bounded(min=1, max=A.MAX_B)
    steps: int = bounded(min=1, max=A.MAX_STEPS)
    mats: int = bounded(min=1, max=A.MAX_MATS, default=2)
    opened: int = bounded(min=1, max=A.MAX_OPENED, default=6)

    def challenge(self) -> A.AttestChallenge:
        return A.AttestChallenge(seed=self.seed, n=self.n, b=self.b, steps=self.steps, mats=self.mats,
                                 opened=min(self.opened, self.steps), claimed_tflops=0.0, device_index=0,
                                 provider="", issued_at=0, deadline_s=0.0)


def openings_for(spec: AttestSpec, fps_bytes: bytes) -> list[int]:
    digest = hashlib.sha256(spec.seed + b"open" + fps_bytes).digest()
    return A.choose_openings(spec.steps, min(spec.opened, spec.steps),
                             np.random.default_rng(np.frombuffer(digest, dtype=np.uint32)))


def run(spec: AttestSpec, inputs: list[Data], device: str, progress: Callable[[float], None],
        alloc: Callable[[int], memoryview]) -> list[Data]:
    """Outputs are small (fingerprints, a few openings): returned as bytes, not written into `alloc` buffers."""
    prover = A.Prover(device)
    prover.setup(spec.challenge())
    fps: list[int] = []

    def emit(t: int, fp: int) -> None:
        fps.append(fp)
        if t % 16 == 0:
            progress(t / spec.steps)

    prover.run(emit)
    fps_bytes = b"".join(f.to_bytes(4, "big") for f in fps)
    opened = [(t, *prover.opening(t)) for t in openings_for(spec, fps_bytes)]
    return [fps_bytes, pack([[t, p, c] for t, p, c in opened])]


def verify(spec: AttestSpec, inputs: list[bytes], outputs: list[bytes], rng: np.random.Generator) -> Verdict:
    if len(outputs) != 2 or len(outputs[0]) != 4 * spec.steps:
        return Verdict(False, "attest: expected fingerprints for every step and an openings blob")
    fps = [int.from_bytes(outputs[0][i:i + 4], "big") for i in range(0, len(outputs[0]), 4)]
    want = openings_for(spec, outputs[0])
    y_size = 4 * spec.n * spec.b
    try:
        opened = unpack(outputs[1], max_size=2 * y_size * len(want) + 4096)
    except Exception as exc:
        return Verdict(False, f"attest: openings blob: {exc}")
    if not isinstance(opened, list) or [o[0] if isinstance(o, list) and o else None for o in opened] != want:
        return Verdict(False, "attest: openings are not the steps the fingerprints select")
    checker = A.ChainVerifier(spec.challenge(), fps, rng)
    for t, prev, cur in opened:
        if not isinstance(cur, bytes) or not (prev is None or isinstance(prev, bytes)):
            return Verdict(False, "attest: malformed opening")
        try:
            v = checker.check_step(t, prev, cur)
        except A.AttestationError as exc:
            return Verdict(False, str(exc))
        if not v.passed:
            return Verdict(False, v.reason)
    return Verdict(True, f"{len(want)} opened steps verified")
