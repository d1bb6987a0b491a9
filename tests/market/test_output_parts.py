"""job_output parts between two real JobStreams (in-memory byte streams, real framing and signatures): what a
provider sends during a job, and every way a renter refuses parts that are out of order, oversize, inconsistent
with the result or not the bytes the result's sha256 names."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from p2pnode.compute.blobs import BlobError, BlobRef, send_blob
from p2pnode.compute.mapped import new_mapped_file
from p2pnode.compute.sandbox import OutputPart
from p2pnode.identity import Identity
from p2pnode.market.negotiation import JobOutput, JobStream, NegotiationError
from p2pnode.market.output_parts import PartReceiver, PartSender
from p2pnode.wire import SchemaError, trio_stream_adapter

JOB = b"\7" * 16
PROVIDER, RENTER = Identity.generate(), Identity.generate()


def streams() -> tuple[JobStream, JobStream]:
    a, b = trio.testing.memory_stream_pair()
    return (JobStream(trio_stream_adapter(a), PROVIDER, peer_key=RENTER.public_key),
            JobStream(trio_stream_adapter(b), RENTER, peer_key=PROVIDER.public_key))


async def receive_all(renter: JobStream, rx: PartReceiver) -> list:
    """The renter's loop: parts until the result, then the rest."""
    from p2pnode.market.negotiation import JobResultMsg

    while True:
        signed = await renter.recv((JobOutput, JobResultMsg), timeout_s=5)
        if isinstance(signed.message, JobOutput):
            await rx.receive(signed.message)
        else:
            return await rx.finish(signed.message.outputs)


async def test_parts_sent_during_the_job_and_the_rest_after_make_the_outputs(tmp_path):
    from p2pnode.market.negotiation import JobResultMsg

    data = [os.urandom(3 << 20), os.urandom(1000)]
    path = tmp_path / "out_0"
    new_mapped_file(path, len(data[0]))[:] = data[0]
    provider, renter = streams()
    tx = PartSender(provider, PROVIDER, JOB, timeout_s=5)
    rx = PartReceiver(renter.fs, max_bytes=8 << 20, timeout_s=5)
    got: list = []
    async with trio.open_nursery() as n:
        n.start_soon(tx.run)

        async def renter_side():
            got.extend(await receive_all(renter, rx))
        n.start_soon(renter_side)
        for upto in (1 << 20, 1 << 20, (2 << 20) + 5):  # a repeated report sends nothing twice
            tx.on_part(OutputPart(0, path, len(data[0]), upto))
        await tx.finish()
        assert tx.sent == {0: (2 << 20) + 5}
        refs, rest = tx.complete(data)
        assert [len(r) for r in rest] == [len(data[0]) - (2 << 20) - 5, 1000]
        assert refs == [BlobRef.of(d) for d in data]  # hashed as sent, part by part, then the rest
        await provider.fs.send_message(JobResultMsg(job_id=JOB, status="ok", outputs=refs), PROVIDER)
        for r in rest:
            await send_blob(provider.fs, r)
    assert [bytes(g) for g in got] == data
    assert rx.got == {0: (2 << 20) + 5}  # output 1 was never streamed: it came whole after the result
    # outputs that do not fit what was already sent are refused by the provider itself
    assert tx.complete([data[0][:-1], data[1]]) is None and tx.complete([]) is None


async def send_part(provider: JobStream, index: int, offset: int, payload: bytes, total: int) -> None:
    await provider.fs.send_message(JobOutput(job_id=JOB, index=index, offset=offset, size=len(payload), total=total),
                                   PROVIDER)
    await send_blob(provider.fs, payload)


@pytest.mark.parametrize("case", ["first_not_at_zero", "gap", "total_changes", "oversize", "overrun"])
async def test_parts_out_of_order_oversize_or_overrunning_are_refused(case):
    provider, renter = streams()
    rx = PartReceiver(renter.fs, max_bytes=1 << 20, timeout_s=5)
    first = {"first_not_at_zero": (10, 10, 100), "oversize": (0, 10, (1 << 20) + 1)}.get(case, (0, 10, 100))
    second = {"gap": (20, 10, 100), "total_changes": (10, 10, 200)}.get(case)
    async with trio.open_nursery() as n:
        async def provider_side():
            off, size, total = first
            if case == "overrun":  # announces 10 bytes, sends 11 in one chunk
                await provider.fs.send_message(JobOutput(job_id=JOB, index=0, offset=0, size=10, total=100), PROVIDER)
                await provider.fs.send(b"x" * 11)
                return
            await send_part(provider, 0, off, b"a" * size, total)
            if second:
                await send_part(provider, 0, second[0], b"b" * second[1], second[2])
        n.start_soon(provider_side)
        with pytest.raises((NegotiationError, BlobError)) as info:
            while True:
                await rx.receive((await renter.recv(JobOutput, timeout_s=5)).message)
        n.cancel_scope.cancel()
    if case == "oversize":
        assert "limit" in str(info.value) and rx.bufs == {}  # refused before a byte was stored
    elif case == "overrun":
        assert isinstance(info.value, BlobError)
    else:
        assert isinstance(info.value, NegotiationError)


async def test_a_result_must_match_its_parts_and_its_hash_covers_them():
    from p2pnode.market.negotiation import JobResultMsg

    good = os.urandom(4096)
    for case in ("substituted", "other_size", "unlisted"):
        provider, renter = streams()
        rx = PartReceiver(renter.fs, max_bytes=1 << 20, timeout_s=5)
        async with trio.open_nursery() as n:
            async def provider_side():
                await send_part(provider, 0, 0, good[:1000], len(good))
                if case == "substituted":  # streamed bytes differ from what the signed hash names
                    refs, rest = [BlobRef.of(b"\0" + good[1:])], [good[1000:]]
                elif case == "other_size":
                    refs, rest = [BlobRef.of(good + b"!")], [good[1000:] + b"!"]
                else:  # parts of output 0, a result listing nothing
                    refs, rest = [], []
                await provider.fs.send_message(JobResultMsg(job_id=JOB, status="ok", outputs=refs), PROVIDER)
                for r in rest:
                    await send_blob(provider.fs, r)
            n.start_soon(provider_side)
            with pytest.raises((NegotiationError, BlobError)) as info:
                await receive_all(renter, rx)
        assert isinstance(info.value, BlobError if case == "substituted" else NegotiationError), case


def test_a_part_outside_its_output_is_malformed():
    with pytest.raises(SchemaError):
        JobOutput.from_wire({"job_id": JOB, "index": 0, "offset": 90, "size": 20, "total": 100})
    with pytest.raises(SchemaError):
        JobOutput.from_wire({"job_id": JOB, "index": 16, "offset": 0, "size": 1, "total": 1})
