"""Blobs on a framed stream: received into a caller's buffer (a job's input file) or a new one; size checked before
a byte is read, content after."""

import pytest
import trio

from p2pnode.compute.blobs import CHUNK, BlobError, BlobRef, receive_blob, send_blob
from p2pnode.wire import OversizeMessage

from .conftest import framed_pair

DATA = bytes(range(256)) * ((2 * CHUNK + 1000) // 256)  # three chunks, the last one short


async def test_blob_lands_in_the_callers_buffer():
    a, b = framed_pair()
    ref = BlobRef.of(DATA)
    target = memoryview(bytearray(len(DATA)))
    async with trio.open_nursery() as n:
        n.start_soon(send_blob, a, DATA)
        got = await receive_blob(b, ref, into=target)
    assert got is target and bytes(target) == DATA


async def test_a_new_buffer_without_into():
    a, b = framed_pair()
    async with trio.open_nursery() as n:
        n.start_soon(send_blob, a, DATA)
        got = await receive_blob(b, BlobRef.of(DATA))
    assert got == DATA


async def test_substituted_content_is_refused():
    a, b = framed_pair()
    forged = DATA[:-1] + b"\x00"
    async with trio.open_nursery() as n:
        n.start_soon(send_blob, a, forged)
        with pytest.raises(BlobError, match="does not match"):
            await receive_blob(b, BlobRef.of(DATA))


async def test_oversize_is_refused_before_reading():
    a, b = framed_pair()  # nothing is ever sent: a read would hang, the check must come first
    with trio.fail_after(1):
        with pytest.raises(OversizeMessage):
            await receive_blob(b, BlobRef(sha256=b"\0" * 32, size=10 << 20), max_size=1 << 20)


async def test_more_bytes_than_declared_is_refused():
    a, b = framed_pair()
    async with trio.open_nursery() as n:
        n.start_soon(send_blob, a, DATA)
        with pytest.raises(BlobError, match="chunking"):
            await receive_blob(b, BlobRef(sha256=BlobRef.of(DATA).sha256, size=CHUNK + 10))
        n.cancel_scope.cancel()


async def test_a_wrong_buffer_is_a_caller_error():
    _, b = framed_pair()
    ref = BlobRef.of(DATA)
    for bad in (memoryview(bytearray(len(DATA) - 1)), memoryview(bytes(len(DATA)))):  # short; read-only
        with pytest.raises(ValueError):
            await receive_blob(b, ref, into=bad)
