"""The provider's side of ``/iog/job/1.0.0``: quote, check the escrow, run the job in the sandbox, take vouchers, settle.

One job per free device ("slot"). A request is refused with a typed reason before anything is reserved or stored
(unknown kind, too large, price, stake, busy, bad request); a quote reserves a slot for its lifetime; the accepted
agreement is stored (fsync) before the provider acts on it; the escrow is checked on chain before the job starts;
each voucher is checked and stored (``chain.escrow.accept_voucher``) before it is acknowledged. Whatever ends the
job — a verified result, a renter that stopped paying or vanished, a malformed frame, our own Ctrl-C — the latest
voucher is settled (one transaction), and settlements that fail (RPC down) are retried until they land, also
after a restart (they are on disk).

The slot count changing (a job starts or ends) calls ``on_capacity`` so the node re-publishes its offer listing
the devices that are free.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ..chain import escrow
from ..chain.stake import required_stake, stake_of
from ..compute.blobs import BlobError, receive_blob, send_blob, transfer_deadline
from ..compute.jobs import KINDS, JobError, JobSpec
from ..compute.sandbox import JobFiles, Limits, PartCallback, WorkerPool
from ..config import NodeConfig
from ..errors import ProtocolError
from ..identity import Identity, solana_address
from ..store import Store
from ..wire import MAX_DEVICE_ATTESTATION, Device, SchemaError, WireError, open_envelope, seal, unpack
from . import pricing
from .agreements import Agreements
from .negotiation import (JOB_PROTOCOL, EscrowFunded, JobAccept, JobProgress, JobQuote, JobRequest, JobResultMsg,
                          JobSettled, JobStream, JobVerdict, NegotiationError, PeerTimeout, Refused, VoucherAck,
                          spec_digest)
from .output_parts import PartSender

log = logging.getLogger(__name__)

STAKE_CACHE_S = 15.0


@dataclass
class Slot:
    """One rentable device: what the offer says about it, where torch runs on it, and who holds it."""

    device: Device
    torch_device: str
    holder: bytes | None = None  # request id while quoted, then job id


def slots_for(devices: Sequence[Device]) -> list[Slot]:
    out, cuda = [], 0
    for d in devices:
        if d.kind == "cuda":
            out.append(Slot(d, f"cuda:{cuda}"))
            cuda += 1
        else:
            out.append(Slot(d, "cpu"))
    return out


@dataclass
class JobStats:
    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    bad_frames: int = 0
    started: int = 0
    completed: int = 0
    settled: int = 0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


Runner = Callable[..., Any]  # async (spec, inputs, device, limits, progress) -> compute.sandbox.JobResult


class _Abort(Exception):
    """Internal: stop this job (the renter stopped paying, vanished or broke the protocol)."""


class JobService:
    """Serves /iog/job/1.0.0 on a host. ``await nursery.start(service.run, host)``; leaving cancels every job."""

    def __init__(self, identity: Identity, store: Store, cfg: NodeConfig, params: Any, client: Any,
                 devices: Sequence[Device], *, on_capacity: Callable[[], None] = lambda: None,
                 runner: Runner | None = None, tamper: Callable[[Any], Any] | None = None) -> None:
        self.identity = identity
        self.keypair = identity.solana_keypair()
        self.store = store
        self.cfg = cfg
        self.market = cfg.market
        self.params = params
        self.client = client
        self.slots = slots_for(devices)
        self.on_capacity = on_capacity
        self._runner = runner
        self.tamper = tamper  # tests only: an adversarial provider that alters its results
        self.agreements = Agreements(store)
        self.store.ensure_schemas()  # tables registered by modules imported after the store opened
        self.stats = JobStats()
        self._stake_ok_until = 0.0
        self._pool: Any = None

    # --- capacity ------------------------------------------------------------------------------------------

    def offer_devices(self) -> list[Device]:
        """What the offer lists: every device in a stable order, marked busy while it runs a job, with its latest
        passed attestation (speed, when, by whom) so renters can rank by attested capacity."""
        attested = latest_attestations(self.store, self.identity.peer_id, len(self.slots))
        out = []
        for i, s in enumerate(self.slots):
            extra = {}
            if (signed := attested.get(i)) is not None:
                a = signed.message
                extra = {"tflops": a.tflops, "attested_at": a.time, "attested_by": a.verifier, "attestation": signed.raw}
            out.append(replace(s.device, busy=s.holder is not None, **extra))
        return out

    def _take_slot(self, holder: bytes, want: str) -> Slot | None:
        for s in self.slots:
            if s.holder is None and (not want or want.lower() in s.device.name.lower()):
                s.holder = holder
                self.on_capacity()
                return s
        return None

    def _release(self, slot: Slot | None) -> None:
        if slot is not None and slot.holder is not None:
            slot.holder = None
            self.on_capacity()

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def run(self, host: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from ..net.host import handing_to

        async with trio.open_nursery() as nursery:
            if self._runner is None:
                await nursery.start(self._hold_pool)
            host.set_stream_handler(JOB_PROTOCOL, handing_to(nursery, self._serve))
            nursery.start_soon(self._settle_loop)
            task_status.started()
            await trio.sleep_forever()

    async def _hold_pool(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The sandbox's warm workers live exactly as long as this task (a nursery must not cross tasks)."""
        busiest = max(sum(s.torch_device == d for s in self.slots) for d in {s.torch_device for s in self.slots})
        per_device = max(1, self.cfg.compute.warm_workers, busiest)  # every slot of a device can start at once
        async with WorkerPool(sorted({s.torch_device for s in self.slots}), per_device=per_device) as pool:
            self._pool = pool
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._pool = None

    async def warm(self, timeout_s: float = 120.0) -> None:
        if self._pool is not None:
            await self._pool.warm(timeout_s)

    async def _settle_loop(self) -> None:
        """Restart path and RPC outages: keep submitting the vouchers on disk until each has landed."""
        while True:
            pending = [c for c in escrow.channels(self.store, role="provider", states=(escrow.OPEN, escrow.SETTLING))
                       if c.voucher is not None and not self._active(c.agreement.job_id)]
            for ch in pending:
                await self._settle(ch.agreement.job_id, quiet=True)
            await trio.sleep(self.market.settle_retry_s)

    def _active(self, job_id: bytes) -> bool:
        return any(s.holder == job_id for s in self.slots)

    # --- one job -------------------------------------------------------------------------------------------

    async def _serve(self, stream: Any) -> None:
        js = JobStream(stream, self.identity, timeout_s=self.market.request_timeout_s)
        job = _Job(self, js)
        try:
            await job.run()
        except Refused as exc:
            self.stats.refuse(exc.reason)
            log.info("refused a job request: %s", exc)
            await js.refuse(job.ref, exc.reason, exc.detail)
        except (WireError, NegotiationError, JobError, BlobError, escrow.EscrowError) as exc:
            self.stats.bad_frames += 1
            self.stats.refuse("bad_request")
            log.info("job stream %s: %s: %s", job.ref.hex()[:8], type(exc).__name__, exc)
            await js.refuse(job.ref, "bad_request", f"{type(exc).__name__}: {exc}")
        except (PeerTimeout, trio.TooSlowError) as exc:
            log.info("job stream %s: peer timed out: %s", job.ref.hex()[:8], exc)
        except _Abort as exc:
            log.info("job %s stopped: %s", job.ref.hex()[:8], exc)
        except Exception as exc:  # the renter's stream died (reset, EOF): a network event, not our bug
            log.info("job stream %s ended: %s: %s", job.ref.hex()[:8], type(exc).__name__, exc)
        finally:
            with trio.CancelScope(shield=True):
                await job.finish()
                await js.close()

    async def _settle(self, job_id: bytes, *, quiet: bool = False) -> str | None:
        """Submit the latest voucher; None when there is none or the chain is unreachable (retried later)."""
        try:
            sig = await escrow.settle(self.client, self.store, self.keypair, job_id)
        except escrow.NothingToSettle:
            return None
        except escrow.ChannelClosed:
            ch = escrow.channel(self.store, job_id)
            return ch.settle_sig
        except Exception as exc:
            if await self._refunded_elsewhere(job_id):
                return None
            (log.debug if quiet else log.warning)("settling job %s failed (will retry): %s", job_id.hex()[:8], exc)
            return None
        ch = escrow.channel(self.store, job_id)
        a = ch.agreement
        row = self.agreements.get(job_id)
        if row is not None:
            self.agreements.update(job_id, state="settled", settle_sig=sig, cumulative=ch.cumulative,
                                   fee=escrow.fee_of(ch.cumulative, a.fee_bps))
        self.stats.settled += 1
        log.info("settled job %s: %d base units (%s)", job_id.hex()[:8], ch.cumulative, sig)
        return sig

    async def _refunded_elsewhere(self, job_id: bytes) -> bool:
        """The voucher cannot land because the escrow is gone: the renter refunded with the arbiter (paying our
        latest voucher). Record it so the settle loop stops; any other failure (RPC down) is retried."""
        ch = escrow.channel(self.store, job_id)
        try:
            if await self.client.get_account(ch.agreement.escrow) is not None:
                return False
        except Exception:
            return False
        if ch.state == escrow.SETTLING and ch.settle_sig:
            try:
                if await self.client.signature_succeeded(ch.settle_sig):
                    return False  # it was our own settlement after all; the next pass marks it settled
            except Exception:
                return False
        escrow.mark_refunded(self.store, job_id)
        if self.agreements.get(job_id) is not None:
            self.agreements.update(job_id, state="closed", detail="escrow closed by the renter's refund with the "
                                                                  "arbiter")
        log.info("job %s: escrow closed by the renter's refund with the arbiter", job_id.hex()[:8])
        return True

    # --- request checks ------------------------------------------------------------------------------------

    async def _stake_ok(self) -> bool:
        if time.monotonic() < self._stake_ok_until:
            return True
        need = required_stake(self.params, [s.device for s in self.slots])
        have = await stake_of(self.client, self.params, self.identity.address)
        if have >= need:
            self._stake_ok_until = time.monotonic() + STAKE_CACHE_S
            return True
        return False

    async def run_job(self, spec: JobSpec, inputs: JobFiles, slot: Slot, max_s: float,
                      progress: Callable[[float], None], on_part: PartCallback | None = None) -> Any:
        """`on_part` hears of output parts the job finishes early (not from a test's in-process runner)."""
        limits = Limits(wall_s=max_s, mem_bytes=0, threads=job_threads(self.cfg.compute.cpu_threads, self.slots, slot))
        if self._runner is not None:
            result = await self._runner(spec, inputs.inputs, slot.torch_device, limits, progress)
        else:
            result = await self._pool.run_job(spec, inputs, slot.torch_device, limits, progress, on_part=on_part)
        if self.tamper is not None:
            result = self.tamper(result)
        return result


def job_threads(configured: int, slots: Sequence[Slot], slot: Slot, cores: int | None = None) -> int:
    """torch threads for a job on `slot` (0 = torch's default). CPU "devices" share the machine's cores: the
    operator's ``compute.cpu_threads``, else the cores split among them so concurrent jobs do not oversubscribe."""
    if slot.torch_device != "cpu":
        return 0
    cpu_slots = sum(s.torch_device == "cpu" for s in slots)
    return configured or (max(1, (cores or os.cpu_count() or 1) // cpu_slots) if cpu_slots > 1 else 0)


class _Job:
    """The state of one stream; `finish` always runs (settles what was vouched, frees the slot)."""

    def __init__(self, svc: JobService, js: JobStream) -> None:
        self.svc = svc
        self.js = js
        self.ref = b"\x00" * 16
        self.slot: Slot | None = None
        self.agreement: escrow.Agreement | None = None
        self.funded = False
        self.last_voucher_at = 0.0
        self.cumulative = 0
        self.verdict: JobVerdict | None = None
        self.verdict_event = trio.Event()
        self.final_event = trio.Event()
        self.abort_reason = ""

    # -- negotiation --

    async def _receive_request(self):
        raw = await self._recv_raw()
        try:
            return open_envelope(raw, JobRequest)
        except SchemaError:
            kind = _peek_kind(raw)
            if kind is not None and kind not in KINDS:
                raise Refused("kind", f"job kind {kind!r} is not served (known: {', '.join(sorted(KINDS))})") from None
            raise

    async def _recv_raw(self) -> bytes:
        try:
            with trio.fail_after(self.js.timeout_s):
                return await self.js.fs.receive()
        except trio.TooSlowError:
            raise PeerTimeout("no job_request") from None

    async def run(self) -> None:
        svc, m, js = self.svc, self.svc.market, self.js
        signed = await self._receive_request()
        req: JobRequest = signed.message
        self.ref = req.req_id
        js.peer_key = signed.signer
        renter = solana_address(signed.signer)
        svc.stats.requests += 1
        await self._check_request(req, renter)
        self.slot = svc._take_slot(req.req_id, req.device)
        if self.slot is None:
            raise Refused("busy", f"all {len(svc.slots)} device(s) are running jobs")
        ocfg = svc.cfg.offer
        price = ocfg.price
        deposit = pricing.deposit_for(price, req.max_s, svc.params.fee_bps)
        job_id = os.urandom(escrow.JOB_ID_LEN)
        try:
            nonce_acc, nonce = await escrow.lease_nonce(svc.client, svc.store, svc.keypair,
                                                        escrow.tk.pubkey(renter), job_id)
            chain_now = await svc.client.unix_time()
        except Exception as exc:
            escrow.release_nonce(svc.store, job_id)
            raise Refused("internal", f"chain unavailable: {type(exc).__name__}") from None
        self.ref = job_id
        expires = int(time.time()) + m.quote_ttl_s
        deadline = (chain_now + m.quote_ttl_s + int(m.fund_timeout_s) + req.max_s + int(m.result_grace_s)
                    + svc.params.escrow_grace_s)
        a = escrow.Agreement(job_id=job_id, renter=renter, provider=svc.identity.address, arbiter=req.arbiter,
                             mint=svc.params.mint, deposit=deposit, fee_bps=svc.params.fee_bps,
                             nonce_account=str(nonce_acc), nonce=str(nonce), deadline=deadline)
        quote = JobQuote(req_id=req.req_id, agreement=a, price=price, min_s=min(ocfg.min_s, req.max_s),
                         max_s=req.max_s, spec_sha256=spec_digest(req.spec), device=self.slot.device,
                         voucher_interval_s=m.voucher_interval_s, expires_at=expires)
        quote_raw = seal(quote, svc.identity)
        self.slot.holder = job_id
        try:
            await js.send_raw(quote_raw)
            acc = await js.recv(JobAccept, timeout_s=m.quote_ttl_s)
        except BaseException:
            escrow.release_nonce(svc.store, job_id)
            raise
        if acc.message.quote != quote_raw:
            escrow.release_nonce(svc.store, job_id)
            raise NegotiationError("job_accept does not embed the quote sent on this stream")
        if time.time() > expires:
            escrow.release_nonce(svc.store, job_id)
            raise Refused("expired", "the quote expired before it was accepted")
        # the agreement is on disk before anything acts on it
        svc.agreements.create(job_id=job_id, role="provider", peer=renter, kind=req.spec.kind, price=price,
                              deposit=deposit, quote=quote_raw, spec=req.spec.encode())
        self.agreement = a
        fund = await js.recv(EscrowFunded, timeout_s=m.fund_timeout_s)
        if fund.message.job_id != job_id:
            raise NegotiationError("escrow_funded names another job")
        await self._verify_funding(a)
        escrow.record_agreement(svc.store, a, "provider")
        self.funded = True
        svc.agreements.update(job_id, state="funded", fund_sig=fund.message.signature)
        # inputs go straight into the job's files, which the sandbox child maps: no copy on the way to the job
        with JobFiles(sum(r.size for r in req.spec.inputs)) as files:
            for ref in req.spec.inputs:
                with trio.fail_after(transfer_deadline(m.request_timeout_s, ref.size)):
                    await receive_blob(js.fs, ref, max_size=m.max_input_bytes, into=files.new_input(ref.size))
            await self._run(req, quote, files)

    async def _check_request(self, req: JobRequest, renter: str) -> None:
        svc = self.svc
        ocfg = svc.cfg.offer
        if req.payout != renter:
            raise Refused("bad_request", "payout must be the renter's own address (the escrow refunds its account)")
        total = sum(r.size for r in req.spec.inputs)
        if total > svc.market.max_input_bytes:
            raise Refused("too_large", f"inputs of {total} bytes exceed this provider's {svc.market.max_input_bytes}")
        try:
            req.spec.decode_params()
        except (WireError, JobError) as exc:
            raise Refused("bad_request", f"spec params: {exc}") from None
        if req.max_price < ocfg.price:
            raise Refused("price", f"price is {ocfg.price} per device-hour, above the request's {req.max_price}")
        if req.max_s > ocfg.max_s:
            raise Refused("bad_request", f"max_s {req.max_s} above this provider's {ocfg.max_s}")
        if req.arbiter not in svc.params.arbiter_keys or req.arbiter in (renter, svc.identity.address):
            raise Refused("bad_request", f"arbiter {req.arbiter} is not one of the network's arbiters")
        try:
            ok = await svc._stake_ok()
        except Exception as exc:
            raise Refused("internal", f"cannot read stake from chain: {type(exc).__name__}") from None
        if not ok:
            raise Refused("stake", "this provider's stake is below the network's requirement")

    async def _verify_funding(self, a: escrow.Agreement) -> None:
        """The renter says it funded; believe the chain only (poll briefly: its RPC may lag ours)."""
        deadline = trio.current_time() + self.svc.market.fund_timeout_s
        while True:
            try:
                await escrow.verify_funding(self.svc.client, a)
                return
            except escrow.FundingError:
                if trio.current_time() > deadline:
                    raise
            except Exception as exc:  # RPC trouble: keep trying until the deadline
                if trio.current_time() > deadline:
                    raise escrow.FundingError(f"cannot check the escrow: {exc}") from None
            await trio.sleep(0.2)

    # -- running --

    async def _run(self, req: JobRequest, quote: JobQuote, inputs: JobFiles) -> None:
        svc, js, a = self.svc, self.js, self.agreement
        assert a is not None and self.slot is not None
        svc.agreements.update(a.job_id, state="running")
        svc.stats.started += 1
        started = time.monotonic()
        self.last_voucher_at = started
        fraction = [0.0]
        await js.send(JobProgress(job_id=a.job_id, state="started"))
        self.abort_reason = ""
        # outputs go to the renter part by part while the job runs, if it asked for that
        sender = PartSender(js, svc.identity, a.job_id, svc.market.request_timeout_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, nursery.cancel_scope)
            nursery.start_soon(self._heartbeat, started, fraction)
            nursery.start_soon(self._watchdog, quote.voucher_interval_s, nursery.cancel_scope)
            nursery.start_soon(sender.run)
            result = await svc.run_job(req.spec, inputs, self.slot, float(req.max_s),
                                       lambda f: fraction.__setitem__(0, max(0.0, min(1.0, f))),
                                       sender.on_part if req.stream_outputs else None)
            t_out = time.monotonic()
            status = result.status if result.status in ("ok", "timeout", "oom", "cpu_exceeded", "crashed",
                                                        "bad_input") else "crashed"
            message = result.message
            await sender.finish()
            done = sender.complete(list(result.outputs)) if result.ok else ([], [])
            if done is None:
                status, message, done = "crashed", "the job's outputs do not fit the parts it sent", ([], [])
            refs, rest = done
            msg = JobResultMsg(job_id=a.job_id, status=status, outputs=refs,
                               seconds=float(result.seconds or result.wall_s), message=message[:512])
            svc.agreements.update(a.job_id, state="done", seconds=time.monotonic() - started,
                                  verdict=status)
            # the result and its blobs go out as one run of frames: a heartbeat or voucher_ack slipped in between
            # would be read as a blob chunk by the renter
            tail = sum(map(len, rest))
            async with js._send_lock:
                with trio.fail_after(transfer_deadline(svc.market.request_timeout_s, tail)):
                    await js.fs.send_message(msg, svc.identity)
                    for part in rest:
                        await send_blob(js.fs, part)
            svc.stats.completed += 1
            log.info("job %s: %s after %.2f s (runner %.2f s); %d output bytes, %d of them after the job, in "
                     "%.2f s", a.job_id.hex()[:8], status, t_out - started, result.seconds,
                     sum(ref.size for ref in refs), tail, time.monotonic() - t_out)
            # the verdict, then (if ok) the final voucher
            with trio.move_on_after(svc.market.request_timeout_s + sum(ref.size for ref in refs) / (4 << 20)):
                await self.verdict_event.wait()
                if self.verdict is not None and self.verdict.ok and self.verdict.final > self.cumulative:
                    await self.final_event.wait()
            nursery.cancel_scope.cancel()
        if self.abort_reason:
            raise _Abort(self.abort_reason)

    async def _reader(self, scope: trio.CancelScope) -> None:
        """Vouchers (and then the verdict) from the renter; a broken stream or frame ends the job."""
        svc, js, a = self.svc, self.js, self.agreement
        assert a is not None
        while True:
            try:
                signed = await js.recv((escrow.Voucher, JobVerdict), timeout_s=10**6)
            except (ProtocolError, trio.TooSlowError) as exc:
                svc.stats.bad_frames += 1
                await js.refuse(a.job_id, "bad_request", f"{type(exc).__name__}: {exc}")
                self.abort_reason = f"bad frame from the renter: {exc}"
                scope.cancel()
                return
            except Exception as exc:
                self.abort_reason = f"renter stream closed: {type(exc).__name__}"
                scope.cancel()
                return
            msg = signed.message
            if isinstance(msg, JobVerdict):
                if msg.job_id != a.job_id:
                    continue
                self.verdict = msg
                self.verdict_event.set()
                if not msg.ok:
                    log.warning("renter rejected job %s: %s", a.job_id.hex()[:8], msg.reason)
                    self.abort_reason = f"the renter rejected the result: {msg.reason}"
                    scope.cancel()
                    return
                continue
            error = ""
            try:
                self.cumulative = escrow.accept_voucher(svc.store, msg)  # stored (fsync) before the ack
                self.last_voucher_at = time.monotonic()
                svc.agreements.update(a.job_id, cumulative=self.cumulative)
            except escrow.EscrowError as exc:
                error = f"{type(exc).__name__}: {exc}"[:256]
                log.info("job %s: voucher refused: %s", a.job_id.hex()[:8], error)
            await js.send(VoucherAck(job_id=a.job_id, cumulative=self.cumulative, error=error))
            if not error and self.verdict is not None and self.verdict.ok and self.cumulative >= self.verdict.final:
                self.final_event.set()

    async def _heartbeat(self, started: float, fraction: list[float]) -> None:
        a = self.agreement
        assert a is not None
        interval = max(min(self.svc.market.voucher_interval_s, 5.0), 0.2)
        while True:
            await trio.sleep(interval)
            await self.js.send(JobProgress(job_id=a.job_id, state="running", fraction=fraction[0],
                                           elapsed_s=time.monotonic() - started))

    async def _watchdog(self, interval: float, scope: trio.CancelScope) -> None:
        """A renter that stops paying while the job runs gets the job stopped (it keeps what it paid for)."""
        limit = 3 * interval + self.svc.market.request_timeout_s
        while True:
            await trio.sleep(min(interval, 1.0))
            if self.verdict is None and time.monotonic() - self.last_voucher_at > limit:
                self.abort_reason = f"no voucher for {limit:g} s: the renter stopped paying"
                scope.cancel()
                return

    # -- the end, always --

    async def finish(self) -> None:
        svc, a = self.svc, self.agreement
        try:
            if a is not None and self.funded:
                sig = await svc._settle(a.job_id)
                ch = escrow.channel(svc.store, a.job_id)
                if sig is None and ch.voucher is None:
                    svc.agreements.update(a.job_id, state="closed", detail="no voucher: the renter refunds with the "
                                                                              "arbiter after the deadline")
                with trio.move_on_after(3):
                    try:
                        await self.js.send(JobSettled(job_id=a.job_id, signature=sig or "", cumulative=ch.cumulative,
                                                      ok=sig is not None, detail="" if sig else "settlement pending"))
                    except Exception:
                        pass
            elif a is not None:
                escrow.release_nonce(svc.store, a.job_id)
                if svc.agreements.get(a.job_id) is not None:
                    svc.agreements.update(a.job_id, state="failed", detail="not funded")
        finally:
            svc._release(self.slot)


LATEST_ATTESTATIONS_SCAN = 256  # newest passed attestations read per offer: the history grows every epoch


def latest_attestations(store: Store, peer_id: str, devices: int) -> dict[int, Any]:
    """device index -> the newest passed attestation (signed) of this provider the node has seen (gossip or its own).

    Runs on every offer publish, so it reads newest first and stops once each of the `devices` has one.
    """
    from ..compute.attest import Attestation
    from ..wire import open_envelope

    out: dict[int, Any] = {}
    try:
        rows = store.query("SELECT envelope FROM attestations WHERE provider = ? AND passed = 1 "
                           "ORDER BY time DESC LIMIT ?", (peer_id, LATEST_ATTESTATIONS_SCAN))
    except Exception:  # no attestation table yet (a node that never validated one)
        return out
    for row in rows:
        try:
            signed = open_envelope(bytes(row[0]), Attestation)
        except Exception:
            continue
        if len(signed.raw) <= MAX_DEVICE_ATTESTATION:
            out.setdefault(signed.message.device_index, signed)
        if len(out) >= devices:
            break
    return out


def _peek_kind(raw: bytes) -> str | None:
    """After the signature verified but the schema did not: was it an unknown job kind? (for a typed refusal)"""
    try:
        env = unpack(raw, max_size=len(raw))
        body = unpack(env["body"], max_size=len(raw))
        kind = body["spec"]["kind"]
        return kind if isinstance(kind, str) else None
    except Exception:
        return None


__all__ = ["JobService", "JobStats", "Slot", "slots_for"]
