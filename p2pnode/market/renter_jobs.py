"""The renter: find offers, negotiate, fund, upload, pay as the job runs, verify, pay or refund — no torch.

``Renter`` is a light client (it gossips nothing but evidence and runs nothing) that holds money: its identity is
the Solana key that funds escrows and signs vouchers, and its store keeps every agreement and the latest voucher
(written before it is sent). ``rent`` tries providers in the order of :func:`~p2pnode.market.reputation.rank`;
a refusal, a time-out, a vanished provider or a wrong result moves on to the next one. Money left in an escrow by a
provider that vanished or cheated comes back through the arbiter after the agreement's deadline
(:meth:`Renter.refund_due`, also run in the background while the renter runs).

    async with Renter(cfg).running() as renter:
        outcome = await renter.rent(spec, inputs, Wanted(max_price=..., max_s=60))
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from ..chain import escrow
from ..compute.attest_service import operator_peer_ids
from ..compute.blobs import send_blob, transfer_deadline
from ..compute.jobs import Data, JobSpec, Prepared, absorb, prepare, verify
from ..config import NodeConfig
from ..errors import ProtocolError, UserError
from ..identity import Identity, public_key_from_peer_id, solana_address
from ..store import Store
from ..wire import Offer, WireError
from . import pricing
from .agreements import FINAL, Agreements
from .negotiation import (JOB_PROTOCOL, EscrowFunded, JobAccept, JobOutput, JobProgress, JobQuote, JobRequest,
                          JobResultMsg, JobSettled, JobStream, JobVerdict, NegotiationError, PeerTimeout, Refused,
                          VoucherAck, spec_digest)
from .output_parts import PartReceiver
from .reputation import Reputation, Wanted, rank

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]  # (phase, text): discovery, negotiation, upload, run, verify, payment


class NoProvider(UserError):
    """No live offer fits the request, or every provider that fit refused or failed."""


@dataclass
class Attempt:
    peer_id: str
    outcome: str  # ok | refused | failed | bad_result
    detail: str = ""


@dataclass
class RentOutcome:
    """What `rent` returns: the verified outputs and what it cost (base units), with every transaction."""

    job_id: bytes
    provider: str
    price: int
    verified: bool
    verdict: str
    outputs: list[Data]  # the received bytes, not copied again (np.frombuffer reads them; bytes() copies)
    deposit: int
    paid: int
    fee: int
    refunded: int
    fund_sig: str
    settle_sig: str
    seconds: float
    attempts: list[Attempt] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id.hex(), "provider": self.provider, "price_per_device_hour": self.price,
                "verified": self.verified, "verification": self.verdict, "seconds": round(self.seconds, 3),
                "deposit": self.deposit, "paid": self.paid, "fee_burned": self.fee, "refunded": self.refunded,
                "fund_tx": self.fund_sig, "settle_tx": self.settle_sig,
                "attempts": [a.__dict__ for a in self.attempts],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


class _JobFailed(Exception):
    def __init__(self, outcome: str, detail: str, *, funded: bool = False) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.funded = funded


class Renter:
    """The renting light client; see the module doc."""

    def __init__(self, cfg: NodeConfig, *, identity: Identity | None = None, store: Store | None = None,
                 params: Any = None, progress: Progress | None = None) -> None:
        from ..renter import LightClient

        self.cfg = cfg
        self.identity = identity or Identity.load(cfg.key_file)
        self.keypair = self.identity.solana_keypair()
        self._own_store = store is None
        self.store = store if store is not None else Store(cfg.db_file)
        if params is None:
            from ..chain.network import NetworkParams

            params = NetworkParams.load(cfg.network_file)
        self.params = params
        self.market = cfg.market
        # params + store: the light client validates and keeps /iog/attest/1 and /iog/rewards/1 too
        self.light = LightClient(cfg.net, identity=self.identity, params=params, store=self.store)
        self.store.ensure_schemas()  # the market's and escrow's tables (registered on import)
        self.agreements = Agreements(self.store)
        self.reputation = Reputation(self.store)
        self.verifiers = operator_peer_ids(params)  # whose signed attestations count as a provider's capacity
        self.progress = progress or (lambda phase, text: log.info("%s: %s", phase, text))
        self.client: Any = None
        self.evidence_topic: Any = None
        self._live: set[bytes] = set()  # jobs this process is running now (everything else on disk is past)

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def book(self):
        return self.light.book

    @asynccontextmanager
    async def running(self, *, background_refunds: bool = True) -> AsyncIterator["Renter"]:
        from ..chain.rpc import ChainClient
        from .evidence import EvidenceTopic

        try:
            async with ChainClient(self.cfg.chain.rpc_url, timeout_s=self.cfg.chain.confirm_timeout_s) as client, \
                    self.light.running():
                self.client = client
                self.evidence_topic = EvidenceTopic(self.params)
                await self.light.net.gossip.add_topic(self.evidence_topic)
                async with trio.open_nursery() as nursery:
                    if background_refunds:
                        nursery.start_soon(self._refund_loop)
                    try:
                        yield self
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self.client = None
            if self._own_store:
                self.store.close()

    async def wait_for_offers(self, want: Wanted, *, count: int = 1, timeout: float = 10.0,
                              exclude: set[str] | None = None) -> list[Offer]:
        """Join the network and wait until `count` fitting offers (not from `exclude`) are in the book, or the
        timeout; returns them best first. A provider whose devices are all busy fits again once it re-publishes."""
        def fitting(offers: list[Offer], reputation: Reputation | None = None) -> list[Offer]:
            return [o for o in rank(offers, want, reputation, self.verifiers)
                    if not exclude or o.peer_id not in exclude]

        await self.light.wait_joined(timeout)
        await self.book.wait_for(lambda b: len(fitting(b.offers())) >= count, timeout)
        return fitting(self.book.offers(), self.reputation)

    # --- renting -------------------------------------------------------------------------------------------

    async def rent(self, spec: JobSpec, inputs: list[bytes], want: Wanted, *, attempts: int = 3,
                   discover_s: float = 30.0, busy_wait_s: float = 60.0, exclude: set[str] | None = None
                   ) -> RentOutcome:
        """Run `spec` on the best fitting provider, moving on after a refusal, time-out or wrong result.

        At most `attempts` providers are tried for real (a busy refusal does not count: busy providers are asked
        again, best first, until one is free or `busy_wait_s` has passed).
        """
        self.progress("discovery", "looking for offers")
        t0 = time.perf_counter()
        candidates = await self.wait_for_offers(want, timeout=discover_s, exclude=exclude)
        if not candidates:
            from ..chain.token import format_io

            cap = "any" if want.max_price is None else f"{format_io(want.max_price)} IO/device-hour"
            raise NoProvider(f"no live offer fits (max price {cap}, gpu {want.gpu or 'any'}, min TFLOPS "
                             f"{want.min_tflops}, {want.max_s} s); check `p2pnode offers`")
        discovery_s = time.perf_counter() - t0
        self.progress("discovery", f"{len(candidates)} fitting offer(s) in {discovery_s:.2f} s")
        tried: list[Attempt] = []
        given_up: set[str] = set()  # failed for real: not asked again in this call
        busy_until = trio.current_time() + busy_wait_s
        backoff = 0.25
        while True:
            busy = 0
            for offer in candidates:
                if offer.peer_id in given_up or len(given_up) >= max(attempts, 1):
                    continue
                try:
                    outcome = await self._rent_from(offer, spec, inputs, want)
                except _JobFailed as exc:
                    tried.append(Attempt(offer.peer_id, exc.outcome, exc.detail))
                    if exc.outcome == "refused" and exc.detail.startswith("busy"):  # not held against it
                        busy += 1
                        self.progress("negotiation", f"{offer.peer_id[-8:]} is busy")
                        continue
                    self.reputation.record(offer.peer_id, {"refused": "refused", "bad_result": "bad_results"}
                                           .get(exc.outcome, "failed"))
                    given_up.add(offer.peer_id)
                    self.progress("negotiation", f"{offer.peer_id[-8:]}: {exc.outcome}: {exc.detail}; "
                                                 "trying the next")
                    continue
                self.reputation.record(offer.peer_id, "ok")
                outcome.attempts = tried + [Attempt(offer.peer_id, "ok")]
                outcome.timings["discovery"] = discovery_s  # the other timings count from the dial
                return outcome
            if not busy or trio.current_time() + backoff > busy_until:
                break
            self.progress("negotiation", f"every free provider is busy; asking again in {backoff:.2f} s")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 4.0)
            # offers change while we wait (providers re-publish when a device frees up)
            fresh = rank(self.book.offers(), want, self.reputation, self.verifiers)
            candidates = [o for o in fresh if not exclude or o.peer_id not in exclude] or candidates
        raise NoProvider("every fitting provider refused or failed: " +
                         "; ".join(f"{a.peer_id[-8:]} {a.outcome} ({a.detail})" for a in tried[-8:]))

    async def _connect(self, offer: Offer) -> Any:
        from libp2p.peer.id import ID

        from ..net.host import peer_info

        host = self.light.net.host
        pid = ID.from_base58(offer.peer_id)
        if pid in host.get_connected_peers():
            return pid
        last: Exception | None = None
        for addr in offer.addrs:
            try:
                info = peer_info(addr if "/p2p/" in addr else f"{addr}/p2p/{offer.peer_id}", what="offer address")
                if info.peer_id != pid:
                    continue
                with trio.fail_after(self.cfg.net.dial_timeout_s):
                    await host.connect(info)
                return pid
            except Exception as exc:
                last = exc
        raise _JobFailed("failed", f"cannot dial ({type(last).__name__ if last else 'no address'})")

    async def _rent_from(self, offer: Offer, spec: JobSpec, inputs: list[bytes], want: Wanted) -> RentOutcome:
        m = self.market
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pid = await self._connect(offer)
        timings["connect"] = time.perf_counter() - t0
        provider_key = public_key_from_peer_id(offer.peer_id)
        arbiter = self._choose_arbiter()
        try:
            with trio.fail_after(m.request_timeout_s):
                stream = await self.light.net.host.new_stream(pid, [JOB_PROTOCOL])
        except Exception as exc:
            raise _JobFailed("failed", f"cannot open {JOB_PROTOCOL}: {type(exc).__name__}") from None
        js = JobStream(stream, self.identity, peer_key=provider_key, timeout_s=m.request_timeout_s)
        job = _RenterJob(self, js, offer, spec, inputs, want, arbiter, timings, t0)
        try:
            return await job.run()
        except _JobFailed:
            raise
        except Refused as exc:
            raise _JobFailed("refused", f"{exc.reason}: {exc.detail}", funded=job.funded) from None
        except (PeerTimeout, trio.TooSlowError) as exc:
            raise _JobFailed("failed", f"timed out: {exc}", funded=job.funded) from None
        except (WireError, NegotiationError, ProtocolError) as exc:
            raise _JobFailed("failed", f"{type(exc).__name__}: {exc}", funded=job.funded) from None
        except Exception as exc:  # the provider's stream or connection died
            if job.funded:
                self._abandon(job, f"provider vanished: {type(exc).__name__}")
            raise _JobFailed("failed", f"stream failed: {type(exc).__name__}: {exc}", funded=job.funded) from None
        finally:
            if job.agreement is not None:
                self._live.discard(job.agreement.job_id)
            await js.close()

    def _choose_arbiter(self) -> str:
        """An arbiter we are connected to (our seed peers are operators), else the first listed."""
        keys = self.params.arbiter_keys
        connected = set(self.light.net.connected_peers())
        from ..identity import peer_id_from_public_key
        from .evidence import address_key

        for k in keys:
            if peer_id_from_public_key(address_key(k)) in connected:
                return k
        return keys[0]

    def _abandon(self, job: "_RenterJob", why: str) -> None:
        row = self.agreements.get(job.agreement.job_id) if job.agreement is not None else None
        if row is not None and row.state not in FINAL:
            self.agreements.update(row.job_id, state="abandoned", detail=why[:500])

    # --- refunds -------------------------------------------------------------------------------------------

    async def _refund_loop(self) -> None:
        while True:
            try:
                await self.refund_due()
            except Exception as exc:
                log.info("refund pass failed (retrying): %s", exc)
            await trio.sleep(5.0)

    async def refund_due(self) -> list[tuple[bytes, str]]:
        """Close the books on past jobs: `closed` once the provider settled, else (after the agreement's deadline)
        refund with the arbiter, paying the provider the latest voucher we sent. Returns what changed."""
        from .evidence import request_refund

        out = []
        rows = self.agreements.list(role="renter", states=("abandoned", "funded", "running", "done"))
        if not rows:
            return out
        now = await self.client.unix_time()
        for row in rows:
            if row.job_id in self._live:
                continue  # running in this process right now
            quote = _quote_of(row.quote)
            a = quote.agreement
            if await self.client.get_account(a.escrow) is None:
                self.agreements.update(a.job_id, state="closed", detail="escrow closed by the provider's settlement")
                out.append((a.job_id, "closed"))
                continue
            if now < a.deadline:
                continue
            voucher = _voucher_of(row)
            try:
                balance = await escrow.escrow_balance(self.client, a)
                paid = voucher.cumulative if voucher else 0
                sig = await escrow.refund(self.client, self.keypair, a,
                                          lambda tx: request_refund(self.light.net.host, self.identity, row.quote, tx,
                                                                    voucher, timeout_s=self.market.request_timeout_s),
                                          paid=paid)
            except escrow.ChannelClosed:
                self.agreements.update(a.job_id, state="closed", detail="escrow closed by the provider's settlement")
                out.append((a.job_id, "closed"))
                continue
            except Exception as exc:  # arbiter unreachable or refusing, RPC down: this row waits for the next pass
                log.warning("refund of job %s not done yet: %s: %s", a.job_id.hex()[:8], type(exc).__name__, exc)
                self.agreements.update(a.job_id, detail=f"refund pending: {type(exc).__name__}: {exc}"[:500])
                continue
            fee = escrow.fee_of(paid, a.fee_bps)
            self.agreements.update(a.job_id, state="refunded", refund_sig=sig, cumulative=paid, fee=fee,
                                   refunded=balance - paid - fee)
            self.progress("payment", f"job {a.job_id.hex()[:8]}: refunded {balance - paid - fee} with the arbiter "
                                     f"({sig})")
            out.append((a.job_id, sig))
        return out


def _quote_of(raw: bytes) -> JobQuote:
    from ..wire import open_envelope

    return open_envelope(raw, JobQuote).message


def _voucher_of(row: Any) -> escrow.Voucher | None:
    if row.voucher is None:
        return None
    a = _quote_of(row.quote).agreement
    return escrow.Voucher(job_id=a.job_id, cumulative=row.cumulative, tx=row.voucher)


class _RenterJob:
    def __init__(self, renter: Renter, js: JobStream, offer: Offer, spec: JobSpec, inputs: list[bytes], want: Wanted,
                 arbiter: str, timings: dict[str, float], t0: float) -> None:
        self.r = renter
        self.js = js
        self.offer = offer
        self.spec = spec
        self.inputs = inputs
        self.want = want
        self.arbiter = arbiter
        self.timings = timings
        self.t0 = t0
        self.agreement: escrow.Agreement | None = None
        self.quote: JobQuote | None = None
        self.funded = False
        self.cumulative = 0
        self.acked = 0
        self.fund_sig = ""

    def _mark(self, name: str) -> None:
        self.timings[name] = time.perf_counter() - self.t0

    async def run(self) -> RentOutcome:
        r, m, js, want = self.r, self.r.market, self.js, self.want
        req = JobRequest(req_id=os.urandom(16), spec=self.spec, max_price=want.max_price if want.max_price is not None
                         else self.offer.price, max_s=want.max_s, arbiter=self.arbiter, payout=r.address,
                         device=want.gpu or "", stream_outputs=True)
        r.progress("negotiation", f"asking {self.offer.peer_id[-8:]} ({self.offer.price} per device-hour)")
        await js.send(req)
        signed = await js.recv(JobQuote)
        self._mark("quote")
        quote: JobQuote = signed.message
        a = quote.agreement
        self._check_quote(req, quote)
        self.quote, self.agreement = quote, a
        r._live.add(a.job_id)
        r.agreements.create(job_id=a.job_id, role="renter", peer=self.offer.peer_id, kind=self.spec.kind,
                            price=quote.price, deposit=a.deposit, quote=signed.raw, spec=self.spec.encode())
        await js.send(JobAccept(quote=signed.raw))
        self._mark("accept")
        r.progress("negotiation", f"agreed: {quote.price} per device-hour, deposit {a.deposit}, job {a.job_id.hex()[:8]}")
        # fund: one transaction; nothing is sent to the provider until it is confirmed
        t_fund = time.perf_counter()
        try:
            self.fund_sig = await escrow.fund(r.client, r.keypair, a)
        except Exception as exc:
            # it may have landed although the confirmation failed: the chain decides
            try:
                funded = await r.client.get_account(a.escrow) is not None
            except Exception:
                funded = False
            if not funded:
                r.agreements.update(a.job_id, state="failed", detail=f"funding failed: {exc}"[:500])
                raise _JobFailed("failed", f"funding failed: {exc}") from None
            self.fund_sig = "unknown (confirmed by reading the escrow)"
        self.funded = True
        self.timings["fund_confirm"] = time.perf_counter() - t_fund
        r.agreements.update(a.job_id, state="funded", fund_sig=self.fund_sig)
        await js.send(EscrowFunded(job_id=a.job_id, signature=self.fund_sig))
        r.progress("upload", f"escrow funded ({self.fund_sig[:16]}...), sending {len(self.inputs)} input blob(s)")
        for data in self.inputs:
            async with js._send_lock:
                with trio.fail_after(transfer_deadline(m.request_timeout_s, len(data))):
                    await send_blob(js.fs, data)
        started = await js.recv(JobProgress, timeout_s=m.request_timeout_s + m.fund_timeout_s)
        if started.message.job_id != a.job_id or started.message.state != "started":
            raise NegotiationError("expected job_progress(started) for this job")
        self._mark("started")
        r.agreements.update(a.job_id, state="running")
        r.progress("run", f"job started on {quote.device.kind}:{quote.device.name[:32]}")
        prepared: list[Prepared | None] = []
        failure: Exception | None = None
        self._arrived, arrived = trio.open_memory_channel(math.inf)
        try:
            async with trio.open_nursery() as nursery:
                # the half of the check that needs no result (matmul: regenerate A, B and compute A (B R)) is done
                # while the job runs, and so is the other half for each part of the output that arrives early;
                # the secret vectors never leave this process
                nursery.start_soon(self._prepare_check, prepared)
                nursery.start_soon(self._check_parts, prepared, arrived)
                try:
                    result, outputs, seconds = await self._pay_while_running(quote)
                    self._mark("result")
                except Exception as exc:  # kept out of the nursery so it is raised as itself, not in a group
                    failure = exc
                    nursery.cancel_scope.cancel()
                finally:
                    self._arrived.close()  # the part checker finishes what has arrived and ends
            if failure is not None:
                raise failure
        except BaseException as exc:
            if not isinstance(exc, _JobFailed):
                r._abandon(self, f"provider failed mid-job: {type(exc).__name__}: {exc}")
            raise
        return await self._finish(quote, result, outputs, seconds, prepared[0] if prepared else None)

    async def _prepare_check(self, into: list) -> None:
        """Never fails the job: if this goes wrong, verify() does all of the work after the result instead."""
        t = time.perf_counter()
        try:
            into.append(await trio.to_thread.run_sync(prepare, self.spec, self.inputs, abandon_on_cancel=True))
        except Exception as exc:
            log.warning("could not prepare the check ahead (it is done after the result): %s", exc)
        self.timings["verify_ahead"] = time.perf_counter() - t

    async def _check_parts(self, prepared: list, arrived: trio.MemoryReceiveChannel) -> None:
        """Fold each output part into the check as it lands (newest per output, once the prepared half exists);
        never fails the job: verify() reads whatever was not folded in."""
        latest: dict[int, tuple[memoryview, int]] = {}
        async with arrived:
            async for index, buf, upto in arrived:
                latest[index] = (buf, upto)
                while True:  # everything queued meanwhile: only the newest count per output matters
                    try:
                        index, buf, upto = arrived.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    latest[index] = (buf, upto)
                if not prepared or prepared[0] is None:
                    continue
                try:
                    for index, (buf, upto) in latest.items():
                        await trio.to_thread.run_sync(absorb, self.spec, prepared[0], index, buf, upto)
                except Exception as exc:
                    log.warning("could not check an output part early (verify reads it): %s", exc)
                    return
                latest.clear()

    def _check_quote(self, req: JobRequest, q: JobQuote) -> None:
        r, a = self.r, q.agreement
        provider_addr = solana_address(self.js.peer_key)
        problems = []
        if q.req_id != req.req_id:
            problems.append("answers another request")
        if q.spec_sha256 != spec_digest(self.spec):
            problems.append("commits to another spec")
        if a.renter != r.address or a.provider != provider_addr or a.arbiter != self.arbiter:
            problems.append("wrong renter, provider or arbiter")
        if a.mint != r.params.mint or a.fee_bps != r.params.fee_bps:
            problems.append("wrong mint or fee")
        if q.price > req.max_price:
            problems.append(f"price {q.price} above our {req.max_price}")
        if q.max_s != req.max_s or q.min_s > req.max_s:
            problems.append("different duration")
        if a.deposit != pricing.deposit_for(q.price, q.max_s, a.fee_bps):
            problems.append("deposit does not match price x duration + fee")
        if q.expires_at < time.time():
            problems.append("already expired")
        if a.deadline > time.time() + q.max_s + 7 * 24 * 3600:
            problems.append("refund deadline unreasonably far")
        if problems:
            raise NegotiationError("quote rejected: " + "; ".join(problems))

    async def _send_voucher(self, cumulative: int) -> None:
        """Store, then send: after a crash the store says what the provider may hold."""
        a = self.agreement
        assert a is not None
        v = escrow.make_voucher(a, cumulative, self.r.keypair)
        self.r.agreements.update(a.job_id, cumulative=cumulative, voucher=v.tx,
                                 fee=escrow.fee_of(cumulative, a.fee_bps))
        self.cumulative = cumulative
        await self.js.send(v)

    async def _pay_while_running(self, q: JobQuote) -> tuple[JobResultMsg, list[bytes], float]:
        m, js = self.r.market, self.js
        started = time.monotonic()
        silence = m.request_timeout_s + 2 * q.voucher_interval_s
        hard_deadline = q.max_s + m.result_grace_s + m.request_timeout_s
        result: list[Any] = []

        errors: list[BaseException] = []

        def guarded(fn):
            async def task(scope: trio.CancelScope) -> None:
                try:
                    await fn(scope)
                except trio.Cancelled:
                    raise
                except Exception as exc:  # re-raised as itself below, not inside an ExceptionGroup
                    errors.append(exc)
                    scope.cancel()
            return task

        @guarded
        async def pay(scope: trio.CancelScope) -> None:
            while True:
                await trio.sleep(q.voucher_interval_s)
                amount = pricing.running_charge(q.price, time.monotonic() - started, q.max_s)
                if amount > self.cumulative:
                    await self._send_voucher(amount)

        parts = PartReceiver(js.fs, m.max_output_bytes, m.request_timeout_s,
                             on_part=lambda i, buf, upto: self._arrived.send_nowait((i, buf, upto)))

        @guarded
        async def listen(scope: trio.CancelScope) -> None:
            while True:
                signed = await js.recv((JobProgress, VoucherAck, JobOutput, JobResultMsg), timeout_s=silence)
                msg = signed.message
                if getattr(msg, "job_id", None) != q.agreement.job_id:
                    raise NegotiationError("frame for another job")
                if isinstance(msg, VoucherAck):
                    self.acked = max(self.acked, msg.cumulative)
                    if msg.error:
                        log.warning("provider refused a voucher: %s", msg.error)
                elif isinstance(msg, JobProgress):
                    self.r.progress("run", f"{msg.fraction * 100:.0f}% after {msg.elapsed_s:.1f} s")
                elif isinstance(msg, JobOutput):
                    if not parts.bufs:
                        self._mark("first_part")
                    await parts.receive(msg)
                else:
                    seconds = time.monotonic() - started
                    total = sum(ref.size for ref in msg.outputs)
                    if total > m.max_output_bytes:
                        raise NegotiationError(f"outputs of {total} bytes exceed our {m.max_output_bytes}")
                    # a failed job's parts are dropped: nothing more is read from this stream after its result
                    outs = await parts.finish(msg.outputs) if msg.status == "ok" else []
                    result.extend([signed, outs, seconds])
                    scope.cancel()
                    return

        with trio.fail_after(hard_deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pay, nursery.cancel_scope)
                nursery.start_soon(listen, nursery.cancel_scope)
        if errors:
            raise errors[0]
        self.result_signed = result[0]
        return result[0].message, result[1], result[2]

    async def _finish(self, q: JobQuote, res: JobResultMsg, outputs: list[Data], seconds: float,
                      prepared: Prepared | None = None) -> RentOutcome:
        r, a, js = self.r, self.agreement, self.js
        assert a is not None
        if res.status != "ok":
            await js.send(JobVerdict(job_id=a.job_id, ok=False, reason=f"job {res.status}"))
            r._abandon(self, f"provider's job {res.status}: {res.message}")
            raise _JobFailed("failed", f"job ended {res.status}: {res.message}", funded=True)
        r.progress("verify", f"checking {len(outputs)} output(s) ({sum(map(len, outputs))} bytes)")
        t_v = time.perf_counter()
        verdict = await trio.to_thread.run_sync(functools.partial(verify, self.spec, self.inputs, outputs,
                                                                  prepared=prepared))
        self.timings["verify"] = time.perf_counter() - t_v
        if not verdict.ok:
            await js.send(JobVerdict(job_id=a.job_id, ok=False, reason=verdict.reason[:512]))
            r.agreements.update(a.job_id, state="abandoned", verdict="failed: " + verdict.reason[:200],
                                detail="verification failed; refund with the arbiter after the deadline")
            r.progress("verify", f"FAILED: {verdict.reason}; stopping payment, reporting to the arbiter")
            from .evidence import submit_evidence

            try:
                await submit_evidence(r, self.quote_raw(), self.result_signed.raw, self.spec, self.inputs, outputs,
                                      verdict.reason)
            except Exception as exc:
                log.warning("evidence submission failed: %s", exc)
            raise _JobFailed("bad_result", verdict.reason, funded=True)
        final = pricing.charge(q.price, seconds, q.min_s, q.max_s)
        final = max(final, self.cumulative)
        await js.send(JobVerdict(job_id=a.job_id, ok=True, final=final, reason=verdict.reason[:512]))
        if final > self.cumulative:
            await self._send_voucher(final)
        r.agreements.update(a.job_id, state="done", verdict="ok: " + verdict.reason[:200], seconds=seconds)
        r.progress("payment", f"final voucher {final}; waiting for the provider's settlement")
        settle_sig = ""
        with trio.move_on_after(r.market.request_timeout_s + 10):
            while True:
                signed = await js.recv((VoucherAck, JobSettled, JobProgress), timeout_s=r.market.request_timeout_s + 10)
                if isinstance(signed.message, JobSettled):
                    settle_sig = signed.message.signature if signed.message.ok else ""
                    break
        fee = escrow.fee_of(final, a.fee_bps)
        refunded = a.deposit - final - fee
        if settle_sig:
            r.agreements.update(a.job_id, state="settled", settle_sig=settle_sig, refunded=refunded)
        self._mark("settled")
        return RentOutcome(job_id=a.job_id, provider=self.offer.peer_id, price=q.price, verified=True,
                           verdict=verdict.reason, outputs=outputs, deposit=a.deposit, paid=final, fee=fee,
                           refunded=refunded, fund_sig=self.fund_sig, settle_sig=settle_sig, seconds=seconds,
                           timings=self.timings)

    def quote_raw(self) -> bytes:
        row = self.r.agreements.get(self.agreement.job_id)
        return row.quote


__all__ = ["Attempt", "NoProvider", "Renter", "RentOutcome"]
