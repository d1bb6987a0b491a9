"""Files the node and its job child share by mapping them: the only way a blob crosses the sandbox boundary.

Imported by both sides, so it stays stdlib-only (the child must not pay for trio or torch imports here).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path


def new_mapped_file(path: Path | str, size: int) -> memoryview:
    """A new file of `size` bytes (0600) as a writable shared mapping; its space is reserved now, so a full disk
    is an OSError here rather than a SIGBUS when a page is first written."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if not size:
            return memoryview(bytearray())
        os.posix_fallocate(fd, 0, size)
        return memoryview(mmap.mmap(fd, size))
    finally:
        os.close(fd)


def map_file(path: Path | str, *, private: bool = False) -> memoryview:
    """An existing file's bytes without a copy: read-only and shared, or (``private``) a copy-on-write mapping
    the holder may scribble on without changing the file. Valid after the file is removed."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return memoryview(bytearray() if private else b"")
        if private:  # (no MAP_POPULATE: on a writable private mapping it copies every page up front)
            return memoryview(mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE))
        return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))
