"""Content-addressed blobs: job inputs/outputs and attestation openings named by sha256, moved in <= 1 MiB chunks.

A blob is identified by :class:`BlobRef` (sha256 + size). The size is declared before any byte moves, so a
receiver rejects an oversize blob without buffering it, and the hash is checked before the bytes are used, so a
peer cannot substitute content. :class:`BlobStore` keeps blobs on disk under their hex digest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ProtocolError, UserError
from ..wire import MAX_CHUNK, FramedStream, OversizeMessage, Record, bounded

DEFAULT_MAX_BLOB = 1 << 30  # 1 GiB: per-blob ceiling unless a job kind sets a lower one
CHUNK = MAX_CHUNK - 64  # payload per frame, leaves room for the varint prefix under the 1 MiB frame limit


class BlobError(ProtocolError):
    """A blob whose bytes do not match its declared hash or size, or that exceeds the allowed size."""


class BlobMissing(UserError):
    """A blob was asked for by hash but is not in the store."""


@dataclass(frozen=True)
class BlobRef(Record):
    """Names a blob by content: what a job spec lists as inputs and a result lists as outputs."""

    sha256: bytes = bounded(exact_len=32)
    size: int = bounded(min=0, max=2**40)

    @classmethod
    def of(cls, data: bytes) -> "BlobRef":
        return cls(sha256=hashlib.sha256(data).digest(), size=len(data))

    @property
    def hex(self) -> str:
        return self.sha256.hex()

    def check_data(self, data: bytes | memoryview) -> bytes | memoryview:
        """Return `data` if it is this blob, else raise :class:`BlobError`."""
        if len(data) != self.size:
            raise BlobError(f"blob {self.hex[:16]}: {len(data)} bytes, declared {self.size}")
        if hashlib.sha256(data).digest() != self.sha256:
            raise BlobError(f"blob {self.hex[:16]}: content does not match its sha256")
        return data


def transfer_deadline(timeout_s: float, nbytes: int) -> float:
    """How long any bulk send or receive of `nbytes` may take: the protocol timeout plus a second per MiB (a floor
    of 1 MiB/s)."""
    return timeout_s + nbytes / (1 << 20)


def chunks(data: bytes | memoryview, size: int = CHUNK):
    """Views of at most `size` bytes each (an empty blob is zero chunks); framing them is their one copy."""
    view = memoryview(data).cast("B")
    for i in range(0, len(view), size):
        yield view[i:i + size]


async def send_blob(fs: FramedStream, data: bytes | memoryview) -> None:
    """Send the raw chunks of `data`; the caller has already sent its BlobRef (so its hash) in a signed message."""
    for part in chunks(data):
        await fs.send(part)


async def receive_blob(fs: FramedStream, ref: BlobRef, *, max_size: int = DEFAULT_MAX_BLOB,
                       into: memoryview | None = None) -> memoryview:
    """Receive exactly the blob `ref` names, into `into` (a writable buffer of ref.size bytes: a job's input file)
    or a new buffer; size checked before reading, hash after. Caller sets the deadline."""
    if ref.size > max_size:
        raise OversizeMessage(f"blob {ref.hex[:16]} of {ref.size} bytes exceeds the {max_size}-byte limit")
    buf = memoryview(bytearray(ref.size)) if into is None else into
    if len(buf) != ref.size or buf.readonly:
        raise ValueError(f"receive_blob needs a writable buffer of {ref.size} bytes")
    await receive_into(fs, buf)
    ref.check_data(buf)
    return buf


async def receive_into(fs: FramedStream, buf: memoryview, hasher: Any = None) -> None:
    """Fill `buf` exactly with raw chunk frames (a chunk running past its end is a :class:`BlobError`), feeding
    each chunk to `hasher` as it lands, so a blob received in parts is hashed on the way in."""
    got, size = 0, len(buf)
    while got < size:
        part = await fs.receive(max_size=MAX_CHUNK)
        if not part or got + len(part) > size:
            raise BlobError(f"chunking does not add up to {size} bytes")
        buf[got:got + len(part)] = part
        if hasher is not None:
            hasher.update(part)
        got += len(part)


class BlobStore:
    """Blobs on disk, one file per sha256; writes are atomic (temp file + rename) so a crash never leaves a
    half-written blob under a valid name."""

    def __init__(self, root: Path | str, *, max_size: int = DEFAULT_MAX_BLOB) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_size = max_size

    def path(self, ref: BlobRef) -> Path:
        return self.root / ref.hex

    def put(self, data: bytes) -> BlobRef:
        if len(data) > self.max_size:
            raise OversizeMessage(f"blob of {len(data)} bytes exceeds the {self.max_size}-byte limit")
        ref = BlobRef.of(data)
        final = self.path(ref)
        if not final.exists():
            tmp = final.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, final)
        return ref

    def has(self, ref: BlobRef) -> bool:
        return self.path(ref).exists()

    def get(self, ref: BlobRef) -> bytes:
        try:
            data = self.path(ref).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {ref.hex} is not in {self.root}; fetch it from the peer first") from None
        return ref.check_data(data)
