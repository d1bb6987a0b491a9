"""The fixed registry of verified job kinds: nothing but these ever runs for a renter.

Each kind has a spec schema (a wire :class:`Record`, carried msgpack-encoded in :class:`JobSpec.params`), inputs
and outputs as content-addressed blobs, a runner (torch, imported inside it, executed in the sandbox child) and a
verifier (numpy only, so a renter or operator without torch can check a result).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import ProtocolError
from ...wire import Record, SchemaError, bounded, pack, unpack
from ..blobs import BlobRef

# Inputs and outputs are any bytes-like buffer: the sandbox child maps its input files, runners return views of
# their result tensors' memory and the node maps the output files, so a large blob is not copied to change type.
Data = bytes | memoryview

MAX_PARAMS = 64 * 1024
MAX_INPUTS = 16


class JobError(ProtocolError):
    """A job spec or its inputs are not acceptable (unknown kind, bad schema, wrong blob sizes)."""


@dataclass(frozen=True)
class JobSpec(Record):
    """What a renter asks for: a registered kind, its msgpack params, and the input blobs by hash."""

    kind: str = bounded(max_len=16)
    params: bytes = bounded(max_len=MAX_PARAMS)
    inputs: list[BlobRef] = bounded(max_len=MAX_INPUTS, default=[])

    def check(self, where: str) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"{where}.kind: {self.kind!r} is not a job kind ({', '.join(sorted(KINDS))})")

    @classmethod
    def make(cls, kind: str, params: Record, inputs: list[bytes] = ()) -> "JobSpec":
        return cls(kind=kind, params=pack(params.to_wire()), inputs=[BlobRef.of(b) for b in inputs])

    def encode(self) -> bytes:
        """The canonical bytes: what the sandbox child receives, what a quote's hash commits to, what stores keep."""
        return pack(self.to_wire())

    def decode_params(self) -> Record:
        return KINDS[self.kind].spec_type.from_wire(unpack(self.params, max_size=MAX_PARAMS), where=self.kind)


@dataclass
class Verdict:
    """A verifier's answer; `reason` says what failed (or what was checked)."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_type: type[Record]
    module: str  # p2pnode.compute.jobs.<module> defines run() and verify()
    n_inputs: tuple[int, int]  # (min, max)

    def _mod(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def runner(self) -> Callable[..., list[Data]]:
        return self._mod().run

    def verifier(self) -> Callable[..., Verdict]:
        return self._mod().verify


KINDS: dict[str, JobKind] = {}


def _register() -> None:
    from .attest_job import AttestSpec
    from .infer import InferSpec
    from .matmul import MatmulSpec

    KINDS["matmul"] = JobKind("matmul", MatmulSpec, "matmul", (0, 2))
    KINDS["infer"] = JobKind("infer", InferSpec, "infer", (2, 2))
    KINDS["attest"] = JobKind("attest", AttestSpec, "attest_job", (0, 0))


def check_inputs(spec: JobSpec, inputs: list[Data]) -> Record:
    """Parse the params and check the input blobs against the spec's hashes; returns the typed params."""
    kind = KINDS[spec.kind]
    lo, hi = kind.n_inputs
    if not lo <= len(inputs) <= hi or len(inputs) != len(spec.inputs):
        raise JobError(f"{spec.kind}: {len(inputs)} inputs given, spec lists {len(spec.inputs)} (allowed {lo}-{hi})")
    for ref, data in zip(spec.inputs, inputs):
        ref.check_data(data)
    return spec.decode_params()


@dataclass
class Prepared:
    """A verifier's output-independent work for one job, done ahead (see :func:`prepare`)."""

    kind: str
    state: object


def prepare(spec: JobSpec, inputs: list[Data], *, rng: np.random.Generator | None = None) -> Prepared | None:
    """The part of the check that needs only the spec and inputs, for a renter to do while the job runs (for
    matmul: regenerating seed-derived operands and A (B R)); None when the kind has none or the inputs are bad
    (then :func:`verify` reports why)."""
    try:
        params = check_inputs(spec, inputs)
        fn = getattr(KINDS[spec.kind]._mod(), "prepare", None)
        return Prepared(spec.kind, fn(params, inputs, rng or np.random.default_rng())) if fn else None
    except ProtocolError:
        return None


def absorb(spec: JobSpec, prepared: Prepared, index: int, data: Data, upto: int) -> None:
    """Fold the first `upto` bytes of output `index` (arrived while the job still runs; `data` is the buffer the
    rest will land in) into the prepared check, so :func:`verify` has less left to read. A spec or part it cannot
    use is skipped, not an error: verify reads whatever was not folded in and says what is wrong."""
    fn = getattr(KINDS[spec.kind]._mod(), "absorb", None) if spec.kind == prepared.kind else None
    if fn is not None:
        try:
            fn(spec.decode_params(), prepared.state, index, data, upto)
        except ProtocolError:
            pass


def verify(spec: JobSpec, inputs: list[Data], outputs: list[Data], *, rng: np.random.Generator | None = None,
           prepared: Prepared | None = None) -> Verdict:
    """Check a result without torch; a malformed spec or output is a failed verdict, never an exception."""
    try:
        params = check_inputs(spec, inputs)
        ahead = {"prepared": prepared.state} if prepared is not None and prepared.kind == spec.kind else {}
        return KINDS[spec.kind].verifier()(params, inputs, outputs, rng or np.random.default_rng(), **ahead)
    except ProtocolError as exc:
        return Verdict(False, f"{type(exc).__name__}: {exc}")


class Outputs:
    """Where a runner puts large outputs: ``alloc(nbytes)`` gives the i-th buffer, which the runner returns as its
    output i, and ``ready(i, upto)`` says bytes [0, upto) of it are final, so the node can send them while the rest
    is computed. Here (a job run in this process) buffers are plain memory and ``ready`` does nothing; the sandbox
    child's allocator (``compute.worker.OutputFiles``) makes them files the node maps and reports ``ready``."""

    def __call__(self, nbytes: int) -> memoryview:
        return memoryview(bytearray(nbytes))

    def ready(self, index: int, upto: int) -> None:
        pass


def run(spec: JobSpec, inputs: list[Data], device: str = "cpu",
        progress: Callable[[float], None] = lambda f: None, *, alloc: Outputs | None = None) -> list[Data]:
    """Run a job in this process (the sandbox child calls this); torch is imported by the kind's runner.

    A runner writes a large output into a buffer from ``alloc(nbytes)`` and returns that very buffer: in the
    sandbox it is a file the node maps, so the result is not copied again on its way out.
    """
    params = check_inputs(spec, inputs)
    return KINDS[spec.kind].runner()(params, inputs, device, progress, alloc if alloc is not None else Outputs())


_register()

__all__ = ["Data", "JobError", "JobKind", "JobSpec", "KINDS", "Outputs", "Prepared", "Verdict", "absorb", "check_inputs",
           "prepare", "run", "verify"]
