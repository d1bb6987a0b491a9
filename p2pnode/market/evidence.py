"""Verification-failure evidence, the arbiter's duties, and the operators' quorum slash.

**Evidence** (``job_evidence``, signed by the renter) carries what makes a wrong result provable by anyone with
numpy: the provider-signed ``job_quote`` (it binds the provider to the job id and the spec's sha256), the
provider-signed ``job_result`` (it binds the provider to the output hashes), the spec and the input and output
bytes. :func:`check_evidence` re-checks every signature and hash and re-runs the job kind's verifier; only a
result that fails it is proof. Its id is ``sha256(quote envelope || result envelope)`` — the provider's own
statements — so one wrong result is slashed once however many times (or by whom) it is reported.

The renter sends it straight to the agreement's arbiter on ``/iog/arbiter/1.0.0`` and gossips it on
``/iog/evidence/1`` (when it fits the gossip limit) so every operator and provider can see it.

**Arbiter protocol** ``/iog/arbiter/1.0.0`` (one request and one ``arbiter_reply`` per stream):

* ``refund_request`` {quote, tx, voucher}: the renter's refund transaction for an escrow whose provider vanished;
  the arbiter co-signs only if the quote is provider-signed and names it, the requester is the renter, the chain
  clock is past the deadline, and the transaction pays the presented voucher (``chain.escrow``);
* ``job_evidence``: the arbiter checks it and, if proven, slashes ``market.slash_bps`` of the provider's stake
  with the operators' quorum (evidence hash in the memo);
* ``slash_request`` {evidence, tx, amount}: an operator asks another to co-sign a slash; the co-signer re-checks
  the evidence itself before signing (``chain.stake.cosign_slash`` checks the transaction).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from ..chain import escrow
from ..chain.multisig import decode_tx
from ..compute.blobs import BlobRef
from ..compute.jobs import Data, JobSpec, check_inputs, verify
from ..errors import ProtocolError
from ..identity import Identity, peer_id_from_public_key, solana_address
from ..net.gossip import GossipMessage, TopicValidator
from ..store import Store, schema
from ..wire import (KiB, MiB, FramedStream, Message, Signed, bounded, message, open_envelope, seal)
from .negotiation import JobQuote, JobResultMsg, spec_digest

log = logging.getLogger(__name__)

ARBITER_PROTOCOL = "/iog/arbiter/1.0.0"
EVIDENCE_TOPIC = "/iog/evidence/1"
MAX_EVIDENCE = 1 * MiB
# One yamux frame: a ~256 KiB evidence message once reached a peer as an undecodable pubsub RPC under load (cause in
# py-libp2p not pinned down). Gossip is for everyone's information; the arbiter gets evidence of any size directly.
MAX_GOSSIP_EVIDENCE = 60 * KiB
ARBITER_TIMEOUT_S = 60.0


class EvidenceError(ProtocolError):
    """Evidence that does not prove a wrong result (bad signature, mismatched hashes, or the result verifies)."""


class ArbiterRefused(ProtocolError):
    """The arbiter (or a co-signing operator) said no; the message says why."""


def address_key(address: str) -> bytes:
    from ..chain import token as tk

    return bytes(tk.pubkey(address))


@message("job_evidence", max_size=MAX_EVIDENCE)
@dataclass(frozen=True)
class Evidence(Message):
    quote: bytes = bounded(max_len=8 * KiB)  # the provider-signed job_quote envelope
    result: bytes = bounded(max_len=8 * KiB)  # the provider-signed job_result envelope
    spec: JobSpec
    inputs: list[bytes] = bounded(max_len=16)
    outputs: list[bytes] = bounded(max_len=16)
    reason: str = bounded(max_len=512, default="")


@message("refund_request", max_size=16 * KiB)
@dataclass(frozen=True)
class RefundRequest(Message):
    quote: bytes = bounded(max_len=8 * KiB)
    tx: bytes = bounded(max_len=1232)
    voucher: bytes = bounded(max_len=4 * KiB, default=b"")  # the renter-signed voucher envelope it last sent


@message("slash_request", max_size=MAX_EVIDENCE + 4 * KiB)
@dataclass(frozen=True)
class SlashRequest(Message):
    evidence: bytes = bounded(max_len=MAX_EVIDENCE)
    tx: bytes = bounded(max_len=1232)
    amount: int = bounded(min=1, max=2**63 - 1)


@message("arbiter_reply", max_size=4 * KiB)
@dataclass(frozen=True)
class ArbiterReply(Message):
    ok: bool = False
    tx: bytes = bounded(max_len=1232, default=b"")
    detail: str = bounded(max_len=512, default="")


@dataclass(frozen=True)
class Proven:
    """Checked evidence: who cheated on which job, and the id the slash memo carries."""

    evidence_id: bytes
    provider: str
    job_id: bytes
    arbiter: str
    renter: str
    reason: str


def evidence_id(quote_raw: bytes, result_raw: bytes) -> bytes:
    return hashlib.sha256(quote_raw + result_raw).digest()


def check_structure(signed: Signed[Evidence]) -> tuple[JobQuote, JobResultMsg, str]:
    """Cheap checks (signatures, ids, hashes) — what a gossip validator can afford. Returns (quote, result, provider)."""
    ev = signed.message
    q = open_envelope(ev.quote, JobQuote)
    res = open_envelope(ev.result, JobResultMsg)
    a = q.message.agreement
    provider = solana_address(q.signer)
    if provider != a.provider or res.signer != q.signer:
        raise EvidenceError("quote and result are not both signed by the agreement's provider")
    if solana_address(signed.signer) != a.renter:
        raise EvidenceError("evidence is not signed by the agreement's renter")
    if res.message.job_id != a.job_id:
        raise EvidenceError("the result is for another job")
    if res.message.status != "ok":
        raise EvidenceError(f"the provider reported {res.message.status}, not a result: nothing to prove")
    if spec_digest(ev.spec) != q.message.spec_sha256:
        raise EvidenceError("the spec is not the one the provider quoted")
    if len(ev.outputs) != len(res.message.outputs):
        raise EvidenceError("output count differs from the provider's result")
    for ref, data in zip(res.message.outputs, ev.outputs):
        if BlobRef.of(data) != ref:
            raise EvidenceError("an output does not match the hash the provider signed")
    try:
        check_inputs(ev.spec, ev.inputs)
    except ProtocolError as exc:
        raise EvidenceError(f"inputs do not match the spec: {exc}") from None
    return q.message, res.message, provider


def check_evidence(raw: bytes) -> Proven:
    """Full check: structure, then the job kind's verifier must reject the provider's outputs."""
    signed = open_envelope(raw, Evidence)
    q, res, provider = check_structure(signed)
    ev = signed.message
    verdict = verify(ev.spec, ev.inputs, ev.outputs)
    if verdict.ok:
        raise EvidenceError(f"the result verifies ({verdict.reason}): no proof of a wrong result")
    return Proven(evidence_id(ev.quote, ev.result), provider, q.agreement.job_id, q.agreement.arbiter,
                  q.agreement.renter, verdict.reason)


class EvidenceTopic(TopicValidator):
    """``/iog/evidence/1``: accept only well-formed, correctly signed evidence (the verifier runs later, off-loop)."""

    topic = EVIDENCE_TOPIC
    max_size = MAX_GOSSIP_EVIDENCE

    def __init__(self, params: Any) -> None:
        self.params = params

    def validate(self, msg: GossipMessage) -> Signed[Evidence]:
        signed = open_envelope(msg.data, Evidence, max_size=MAX_GOSSIP_EVIDENCE)
        q, _, _ = check_structure(signed)
        if q.agreement.mint != self.params.mint:
            raise EvidenceError("evidence from another network (mint differs)")
        return signed


# --- renter side ----------------------------------------------------------------------------------------------


async def _dial_key(host: Any, address: str) -> Any:
    from libp2p.peer.id import ID

    pid = ID.from_base58(peer_id_from_public_key(address_key(address)))
    return pid


async def _ask(host: Any, identity: Identity, operator: str, msg: Message, timeout_s: float) -> ArbiterReply:
    pid = await _dial_key(host, operator)
    with trio.fail_after(timeout_s):
        fs = FramedStream(await host.new_stream(pid, [ARBITER_PROTOCOL]))
        try:
            await fs.send_message(msg, identity)
            reply = await fs.receive_message(ArbiterReply)
        finally:
            await fs.close()
    if reply.signer != address_key(operator):
        raise ArbiterRefused("the reply is not signed by the operator we asked")
    return reply.message


async def request_refund(host: Any, identity: Identity, quote_raw: bytes, tx: bytes, voucher: Any,
                         *, timeout_s: float = 30.0) -> bytes:
    """Renter: ask the agreement's arbiter to co-sign the refund transaction; returns the co-signed transaction."""
    q = open_envelope(quote_raw, JobQuote).message
    v_raw = seal(voucher, identity) if voucher is not None else b""
    reply = await _ask(host, identity, q.agreement.arbiter, RefundRequest(quote=quote_raw, tx=tx, voucher=v_raw),
                       timeout_s)
    if not reply.ok:
        raise ArbiterRefused(f"arbiter refused the refund: {reply.detail}")
    return reply.tx


async def submit_evidence(renter: Any, quote_raw: bytes, result_raw: bytes, spec: JobSpec, inputs: list[Data],
                          outputs: list[Data], reason: str) -> ArbiterReply:
    """Renter: sign the evidence, gossip it (if small enough) and hand it to the agreement's arbiter."""
    ev = Evidence(quote=quote_raw, result=result_raw, spec=spec, inputs=[bytes(d) for d in inputs],
                  outputs=[bytes(d) for d in outputs],
                  reason=reason[:512])
    raw = seal(ev, renter.identity)
    if len(raw) <= MAX_GOSSIP_EVIDENCE:
        try:
            await renter.light.net.gossip.publish(EVIDENCE_TOPIC, raw)
        except Exception as exc:
            log.info("evidence gossip failed: %s", exc)
    q = open_envelope(quote_raw, JobQuote).message
    reply = await _ask(renter.light.net.host, renter.identity, q.agreement.arbiter, ev, ARBITER_TIMEOUT_S)
    renter.progress("verify", f"arbiter: {'slashed' if reply.ok else 'refused'} ({reply.detail})")
    return reply


# --- operator side --------------------------------------------------------------------------------------------

schema("market_evidence", """
    CREATE TABLE IF NOT EXISTS market_evidence (
        evidence_id BLOB PRIMARY KEY,
        provider    TEXT NOT NULL,
        job_id      BLOB NOT NULL,
        state       TEXT NOT NULL,
        amount      INTEGER NOT NULL DEFAULT 0,
        slash_sig   TEXT,
        detail      TEXT NOT NULL DEFAULT '',
        updated_at  REAL NOT NULL
    );
""")


class ArbiterService:
    """An operator's arbiter and slashing duties; ``await nursery.start(service.run, host)``."""

    def __init__(self, identity: Identity, store: Store, params: Any, client: Any, *, slash_bps: int = 1000,
                 gossip: Any = None) -> None:
        self.identity = identity
        self.keypair = identity.solana_keypair()
        self.store = store
        self.params = params
        self.store.ensure_schemas()  # tables registered by modules imported after the store opened
        self.client = client
        self.slash_bps = slash_bps
        self.gossip = gossip
        self.host: Any = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self.refunds = 0
        self.slashes = 0
        self.refused = 0

    async def run(self, host: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.host = host
        from ..net.host import handing_to

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            host.set_stream_handler(ARBITER_PROTOCOL, handing_to(nursery, self._serve))
            if self.gossip is not None:
                await self.gossip.add_topic(EvidenceTopic(self.params), self._on_gossip)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _serve(self, stream: Any) -> None:
        fs = FramedStream(stream)
        try:
            with trio.fail_after(ARBITER_TIMEOUT_S):
                signed = await fs.receive_message((RefundRequest, Evidence, SlashRequest), max_size=MAX_EVIDENCE + 8 * KiB)
                try:
                    reply = await self._dispatch(signed)
                except (ProtocolError, escrow.EscrowError) as exc:
                    self.refused += 1
                    log.info("arbiter refused %s: %s", signed.message.TYPE, exc)
                    reply = ArbiterReply(ok=False, detail=f"{type(exc).__name__}: {exc}"[:512])
                await fs.send_message(reply, self.identity)
        except Exception as exc:  # malformed request or the peer went away: drop it, keep serving
            log.info("arbiter stream dropped: %s: %s", type(exc).__name__, exc)
        finally:
            await fs.close()

    async def _dispatch(self, signed: Signed[Any]) -> ArbiterReply:
        msg = signed.message
        if isinstance(msg, RefundRequest):
            return await self.cosign_refund(signed)
        if isinstance(msg, Evidence):
            return await self.handle_evidence(signed.raw)
        return await self.cosign_slash_request(signed)

    async def cosign_refund(self, signed: Signed[RefundRequest]) -> ArbiterReply:
        req = signed.message
        q = open_envelope(req.quote, JobQuote)
        a = q.message.agreement
        if solana_address(q.signer) != a.provider:
            raise ArbiterRefused("the quote is not signed by the agreement's provider")
        if a.arbiter != self.identity.address:
            raise ArbiterRefused("this operator is not the agreement's arbiter")
        if solana_address(signed.signer) != a.renter:
            raise ArbiterRefused("only the agreement's renter may ask for its refund")
        best = None
        if req.voucher:
            best = open_envelope(req.voucher, escrow.Voucher).message
        tx = await escrow.arbiter_cosign_refund(self.client, self.keypair, a, req.tx, best)
        self.refunds += 1
        return ArbiterReply(ok=True, tx=tx, detail="co-signed")

    async def _on_gossip(self, signed: Signed[Evidence], msg: GossipMessage) -> None:
        q = open_envelope(signed.message.quote, JobQuote).message
        if q.agreement.arbiter == self.identity.address and self._nursery is not None:
            self._nursery.start_soon(self._handle_quietly, signed.raw)

    async def _handle_quietly(self, raw: bytes) -> None:
        try:
            await self.handle_evidence(raw)
        except Exception as exc:
            log.info("gossiped evidence not acted on: %s", exc)

    async def handle_evidence(self, raw: bytes) -> ArbiterReply:
        """Check, then slash with the quorum — once per evidence id, whoever reports it and however often."""
        proven = await trio.to_thread.run_sync(check_evidence, raw)
        if proven.arbiter != self.identity.address:
            raise ArbiterRefused("this operator is not the agreement's arbiter")
        async with self._lock:
            rows = self.store.query("SELECT state, slash_sig, amount FROM market_evidence WHERE evidence_id = ?",
                                    (proven.evidence_id,))
            if rows and rows[0]["state"] == "slashed":
                return ArbiterReply(ok=True, detail=f"already slashed {rows[0]['amount']} ({rows[0]['slash_sig']})")
            from ..chain.stake import build_slash, cosign_slash, stake_of

            stake = await stake_of(self.client, self.params, proven.provider)
            amount = stake * self.slash_bps // 10_000
            with self.store.tx() as db:
                db.execute("INSERT INTO market_evidence(evidence_id, provider, job_id, state, amount, detail, updated_at) "
                           "VALUES(?,?,?,?,?,?,?) ON CONFLICT(evidence_id) DO UPDATE SET state = excluded.state, "
                           "amount = excluded.amount, updated_at = excluded.updated_at",
                           (proven.evidence_id, proven.provider, proven.job_id, "proven", amount, proven.reason[:500],
                            time.time()))
            if amount <= 0:
                return ArbiterReply(ok=False, detail="proven, but the provider has no stake to slash")
            ops = await self._quorum()
            tx = await build_slash(self.client, self.params, proven.provider, amount, proven.evidence_id,
                                   [k for k in ops])
            tx = cosign_slash(self.keypair, self.params, proven.provider, amount, proven.evidence_id, tx)
            for op in ops[1:]:
                reply = await _ask(self.host, self.identity, str(op), SlashRequest(evidence=raw, tx=tx, amount=amount),
                                   ARBITER_TIMEOUT_S)
                if not reply.ok:
                    raise ArbiterRefused(f"operator {op} refused to co-sign the slash: {reply.detail}")
                tx = reply.tx
            sig = str(await self.client.send(decode_tx(tx)))
            with self.store.tx() as db:
                db.execute("UPDATE market_evidence SET state = 'slashed', slash_sig = ?, updated_at = ? "
                           "WHERE evidence_id = ?", (sig, time.time(), proven.evidence_id))
            self.slashes += 1
            log.warning("slashed %s: %d base units for job %s (%s)", proven.provider, amount, proven.job_id.hex()[:8],
                        sig)
            return ArbiterReply(ok=True, detail=f"slashed {amount} ({sig})")

    async def _quorum(self) -> list[Any]:
        """Us first (we pay the fee), then other operators we can reach, up to the threshold."""
        from libp2p.peer.id import ID

        from ..chain import token as tk

        me = self.identity.address
        others = [o for o in self.params.operators if o != me]
        connected = {p.to_base58() for p in self.host.get_connected_peers()}
        others.sort(key=lambda o: peer_id_from_public_key(address_key(o)) not in connected)
        chosen = [tk.pubkey(me)] + [tk.pubkey(o) for o in others[: self.params.threshold - 1]]
        if len(chosen) < self.params.threshold:
            raise ArbiterRefused("not enough operators for a slashing quorum")
        del ID
        return chosen

    async def cosign_slash_request(self, signed: Signed[SlashRequest]) -> ArbiterReply:
        from ..chain.stake import cosign_slash, stake_of

        req = signed.message
        if solana_address(signed.signer) not in self.params.operators:
            raise ArbiterRefused("slash requests come from operators only")
        proven = await trio.to_thread.run_sync(check_evidence, req.evidence)
        stake = await stake_of(self.client, self.params, proven.provider)
        if req.amount > stake * self.slash_bps // 10_000 or req.amount <= 0:
            raise ArbiterRefused(f"amount {req.amount} exceeds the network's slash share of the stake")
        tx = cosign_slash(self.keypair, self.params, proven.provider, req.amount, proven.evidence_id, req.tx)
        with self.store.tx() as db:
            db.execute("INSERT INTO market_evidence(evidence_id, provider, job_id, state, amount, detail, updated_at) "
                       "VALUES(?,?,?,?,?,?,?) ON CONFLICT(evidence_id) DO NOTHING",
                       (proven.evidence_id, proven.provider, proven.job_id, "cosigned", req.amount,
                        proven.reason[:500], time.time()))
        return ArbiterReply(ok=True, tx=tx, detail="co-signed")


__all__ = ["ARBITER_PROTOCOL", "ArbiterRefused", "ArbiterService", "EVIDENCE_TOPIC", "Evidence", "EvidenceError",
           "EvidenceTopic", "Proven", "check_evidence", "request_refund", "submit_evidence"]
