"""`matmul`: batched GEMM C = A @ B in fp32/bf16/fp16, checked by Freivalds in float64 with numpy.

Matrices travel as raw little-endian arrays (bf16 as its 16-bit pattern, since numpy has no bf16). Seed-derived
inputs are built with numpy on both sides, so the provider and the verifier start from the same bits.

Tolerance: for a random integer vector r in [-1024, 1024], the honest error of (C r)_i is the sum over j of
r_j e_ij, where e_ij is the output rounding (|e| <= u_out |C_ij|) plus the accumulation error (at most
sqrt(k) u_acc (|A||B|)_ij <= sqrt(k) u_acc ||a_i|| ||b_j|| by Cauchy-Schwarz; a_i row i of A, b_j column j of B).
The signs of r are secret coin flips independent of e, so by Hoeffding |sum_j r_j e_ij| exceeds
z sqrt(sum_j r_j^2 E_ij^2) with probability <= 2 exp(-z^2 / 2) whatever the E_ij bounding |e_ij|. We accept when
|C r - A (B r)|_i <= 8 u_out ||r * C_i||_2 + 8 sqrt(k) u_acc ||a_i|| sqrt(sum_j r_j^2 ||b_j||^2) + tiny (z = 8:
a false rejection < 1e-13 per row and round), computable in O(n^2) from row norms of A and column norms of B.
A changed entry is caught when its change times |r_j| exceeds that row bound: at n = 1024 with entries of size
~0.6 the bound is ~200, so a change of ~0.4 is caught in a round with an average |r_j|. (Summing |r_j| times the
per-entry bound instead, as a worst case over r, is ~sqrt(n) times looser: a provider computing an fp32 job in
bf16 would pass it.)
"""

from __future__ import annotations

from dataclasses import dataclass
import sys
import warnings
from typing import Callable

import numpy as np

from ...wire import Record, SchemaError, bounded
from . import Data, JobError, Outputs, Verdict

DTYPES = {"fp32": ("<f4", 2.0**-24), "fp16": ("<f2", 2.0**-11), "bf16": ("<u2", 2.0**-8)}
U_ACC = 2.0**-23  # fp32 accumulation (with margin for 16-bit inputs accumulated in fp32)
MAX_ELEMS = 1 << 28
assert sys.byteorder == "little", "matmul's wire format is little-endian and runs without byte swaps"


@dataclass(frozen=True)
class MatmulSpec(Record):
    dtype: str = bounded(max_len=4)
    batch: int = bounded(min=1, max=4096)
    m: int = bounded(min=1, max=65536)
    k: int = bounded(min=1, max=65536)
    n: int = bounded(min=1, max=65536)
    source: str = bounded(max_len=8, default="inputs")  # "inputs" | "seed"
    seed: bytes = bounded(max_len=32, default=b"")
    rounds: int = bounded(min=2, max=3, default=2)

    def check(self, where: str) -> None:
        if self.dtype not in DTYPES:
            raise SchemaError(f"{where}.dtype: {self.dtype!r} not one of {sorted(DTYPES)}")
        if self.source not in ("inputs", "seed"):
            raise SchemaError(f"{where}.source: 'inputs' or 'seed'")
        if self.source == "seed" and len(self.seed) != 32:
            raise SchemaError(f"{where}.seed: 32 bytes when source is 'seed'")
        if max(self.batch * self.m * self.k, self.batch * self.k * self.n, self.batch * self.m * self.n) > MAX_ELEMS:
            raise SchemaError(f"{where}: matrices larger than {MAX_ELEMS} elements")


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16, as 16-bit patterns (what torch.to(bfloat16) does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def to_raw(x32: np.ndarray, dtype: str) -> Data:
    """fp32 array -> the wire bytes of `dtype` (a view of the converted array; no copy at all for fp32)."""
    if dtype == "bf16":
        arr = f32_to_bf16_bits(x32)
    else:
        arr = np.ascontiguousarray(x32).astype(DTYPES[dtype][0], copy=False)
    return memoryview(arr.reshape(-1).view(np.uint8))


def _itemsize(spec: MatmulSpec) -> int:
    """Bytes per matrix entry on the wire."""
    return np.dtype(DTYPES[spec.dtype][0]).itemsize


def _seeded_int8(spec: MatmulSpec) -> tuple[np.ndarray, np.ndarray]:
    """A then B from the spec's seed as int8 values v (the entries are v / 128): numpy's PCG64 seeded with the
    seed's eight little-endian uint32 words, each matrix ``rng.bytes(count)``."""
    rng = np.random.default_rng(np.frombuffer(spec.seed, dtype="<u4"))
    a = np.frombuffer(rng.bytes(spec.batch * spec.m * spec.k), dtype=np.int8)
    b = np.frombuffer(rng.bytes(spec.batch * spec.k * spec.n), dtype=np.int8)
    return a.reshape(spec.batch, spec.m, spec.k), b.reshape(spec.batch, spec.k, spec.n)


def seeded_inputs(spec: MatmulSpec) -> tuple[Data, Data]:
    """A then B from the spec's seed, as wire bytes.

    Entries v / 128 for the int8 values of :func:`_seeded_int8`: exact in fp32, bf16 and fp16 alike (so every
    dtype computes on the same numbers), products stay far from fp16's range, and they cost a tenth of normal
    samples to make — the renter makes them again to verify (as int8, never as a full float matrix), so this is
    on its side of every seed-derived job.
    """
    def wire(v: np.ndarray) -> Data:
        x = v.reshape(-1).astype(np.float32)
        x *= 1 / 128
        return to_raw(x, spec.dtype)

    a, b = _seeded_int8(spec)
    return wire(a), wire(b)


def _no_input_blobs(inputs: list[Data]) -> None:
    if inputs:
        raise JobError("matmul: seed-derived jobs take no input blobs")


def operands(spec: MatmulSpec, inputs: list[Data]) -> tuple[Data, Data]:
    if spec.source == "seed":
        _no_input_blobs(inputs)
        return seeded_inputs(spec)
    if len(inputs) != 2:
        raise JobError("matmul: two input blobs (A, B) expected")
    return inputs[0], inputs[1]


PARTS = 16  # a large output is computed and reported final in about this many parts ...
MIN_PART = 256 << 10  # ... of at least this many bytes; smaller outputs are one part (sent with the result)
MIN_ROWS = 512  # bmm over fewer rows of a large matrix is measurably slower than one call (8% at 256 rows)


def parts(spec: MatmulSpec) -> list[tuple[slice, slice]]:
    """(batch slice, row slice) blocks of C in memory order, each computed by one bmm and then final: the node
    sends each part while the next is computed. Parts of >= 256 KiB and >= 512 rows (or whole matrices) keep the
    bmm calls together as fast as one (n = 4096 fp32 on this CPU: 512 rows 2.03-2.05 s, one call 2.04-2.09 s)."""
    itemsize = _itemsize(spec)
    row, item = spec.n * itemsize, spec.m * spec.n * itemsize
    total = spec.batch * item
    if total < 2 * MIN_PART:
        return [(slice(0, spec.batch), slice(0, spec.m))]
    target = max(MIN_PART, total // PARTS)
    if item <= target:  # whole matrices, several per part
        per = target // item
        return [(slice(b, min(b + per, spec.batch)), slice(0, spec.m)) for b in range(0, spec.batch, per)]
    count = max(1, spec.m // max(MIN_ROWS, target // row))  # row blocks per matrix, of equal size (+-1 row)
    edges = [spec.m * j // count for j in range(count + 1)]
    return [(slice(b, b + 1), slice(lo, hi)) for b in range(spec.batch) for lo, hi in zip(edges, edges[1:])]


def run(spec: MatmulSpec, inputs: list[Data], device: str, progress: Callable[[float], None],
        alloc: Outputs) -> list[Data]:
    import torch

    a_raw, b_raw = operands(spec, inputs)
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.dtype]

    def tensor(raw, shape):
        """The buffer's own memory as a tensor: raw little-endian values (torch is native-endian, as is every
        host this runs on), bf16 as its 16-bit patterns."""
        with warnings.catch_warnings():  # a read-only input is fine: bmm never writes its operands
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            if spec.dtype == "bf16":
                return torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16).reshape(shape)
            return torch.frombuffer(raw, dtype=tdt).reshape(shape)

    dev = torch.device(device)
    a = tensor(a_raw, (spec.batch, spec.m, spec.k)).to(dev)
    b = tensor(b_raw, (spec.batch, spec.k, spec.n)).to(dev)
    itemsize = _itemsize(spec)
    out = alloc(spec.batch * spec.m * spec.n * itemsize)
    c = tensor(out, (spec.batch, spec.m, spec.n))
    blocks = parts(spec)
    for i, (bs, rs) in enumerate(blocks):
        part = c[bs, rs]  # contiguous: one matrix's rows, or whole matrices
        if dev.type == "cuda":
            part.copy_(torch.bmm(a[bs, rs], b[bs]))  # device to host; copy_ waits for the kernel
        else:
            torch.bmm(a[bs, rs], b[bs], out=part)
        if i + 1 < len(blocks):  # the last part goes with the result
            upto = ((bs.stop - 1) * spec.m + rs.stop) * spec.n * itemsize
            alloc.ready(0, upto)
            progress(upto / len(out))
    progress(1.0)
    return [out]


def _decode32(data: Data, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Wire bytes -> float32 view (exact for all three dtypes); float64 copies are made block by block."""
    code = DTYPES[dtype][0]
    count = int(np.prod(shape))
    if len(data) != count * np.dtype(code).itemsize:
        raise JobError(f"matmul: {len(data)} bytes do not hold {shape} {dtype}")
    arr = np.frombuffer(data, dtype=code).reshape(shape)
    return bf16_bits_to_f32(arr) if dtype == "bf16" else arr.astype(np.float32, copy=False)


VERIFY_BLOCK_ELEMS = 1 << 17  # float64 temporaries of 1 MiB: cache-sized, and one pass over each matrix


def _rows(x: np.ndarray, fn: Callable[[np.ndarray], tuple[np.ndarray, ...]], scale: float = 1.0
          ) -> tuple[np.ndarray, ...]:
    """Apply fn to float64 row blocks of a (rows, cols) matrix (times `scale`, exact for a power of two) and stack
    the results. Blocks that fit in cache cost a fifth of the CPU of large ones in this memory-bound pass, which
    matters because a renter runs it next to the job it rents."""
    step = max(1, VERIFY_BLOCK_ELEMS // max(1, x.shape[1]))

    def block(i: int) -> np.ndarray:
        y = x[i:i + step].astype(np.float64)
        if scale != 1.0:
            y *= scale
        return y

    parts = [fn(block(i)) for i in range(0, x.shape[0], step)]
    return tuple(np.concatenate(col) for col in zip(*parts))


@dataclass
class MatmulCheck:
    """The half of the check that does not need the result: the secret vectors R and A (B R) with its error bound,
    per batch. A renter computes it while the job runs; R never leaves it, so doing this early costs no safety."""

    r: np.ndarray  # (batch, n, rounds)
    rhs: list[np.ndarray]  # per batch: A (B R), (m, rounds)
    acc: list[np.ndarray]  # per batch: ||a_i|| sqrt(sum_j r_j^2 ||b_j||^2), (m, rounds)
    inputs_finite: bool
    # the result-dependent half, folded in row by row as C arrives (absorb) or all at once (verify):
    lhs: np.ndarray | None = None  # C R, (batch * m, rounds)
    sq: np.ndarray | None = None  # C^2 R^2, same shape: non-finite exactly in the rows of C with an inf or nan
    rows_done: int = 0  # leading rows of C (batch-major) in lhs and sq
    source: object = None  # the buffer they were read from: other outputs are read from row 0


def prepare(spec: MatmulSpec, inputs: list[Data], rng: np.random.Generator) -> MatmulCheck:
    """All rounds at once (R holds one random vector per round), A and B each read once in float64 row blocks;
    seed-derived operands are read as their int8 values, never made into float matrices."""
    if spec.source == "seed":
        _no_input_blobs(inputs)
        a, b = _seeded_int8(spec)
        scale, finite = 1 / 128, True
    else:
        a_raw, b_raw = operands(spec, inputs)
        a = _decode32(a_raw, spec.dtype, (spec.batch, spec.m, spec.k))
        b = _decode32(b_raw, spec.dtype, (spec.batch, spec.k, spec.n))
        scale, finite = 1.0, bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    r = rng.integers(-1024, 1025, size=(spec.batch, spec.n, spec.rounds)).astype(np.float64)
    rhs, acc = [], []
    for bi in range(spec.batch):
        rb = r[bi]
        col_sq = np.zeros(spec.n)  # ||b_j||^2, summed over B's row blocks

        def times_r(x: np.ndarray) -> tuple[np.ndarray]:
            y = x @ rb
            col_sq[:] += np.einsum("ij,ij->j", x, x)
            return (y,)
        (br,) = _rows(b[bi], times_r, scale)

        def times_br(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return x @ br, np.sqrt(np.einsum("ij,ij->i", x, x))
        x, row_norm = _rows(a[bi], times_br, scale)
        rhs.append(x)
        acc.append(np.outer(row_norm, np.sqrt((rb * rb).T @ col_sq)))
    return MatmulCheck(r, rhs, acc, finite)


def _fold(spec: MatmulSpec, check: MatmulCheck, data: Data, rows: int) -> None:
    """Read rows [check.rows_done, rows) of C (as (batch * m, n), batch-major) from `data` into lhs and sq."""
    itemsize = _itemsize(spec)
    total = spec.batch * spec.m
    if data is not check.source:
        check.source, check.rows_done = data, 0
    if check.lhs is None or check.sq is None:
        check.lhs, check.sq = np.empty((total, spec.rounds)), np.empty((total, spec.rounds))
    lo = check.rows_done
    if rows <= lo:
        return
    c = _decode32(memoryview(data).cast("B")[lo * spec.n * itemsize:rows * spec.n * itemsize], spec.dtype,
                  (rows - lo, spec.n))
    row = lo
    while row < rows:  # one batch's rows at a time: each batch has its own R
        bi = row // spec.m
        end = min(rows, (bi + 1) * spec.m)
        rb = check.r[bi]
        rb2 = rb * rb

        def times_r(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y = x @ rb
            return y, np.square(x, out=x) @ rb2
        check.lhs[row:end], check.sq[row:end] = _rows(c[row - lo:end - lo], times_r)
        row = end
    check.rows_done = rows


def absorb(spec: MatmulSpec, check: MatmulCheck, index: int, data: Data, upto: int) -> None:
    """The rows of C within the first `upto` bytes of output `index` (all arrived, as the renter receives C in
    parts while the job runs) folded into the check now, so :func:`verify` reads only the rows after them."""
    itemsize = _itemsize(spec)
    if index != 0 or len(data) != spec.batch * spec.m * spec.n * itemsize:
        return  # not this job's C: verify() says why
    _fold(spec, check, data, min(upto // (spec.n * itemsize), spec.batch * spec.m))


def verify(spec: MatmulSpec, inputs: list[Data], outputs: list[Data], rng: np.random.Generator,
           prepared: MatmulCheck | None = None) -> Verdict:
    """Per round and row exactly |C r - A (B r)| <= tol, with tol as the module docstring says; stacking the
    rounds' vectors as the columns of R changes only how often A, B and C are read, not what is compared.
    `prepared` is :func:`prepare`'s answer for these inputs, if it was computed ahead (else it is computed now),
    with whatever rows of this very output :func:`absorb` already folded in.
    """
    if len(outputs) != 1:
        return Verdict(False, "matmul: exactly one output expected")
    try:
        check = prepared if prepared is not None else prepare(spec, inputs, rng)
        size = spec.batch * spec.m * spec.n * _itemsize(spec)
        if len(outputs[0]) != size:
            raise JobError(f"matmul: {len(outputs[0])} bytes do not hold {(spec.batch, spec.m, spec.n)} {spec.dtype}")
        early = check.rows_done if outputs[0] is check.source else 0
        _fold(spec, check, outputs[0], spec.batch * spec.m)
    except JobError as exc:
        return Verdict(False, str(exc))
    assert check.lhs is not None and check.sq is not None
    if check.inputs_finite and not np.all(np.isfinite(check.sq)):
        return Verdict(False, "matmul: non-finite output from finite inputs")
    u_out = DTYPES[spec.dtype][1]
    for bi in range(spec.batch):
        rows = slice(bi * spec.m, (bi + 1) * spec.m)
        tol = 8 * u_out * np.sqrt(check.sq[rows]) + 8 * np.sqrt(spec.k) * U_ACC * check.acc[bi] + 1e-30
        bad = ~(np.abs(check.lhs[rows] - check.rhs[bi]) <= tol)
        if bad.any():
            row, _ = np.argwhere(bad)[0]
            return Verdict(False, f"matmul: Freivalds check failed at batch {bi} row {row}")
    ahead = f"; {early} of {spec.batch * spec.m} rows of C checked as they arrived" if early else ""
    return Verdict(True, f"Freivalds {spec.rounds} rounds passed{ahead}")
