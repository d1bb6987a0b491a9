"""Job outputs sent while the job still runs: ``job_output`` parts on the job stream (see :mod:`.negotiation`).

A large result (a 6144² fp32 matmul is 144 MiB) otherwise starts moving only when the job ends, and on a 1 GbE
link that tail alone is 1.3 s of a 10 s job. The job reports each finished leading part of an output
(:class:`~p2pnode.compute.sandbox.OutputPart`); :class:`PartSender` sends it at once, and :class:`PartReceiver`
stores and hashes it on arrival, so after the job only its last part and the signed result remain to move.

The parts are not signed one by one: the stream is Noise-authenticated to the provider, and the signed
job_result's sha256 covers every byte, parts included, which the receiver checks before anything is used.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import trio

from ..compute.blobs import BlobError, BlobRef, chunks, receive_blob, receive_into, transfer_deadline
from ..compute.mapped import map_file
from ..compute.sandbox import OutputPart
from ..identity import Identity
from .negotiation import MAX_OUTPUTS, JobOutput, JobStream, NegotiationError


class PartSender:
    """Provider side: :meth:`on_part` (called by the job's frame loop) queues a part, :meth:`run` (a task in the
    job's nursery) sends each as one run of frames under the stream's send lock and hashes it, :meth:`finish`
    waits until all queued parts are out; then :meth:`complete` gives the result's refs and what is left to send.
    A job whose renter did not ask for parts gets a sender that is never told of one."""

    def __init__(self, js: JobStream, identity: Identity, job_id: bytes, timeout_s: float) -> None:
        self.js = js
        self.identity = identity
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.sent: dict[int, int] = {}
        self._views: dict[int, memoryview] = {}  # each streamed output's file, mapped: its length is the total
        self._hash: dict[int, Any] = {}  # sha256 of each output's bytes sent so far
        self._queue, self._parts = trio.open_memory_channel(math.inf)
        self._done = trio.Event()

    def on_part(self, part: OutputPart) -> None:
        self._queue.send_nowait(part)

    async def run(self) -> None:
        try:
            async with self._parts:
                async for part in self._parts:
                    await self._send(part)
        finally:
            self._done.set()

    async def finish(self) -> None:
        """Called once the job has ended (no more parts): returns when every queued part has been sent."""
        self._queue.close()
        await self._done.wait()

    async def _send(self, part: OutputPart) -> None:
        start = self.sent.get(part.index, 0)
        if part.upto <= start:
            return
        view = self._views.get(part.index)
        if view is None:
            # the job's own output file, mapped read-only; runners are the fixed registry's, which never shrink
            # a file they reported, so reading the reported range is safe while the job writes later parts
            view = self._views[part.index] = map_file(part.path)
            self._hash[part.index] = hashlib.sha256()
        if len(view) != part.size:
            raise BlobError(f"output {part.index}: file of {len(view)} bytes, reported {part.size}")
        msg = JobOutput(job_id=self.job_id, index=part.index, offset=start, size=part.upto - start, total=part.size)
        async with self.js._send_lock:
            with trio.fail_after(transfer_deadline(self.timeout_s, msg.size)):
                await self.js.fs.send_message(msg, self.identity)
                for piece in chunks(view[start:part.upto]):
                    await self.js.fs.send(piece)
                    self._hash[part.index].update(piece)
        self.sent[part.index] = part.upto

    def complete(self, outputs: list[Any]) -> tuple[list[BlobRef], list[memoryview]] | None:
        """The job_result's refs — the sha256 of exactly the bytes the renter gets: the parts sent, then the rest
        of the final output — and the rest of each output, to send after the result. None if the outputs do not
        fit the parts already sent (then the provider reports a crash instead of a result nobody can check)."""
        if any(i >= len(outputs) or len(outputs[i]) != len(self._views[i]) for i in self.sent):
            return None
        refs, rest = [], []
        for i, out in enumerate(outputs):
            tail = memoryview(out).cast("B")[self.sent.get(i, 0):]
            h = self._hash[i] if i in self.sent else hashlib.sha256()
            h.update(tail)
            refs.append(BlobRef(sha256=h.digest(), size=len(out)))
            rest.append(tail)
        return refs, rest


class PartReceiver:
    """Renter side: each job_output part into its output's buffer, in order, hashed on the way in; :meth:`finish`
    takes the job_result's refs, receives what follows it and checks every output's sha256."""

    def __init__(self, fs: Any, max_bytes: int, timeout_s: float,
                 on_part: Callable[[int, memoryview, int], None] | None = None) -> None:
        self.fs = fs
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.on_part = on_part  # (index, buffer, bytes arrived): e.g. to check them before the rest comes
        self.bufs: dict[int, memoryview] = {}
        self.got: dict[int, int] = {}
        self._hash: dict[int, Any] = {}

    async def receive(self, msg: JobOutput) -> None:
        i = msg.index
        if i not in self.bufs:
            if msg.offset != 0:
                raise NegotiationError(f"job_output: output {i} starts at {msg.offset}, not 0")
            if sum(map(len, self.bufs.values())) + msg.total > self.max_bytes:
                raise NegotiationError(f"job_output: outputs above our {self.max_bytes}-byte limit")
            self.bufs[i], self.got[i], self._hash[i] = memoryview(bytearray(msg.total)), 0, hashlib.sha256()
        buf = self.bufs[i]
        if msg.total != len(buf) or msg.offset != self.got[i]:
            raise NegotiationError(f"job_output: output {i} part at {msg.offset} of {msg.total}, expected "
                                   f"{self.got[i]} of {len(buf)}")
        with trio.fail_after(transfer_deadline(self.timeout_s, msg.size)):
            await receive_into(self.fs, buf[msg.offset:msg.offset + msg.size], self._hash[i])
        self.got[i] += msg.size
        if self.on_part is not None:
            self.on_part(i, buf, self.got[i])

    async def finish(self, refs: list[BlobRef]) -> list[memoryview]:
        if len(refs) > MAX_OUTPUTS or any(i >= len(refs) for i in self.bufs):
            raise NegotiationError("job_result: parts were sent of an output it does not list")
        outputs = []
        for i, ref in enumerate(refs):
            with trio.fail_after(transfer_deadline(self.timeout_s, ref.size - self.got.get(i, 0))):
                if i not in self.bufs:
                    outputs.append(await receive_blob(self.fs, ref, max_size=self.max_bytes))
                    continue
                if ref.size != len(self.bufs[i]):
                    raise NegotiationError(f"job_result: output {i} of {ref.size} bytes, its parts said "
                                           f"{len(self.bufs[i])}")
                await receive_into(self.fs, self.bufs[i][self.got[i]:], self._hash[i])
            if self._hash[i].digest() != ref.sha256:
                raise BlobError(f"blob {ref.hex[:16]}: content (sent in parts) does not match its sha256")
            outputs.append(self.bufs[i])
        return outputs
