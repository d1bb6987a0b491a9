"""``/iog/job/1.0.0``: negotiation, job data and payment on one stream per job, every control frame a signed envelope.

The exchange (R = renter, P = provider; every wait is bounded by ``market.request_timeout_s`` unless noted)::

    R -> P  job_request    {req_id, spec, max_price, max_s, arbiter, payout, device, stream_outputs}
    P -> R  job_quote      {req_id, agreement, price, min_s, max_s, spec_sha256, device, voucher_interval_s, expires_at}
         |  job_refusal    {req_id, reason: busy|price|kind|too_large|stake|bad_request|expired|internal, detail}
    R -> P  job_accept     {quote: the provider-signed job_quote envelope, byte for byte}   (both store it first)
    R       funds the escrow on chain (chain.escrow.fund: 1 transaction) and waits for confirmation
    R -> P  escrow_funded  {job_id, signature}      P checks the escrow on chain (amount, owner, mint, nonce)
    R -> P  <input blobs>  raw chunk frames (<= 1 MiB each) of spec.inputs in order; sizes from the spec, sha256 checked
    P -> R  job_progress   {job_id, state: "started", ...}   then "running" frames while the job runs
    R -> P  voucher        every voucher_interval_s of work   P -> R  voucher_ack {job_id, cumulative, error}
    P -> R  job_output     {job_id, index, offset, size, total}, then `size` bytes as chunks: a finished part of
                           output `index` while the job computes the rest (only if the request said
                           stream_outputs; parts of one output come in order, offset = bytes sent before)
    P -> R  job_result     {job_id, status, outputs: [BlobRef], seconds, message}, then the output blobs as chunks
                           (of a streamed output only the bytes after its parts; the sha256 covers all of it)
    R       verifies (numpy only)
    R -> P  job_verdict    {job_id, ok, final, reason}
    R -> P  voucher        final amount (ok only)  P -> R  voucher_ack
    P -> R  job_settled    {job_id, signature, cumulative, ok, detail}   (P submitted the latest voucher: 1 tx)

Rules: the renter is the signer of the request (its key is the agreement's renter and signs the vouchers); every
later renter frame must be signed by that key and every provider frame by the provider's key (the PeerID the
renter dialled). A frame of an unexpected type, a bad signature or a malformed body is answered with
``job_refusal(bad_request)`` and the stream is closed; nothing is stored for it, and a job already funded is
settled with the latest voucher the provider holds (the renter refunds the rest with the arbiter).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import trio

from ..chain.escrow import JOB_ID_LEN, Agreement
from ..compute.blobs import BlobRef
from ..compute.jobs import JobSpec
from ..errors import ProtocolError
from ..identity import Identity, solana_address
from ..wire import KiB, Device, FramedStream, Message, SchemaError, Signed, WireError, bounded, message

JOB_PROTOCOL = "/iog/job/1.0.0"
REQ_ID_LEN = 16
MAX_OUTPUTS = 16
REASONS = ("busy", "price", "kind", "too_large", "stake", "bad_request", "expired", "internal")
RESULT_STATUSES = ("ok", "timeout", "oom", "cpu_exceeded", "crashed", "bad_input", "cancelled")
STATES = ("started", "running")


# --- errors -------------------------------------------------------------------------------------------------


class NegotiationError(ProtocolError):
    """The peer broke the /iog/job protocol (wrong signer, wrong order, inconsistent terms)."""


class Refused(ProtocolError):
    """The provider refused the job; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PeerTimeout(ProtocolError):
    """The peer did not answer within the protocol's deadline."""


# --- messages -----------------------------------------------------------------------------------------------


@message("job_request", max_size=96 * KiB)
@dataclass(frozen=True)
class JobRequest(Message):
    req_id: bytes = bounded(exact_len=REQ_ID_LEN)
    spec: JobSpec
    max_price: int = bounded(min=0, max=2**63 - 1)
    max_s: int = bounded(min=1, max=2**31)
    arbiter: str = bounded(max_len=44)
    payout: str = bounded(max_len=44)  # where the renter's change goes: its own address (the escrow refunds its ATA)
    device: str = bounded(max_len=128, default="")  # wanted device name substring ("" = any)
    stream_outputs: bool = False  # the renter takes job_output parts during the job (a provider may still not)


@message("job_quote", max_size=8 * KiB)
@dataclass(frozen=True)
class JobQuote(Message):
    req_id: bytes = bounded(exact_len=REQ_ID_LEN)
    agreement: Agreement
    price: int = bounded(min=0, max=2**63 - 1)  # per device-hour
    min_s: int = bounded(min=0, max=2**31)  # billed at least this long
    max_s: int = bounded(min=1, max=2**31)  # the job is stopped after this long
    spec_sha256: bytes = bounded(exact_len=32)
    device: Device
    voucher_interval_s: float = bounded(min=0.05, max=3600.0)
    expires_at: int = bounded(min=0, max=2**40)

    def check(self, where: str) -> None:
        if self.min_s > self.max_s:
            raise SchemaError(f"{where}: min_s above max_s")


@message("job_refusal", max_size=2 * KiB)
@dataclass(frozen=True)
class JobRefusal(Message):
    req_id: bytes = bounded(exact_len=REQ_ID_LEN)  # the request's id (or the job id once agreed)
    reason: str = bounded(max_len=16)
    detail: str = bounded(max_len=512, default="")

    def check(self, where: str) -> None:
        if self.reason not in REASONS:
            raise SchemaError(f"{where}.reason: {self.reason!r} not one of {REASONS}")


@message("job_accept", max_size=10 * KiB)
@dataclass(frozen=True)
class JobAccept(Message):
    quote: bytes = bounded(max_len=8 * KiB)


@message("escrow_funded", max_size=1 * KiB)
@dataclass(frozen=True)
class EscrowFunded(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    signature: str = bounded(max_len=100)


@message("job_progress", max_size=1 * KiB)
@dataclass(frozen=True)
class JobProgress(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    state: str = bounded(max_len=16)
    fraction: float = bounded(min=0.0, max=1.0, default=0.0)
    elapsed_s: float = bounded(min=0.0, max=1e9, default=0.0)

    def check(self, where: str) -> None:
        if self.state not in STATES:
            raise SchemaError(f"{where}.state: {self.state!r} not one of {STATES}")


@message("voucher_ack", max_size=1 * KiB)
@dataclass(frozen=True)
class VoucherAck(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    cumulative: int = bounded(min=0, max=2**63 - 1)  # the amount the provider holds now (stored, fsynced)
    error: str = bounded(max_len=256, default="")  # why the last voucher was refused ("" = accepted)


@message("job_result", max_size=8 * KiB)
@dataclass(frozen=True)
class JobResultMsg(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    status: str = bounded(max_len=16)
    outputs: list[BlobRef] = bounded(max_len=MAX_OUTPUTS, default=[])
    seconds: float = bounded(min=0.0, max=1e9, default=0.0)
    message: str = bounded(max_len=512, default="")

    def check(self, where: str) -> None:
        if self.status not in RESULT_STATUSES:
            raise SchemaError(f"{where}.status: {self.status!r} not one of {RESULT_STATUSES}")


@message("job_output", max_size=1 * KiB)
@dataclass(frozen=True)
class JobOutput(Message):
    """Announces the next `size` bytes (raw chunk frames follow) of output `index`, at `offset` of its `total`.
    Not a commitment: the signed job_result's sha256 is, and it covers these bytes."""

    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    index: int = bounded(min=0, max=MAX_OUTPUTS - 1)
    offset: int = bounded(min=0, max=2**40)
    size: int = bounded(min=1, max=2**40)
    total: int = bounded(min=1, max=2**40)

    def check(self, where: str) -> None:
        if self.offset + self.size > self.total:
            raise SchemaError(f"{where}: part [{self.offset}, {self.offset + self.size}) outside {self.total} bytes")


@message("job_verdict", max_size=2 * KiB)
@dataclass(frozen=True)
class JobVerdict(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    ok: bool = False
    final: int = bounded(min=0, max=2**63 - 1, default=0)  # the final voucher's cumulative that follows (ok only)
    reason: str = bounded(max_len=512, default="")


@message("job_settled", max_size=1 * KiB)
@dataclass(frozen=True)
class JobSettled(Message):
    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    signature: str = bounded(max_len=100, default="")
    cumulative: int = bounded(min=0, max=2**63 - 1, default=0)
    ok: bool = False
    detail: str = bounded(max_len=256, default="")


# --- helpers ------------------------------------------------------------------------------------------------


def spec_digest(spec: JobSpec) -> bytes:
    """What a quote commits to: sha256 of the spec's canonical msgpack (kind, params, input refs)."""
    return hashlib.sha256(spec.encode()).digest()


def signer_address(signed: Signed[Any]) -> str:
    return solana_address(signed.signer)


class JobStream:
    """One side of a job stream: signed sends, typed receives under a deadline, the peer's key pinned.

    ``peer_key`` is None until the first frame names it (the provider learns the renter's key from the request).
    """

    def __init__(self, stream: Any, identity: Identity, *, peer_key: bytes | None = None,
                 timeout_s: float = 10.0) -> None:
        self.stream = stream
        self.fs = FramedStream(stream)
        self.identity = identity
        self.peer_key = peer_key
        self.timeout_s = timeout_s
        self._send_lock = trio.Lock()

    async def send(self, msg: Message) -> None:
        async with self._send_lock:
            with trio.fail_after(self.timeout_s):
                await self.fs.send_message(msg, self.identity)

    async def send_raw(self, payload: bytes) -> None:
        async with self._send_lock:
            with trio.fail_after(self.timeout_s):
                await self.fs.send(payload)

    async def recv(self, expect: type | tuple[type, ...], *, timeout_s: float | None = None) -> Signed[Any]:
        """The next frame, which must be one of `expect` (a job_refusal from the provider raises :class:`Refused`)."""
        types = expect if isinstance(expect, tuple) else (expect,)
        allowed = types if JobRefusal in types else (*types, JobRefusal)
        try:
            with trio.fail_after(self.timeout_s if timeout_s is None else timeout_s):
                signed = await self.fs.receive_message(allowed)
        except trio.TooSlowError:
            raise PeerTimeout(f"no {'/'.join(t.TYPE for t in types)} within "
                              f"{self.timeout_s if timeout_s is None else timeout_s:g} s") from None
        if self.peer_key is not None and signed.signer != self.peer_key:
            raise NegotiationError(f"{signed.message.TYPE} signed by {signer_address(signed)}, not the peer of this job")
        if isinstance(signed.message, JobRefusal) and JobRefusal not in types:
            raise Refused(signed.message.reason, signed.message.detail)
        return signed

    async def refuse(self, req_id: bytes, reason: str, detail: str = "") -> None:
        """Best effort: tell the peer why, then the caller closes the stream."""
        try:
            with trio.move_on_after(2):
                await self.send(JobRefusal(req_id=req_id, reason=reason, detail=detail[:512]))
        except Exception:
            pass

    async def close(self) -> None:
        await self.fs.close(timeout_s=2.0)

    async def reset(self) -> None:
        with trio.move_on_after(2):
            try:
                await self.stream.reset()
            except Exception:
                pass


def now() -> int:
    return int(time.time())


__all__ = ["EscrowFunded", "JOB_PROTOCOL", "JobAccept", "JobOutput", "JobProgress", "JobQuote", "JobRefusal", "JobRequest",
           "JobResultMsg", "JobSettled", "JobStream", "JobVerdict", "NegotiationError", "PeerTimeout", "REASONS",
           "Refused", "VoucherAck", "WireError", "spec_digest"]
