"""The job payment channel: a renter-funded escrow settled by one transaction the renter pre-signs as vouchers.

Why this shape (DESIGN.md "Job payment = unidirectional payment channel"): a job may run for hours and be paid per
second, but chain transactions cost time and fees. So the renter locks a deposit once, then keeps sending
**vouchers** — the settlement transaction for the amount earned so far, signed by the renter only — and the
provider submits just the last one. Exactly two on-chain transactions per job (fund, settle) whatever its length,
besides the provider's one-time durable-nonce set-up per renter.

Accounts (all derivable by anyone from the agreement; seeds are in :mod:`p2pnode.chain.token`):

* **escrow multisig** — SPL multisig 2-of-3 [renter, provider, arbiter], created by the renter (seeded from the
  renter key) at the pair's first job and reused by every later job with the same provider and arbiter.
  SPL multisig accounts cannot be closed: its rent (~0.0034 SOL) is a one-time cost of the triple.
* **escrow** — a token account of the IO mint owned by that multisig, one per job (seeded from renter + job id),
  created and funded with ``deposit`` by the renter in the **fund** transaction; closed by settlement or refund,
  so its rent (~0.002 SOL) returns to the renter.
* **nonce account** — a System durable-nonce account whose authority is the provider, created by the provider once
  per renter and reused. A small pool per pair: settling a job advances its nonce and so kills every voucher built
  on the old value, so two concurrent jobs of one pair must not share one; the provider leases one per open job.

Who pays what, exactly (integers in IO base units; ``fee = cumulative * fee_bps // 10_000``, floor):

* the provider receives exactly ``cumulative`` (to its associated token account, created in the settlement if
  missing, at the provider's expense);
* the network fee ``fee`` is **burned** from the escrow (issue 3 says burned; DESIGN.md's earlier text said "to the
  treasury" — the issue wins); it is paid by the renter on top of ``cumulative``;
* the renter gets back ``deposit - cumulative - fee`` (to its associated token account) and the escrow's rent;
* a voucher is only valid if ``cumulative + fee <= deposit``;
* SOL fees: the fund transaction is paid by the renter (1 signature), the settlement by the provider as fee payer
  and nonce authority (2 signatures): 15,000 lamports per job at 5,000 lamports a signature.

The settlement (= voucher) message, built identically by both sides with ``Message.new_with_nonce``
(payer = provider, nonce authority = provider)::

    advance_nonce(nonce_account, provider)                       # added by new_with_nonce
    create_idempotent_ata(payer=provider, owner=provider, mint)
    transfer_checked(escrow -> ata(provider), cumulative, owner=multisig, signers=[renter, provider])
    burn_checked(escrow, fee, owner=multisig, signers=[renter, provider])            # if fee > 0
    transfer_checked(escrow -> ata(renter), rest, owner=multisig, signers=[renter, provider])   # if rest > 0
    close_account(escrow -> renter, owner=multisig, signers=[renter, provider])

The provider checks a voucher by rebuilding this message from its stored agreement and the claimed ``cumulative``
and comparing bytes — so amount, recipients, mint, fee, escrow, nonce and authorities are all checked at once — then
verifies the renter's signature, monotonicity and the deposit bound, and commits it to its store (fsync) before
acknowledging. Advancing the nonce at settlement makes every older voucher invalid on chain.

Refund (provider vanished): after ``agreement.deadline`` (chain clock) the renter and the arbiter co-sign a
transaction closing the escrow; the arbiter refuses before the deadline and, if the provider has presented a valid
voucher, the refund pays the provider that voucher's ``cumulative`` (and burns its fee) first.

Known limit (stated, not hidden): anyone may transfer extra IO into an escrow; then the close in a voucher fails
because the balance is not zero. The refund path (renter + arbiter) uses the escrow's actual balance and so still
works, paying the provider's best voucher; a provider whose settlement fails this way asks the arbiter for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import create_nonce_account_with_seed
from solders.transaction import Transaction

from ..errors import ProtocolError, UserError
from ..identity import verify_signature
from ..store import Store, schema
from ..wire import Record, SchemaError, bounded, message, Message as WireMessage, pack, unpack
from . import token as tk
from .multisig import MultisigError, decode_tx, encode_tx, required_signers, sign_partial, verify_present

log = logging.getLogger(__name__)

JOB_ID_LEN = 16
BPS = 10_000
ESCROW_M = 2  # 2-of-3 [renter, provider, arbiter]

# --- errors -------------------------------------------------------------------------------------------------


class EscrowError(ProtocolError):
    """A payment-channel input or state transition was refused."""


class VoucherError(EscrowError):
    """A voucher was rejected by the provider; nothing was stored."""


class VoucherMismatch(VoucherError):
    """The voucher transaction is not the settlement the agreement and amount imply (tampered or wrong)."""


class VoucherSignatureError(VoucherError):
    """The renter's signature on the voucher is missing or invalid."""


class StaleVoucher(VoucherError):
    """The voucher does not raise the cumulative amount (older or replayed)."""


class VoucherAboveDeposit(VoucherError):
    """cumulative + fee exceeds the escrowed deposit."""


class UnknownChannel(EscrowError):
    """No open channel with this job id in the store."""


class ChannelClosed(EscrowError):
    """The channel is already settled or refunded."""


class FundingError(EscrowError):
    """The escrow on chain is not what the agreement says (missing, wrong owner, mint, amount or multisig)."""


class RefundRefused(EscrowError):
    """The arbiter refused to co-sign a refund (too early, or not the expected transaction)."""


class NothingToSettle(UserError):
    """The provider holds no voucher for this job; there is nothing to submit."""


# --- the agreement ------------------------------------------------------------------------------------------


@dataclass
class Agreement(Record):
    """What renter and provider agreed on for one job's payment; every address below is derived from it."""

    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    renter: str = bounded(max_len=44)
    provider: str = bounded(max_len=44)
    arbiter: str = bounded(max_len=44)
    mint: str = bounded(max_len=44)
    deposit: int = bounded(min=1, max=2**63 - 1)
    fee_bps: int = bounded(min=0, max=BPS - 1)
    nonce_account: str = bounded(max_len=44)
    nonce: str = bounded(max_len=44)  # the durable nonce value (base58 hash) vouchers are built on
    deadline: int = bounded(min=0, max=2**63 - 1)  # unix s (chain clock): refund allowed from here

    def check(self, where: str) -> None:
        try:
            keys = [tk.pubkey(getattr(self, n)) for n in ("renter", "provider", "arbiter", "mint", "nonce_account")]
            Hash.from_string(self.nonce)
        except Exception:
            raise SchemaError(f"{where}: malformed address or nonce") from None
        if len({keys[0], keys[1], keys[2]}) != 3:
            raise SchemaError(f"{where}: renter, provider and arbiter must be three different keys")

    # derived keys (cached on first use; the dataclass is treated as immutable once built)
    def _k(self, name: str) -> Pubkey:
        cache = self.__dict__.setdefault("_keys", {})
        if name not in cache:
            cache[name] = self._derive(name)
        return cache[name]

    def _derive(self, name: str) -> Pubkey:
        if name in ("renter", "provider", "arbiter", "mint", "nonce_account"):
            return tk.pubkey(getattr(self, name))
        if name == "multisig":
            return tk.seeded_address(self.renter_key, self.multisig_seed, tk.TOKEN_PROGRAM_ID)
        if name == "escrow":
            return tk.seeded_address(self.renter_key, self.escrow_seed, tk.TOKEN_PROGRAM_ID)
        if name == "provider_ata":
            return tk.ata(self.provider_key, self.mint_key)
        if name == "renter_ata":
            return tk.ata(self.renter_key, self.mint_key)
        raise KeyError(name)

    @property
    def renter_key(self) -> Pubkey:
        return self._k("renter")

    @property
    def provider_key(self) -> Pubkey:
        return self._k("provider")

    @property
    def arbiter_key(self) -> Pubkey:
        return self._k("arbiter")

    @property
    def mint_key(self) -> Pubkey:
        return self._k("mint")

    @property
    def nonce_key(self) -> Pubkey:
        return self._k("nonce_account")

    @property
    def multisig_seed(self) -> str:
        return tk.seed_for("iogm", self.provider_key, self.arbiter_key)

    @property
    def escrow_seed(self) -> str:
        return tk.seed_for("ioge", self.job_id)

    @property
    def multisig(self) -> Pubkey:
        return self._k("multisig")

    @property
    def escrow(self) -> Pubkey:
        return self._k("escrow")

    @property
    def provider_ata(self) -> Pubkey:
        return self._k("provider_ata")

    @property
    def renter_ata(self) -> Pubkey:
        return self._k("renter_ata")

    @property
    def signers(self) -> list[Pubkey]:
        return [self.renter_key, self.provider_key, self.arbiter_key]

    def encode(self) -> bytes:
        return pack(self.to_wire())

    @classmethod
    def decode(cls, data: bytes) -> "Agreement":
        return cls.from_wire(unpack(data, max_size=4096))


def fee_of(cumulative: int, fee_bps: int) -> int:
    return cumulative * fee_bps // BPS


def split(agreement: Agreement, cumulative: int, balance: int | None = None) -> tuple[int, int, int]:
    """(to provider, burned fee, back to renter) for a payment of `cumulative` from an escrow of `balance`."""
    balance = agreement.deposit if balance is None else balance
    fee = fee_of(cumulative, agreement.fee_bps)
    rest = balance - cumulative - fee
    if cumulative < 0 or rest < 0:
        raise VoucherAboveDeposit(
            f"cumulative {cumulative} + fee {fee} exceeds the escrow's {balance} base units")
    return cumulative, fee, rest


# --- the wire message ---------------------------------------------------------------------------------------


@message("voucher", max_size=4096)
@dataclass
class Voucher(WireMessage):
    """The renter's pre-signed settlement for `cumulative`; sealed in an envelope signed by the renter."""

    job_id: bytes = bounded(exact_len=JOB_ID_LEN)
    cumulative: int = bounded(min=0, max=2**63 - 1)
    tx: bytes = bounded(max_len=1232)


# --- message builders (pure) --------------------------------------------------------------------------------


def _payout_instructions(a: Agreement, cumulative: int, fee: int, rest: int, ms_signers: list[Pubkey],
                         payer: Pubkey, create_provider_ata: bool = True) -> list:
    ixs = []
    if cumulative > 0 and create_provider_ata:
        ixs.append(tk.create_ata(payer, a.provider_key, a.mint_key))
    if cumulative > 0:
        ixs.append(tk.transfer(a.escrow, a.mint_key, a.provider_ata, a.multisig, cumulative, ms_signers))
    if fee > 0:
        ixs.append(tk.burn(a.escrow, a.mint_key, a.multisig, fee, ms_signers))
    if rest > 0:
        ixs.append(tk.transfer(a.escrow, a.mint_key, a.renter_ata, a.multisig, rest, ms_signers))
    ixs.append(tk.close(a.escrow, a.renter_key, a.multisig, ms_signers))
    return ixs


def voucher_message(a: Agreement, cumulative: int) -> Message:
    """The settlement message for `cumulative` (see the module doc); byte-identical on both sides."""
    paid, fee, rest = split(a, cumulative)
    ixs = _payout_instructions(a, paid, fee, rest, [a.renter_key, a.provider_key], a.provider_key)
    return stamp_nonce(Message.new_with_nonce(ixs, a.provider_key, a.nonce_key, a.provider_key),
                       Hash.from_string(a.nonce))


def stamp_nonce(msg: Message, nonce: Hash) -> Message:
    """Put the durable nonce value where the blockhash goes (new_with_nonce leaves it empty; signing covers it)."""
    h = msg.header
    return Message.new_with_compiled_instructions(
        h.num_required_signatures, h.num_readonly_signed_accounts, h.num_readonly_unsigned_accounts,
        list(msg.account_keys), nonce, list(msg.instructions))


def make_voucher(a: Agreement, cumulative: int, renter: Keypair) -> Voucher:
    """Renter side: the settlement for `cumulative`, signed by the renter only."""
    if renter.pubkey() != a.renter_key:
        raise EscrowError("only the agreement's renter can sign its vouchers")
    tx = sign_partial(Transaction.new_unsigned(voucher_message(a, cumulative)), renter)
    return Voucher(job_id=a.job_id, cumulative=cumulative, tx=encode_tx(tx))


_ROLES = ("advance the nonce", "create the provider's token account", "pay the provider", "burn the fee",
          "refund the renter", "close the escrow")


def _diagnose(expected: Message, got: Message) -> str:
    """Say which part of a tampered voucher differs (errors should name the thing)."""
    if got.header != expected.header or len(got.instructions) != len(expected.instructions):
        return "different signers or instruction list"
    if got.recent_blockhash != expected.recent_blockhash:
        return "built on a different nonce value"
    e_keys, g_keys = expected.account_keys, got.account_keys
    for i, (e, g) in enumerate(zip(expected.instructions, got.instructions)):
        same_prog = e_keys[e.program_id_index] == g_keys[g.program_id_index]
        same_acc = [e_keys[j] for j in e.accounts] == [g_keys[j] for j in g.accounts]
        if not (same_prog and same_acc and bytes(e.data) == bytes(g.data)):
            what = "amount" if same_prog and same_acc else "accounts (recipient, mint, escrow or authority)"
            role = _describe(expected, i)
            return f"instruction {i} ({role}) has a different {what}"
    return "account flags differ"


def _describe(msg: Message, i: int) -> str:
    cix = msg.instructions[i]
    prog = msg.account_keys[cix.program_id_index]
    data = bytes(cix.data)
    if i == 0:
        return _ROLES[0]
    if prog == tk.ASSOCIATED_TOKEN_PROGRAM_ID:
        return _ROLES[1]
    if prog == tk.TOKEN_PROGRAM_ID and data:
        return {12: "token transfer", 15: "burn the fee", 9: "close the escrow"}.get(data[0], "token instruction")
    return "instruction"


def check_voucher(a: Agreement, v: Voucher, last_cumulative: int) -> Transaction:
    """Provider side, pure: the voucher's transaction if it is exactly the settlement for `v.cumulative`.

    Order: cheap bounds, then the byte comparison, then the renter's signature (nothing unsigned is trusted).
    """
    if v.job_id != a.job_id:
        raise VoucherMismatch("voucher is for another job")
    if v.cumulative <= last_cumulative:
        raise StaleVoucher(f"cumulative {v.cumulative} does not exceed the accepted {last_cumulative}")
    split(a, v.cumulative)  # raises VoucherAboveDeposit
    try:
        tx = decode_tx(v.tx)
    except MultisigError as exc:
        raise VoucherMismatch(f"voucher transaction: {exc}") from None
    expected = voucher_message(a, v.cumulative)
    got = tx.message
    if bytes(got) != bytes(expected):
        raise VoucherMismatch(f"voucher is not the agreed settlement: {_diagnose(expected, got)}")
    signers = required_signers(got)
    sig = tx.signatures[signers.index(a.renter_key)]
    if not verify_signature(bytes(a.renter_key), bytes(got), bytes(sig)):
        raise VoucherSignatureError("renter's signature on the voucher does not verify")
    return tx


# --- fund / refund builders ---------------------------------------------------------------------------------


def fund_instructions(a: Agreement, *, create_multisig: bool, multisig_rent: int, escrow_rent: int) -> list:
    """Renter's fund transaction: (multisig once per triple) + escrow account + deposit transfer."""
    r = a.renter_key
    ixs = []
    if create_multisig:
        ixs.append(tk.create_seeded(r, r, a.multisig_seed, multisig_rent, tk.MULTISIG_LEN, tk.TOKEN_PROGRAM_ID))
        ixs.append(tk.init_multisig(a.multisig, a.signers, ESCROW_M))
    ixs.append(tk.create_seeded(r, r, a.escrow_seed, escrow_rent, tk.ACCOUNT_LEN, tk.TOKEN_PROGRAM_ID))
    ixs.append(tk.init_token_account(a.escrow, a.mint_key, a.multisig))
    ixs.append(tk.transfer(a.renter_ata, a.mint_key, a.escrow, r, a.deposit))
    return ixs


def refund_message(a: Agreement, paid: int, balance: int, blockhash: Hash) -> Message:
    """Renter + arbiter: pay the provider's best voucher `paid` (+ burn its fee), the rest of `balance` back."""
    cumulative, fee, rest = split(a, paid, balance)
    ixs = _payout_instructions(a, cumulative, fee, rest, [a.renter_key, a.arbiter_key], a.renter_key)
    return Message.new_with_blockhash(ixs, a.renter_key, blockhash)


# --- provider ledger (durable) ------------------------------------------------------------------------------

schema("escrow", """
    CREATE TABLE IF NOT EXISTS escrow_channels (
        job_id      BLOB PRIMARY KEY,
        role        TEXT NOT NULL,
        agreement   BLOB NOT NULL,
        state       TEXT NOT NULL,
        cumulative  INTEGER NOT NULL DEFAULT 0,
        voucher     BLOB,
        settle_sig  TEXT,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS escrow_nonces (
        address     TEXT PRIMARY KEY,
        provider    TEXT NOT NULL,
        renter      TEXT NOT NULL,
        seed        TEXT NOT NULL,
        leased_job  BLOB
    );
""")

OPEN, SETTLING, SETTLED, REFUNDED = "open", "settling", "settled", "refunded"


@dataclass
class Channel:
    agreement: Agreement
    role: str
    state: str
    cumulative: int
    voucher: bytes | None
    settle_sig: str | None


def _row(row: Any) -> Channel:
    return Channel(Agreement.decode(row["agreement"]), row["role"], row["state"], row["cumulative"],
                   row["voucher"], row["settle_sig"])


def channel(store: Store, job_id: bytes) -> Channel:
    rows = store.query("SELECT * FROM escrow_channels WHERE job_id = ?", (job_id,))
    if not rows:
        raise UnknownChannel(f"no payment channel for job {job_id.hex()}")
    return _row(rows[0])


def channels(store: Store, *, role: str | None = None, states: tuple[str, ...] | None = None) -> list[Channel]:
    rows = store.query("SELECT * FROM escrow_channels ORDER BY updated_at")
    out = [_row(r) for r in rows]
    return [c for c in out if (role is None or c.role == role) and (states is None or c.state in states)]


def record_agreement(store: Store, a: Agreement, role: str) -> None:
    """Persist a funded channel (idempotent for the same agreement; a different one under the same id is refused)."""
    data = a.encode()
    with store.tx() as db:
        row = db.execute("SELECT agreement FROM escrow_channels WHERE job_id = ?", (a.job_id,)).fetchone()
        if row is not None:
            if bytes(row[0]) != data:
                raise EscrowError(f"job {a.job_id.hex()} already has a different agreement")
            return
        db.execute("INSERT INTO escrow_channels(job_id, role, agreement, state, cumulative, updated_at) "
                   "VALUES(?, ?, ?, ?, 0, ?)", (a.job_id, role, data, OPEN, time.time()))


def accept_voucher(store: Store, v: Voucher) -> int:
    """Provider: check `v` against the stored agreement and commit it (fsync) BEFORE returning the new total.

    Raises a :class:`VoucherError` (nothing stored) for anything but a strictly better, exactly-formed voucher.
    """
    with store.tx() as db:
        row = db.execute("SELECT * FROM escrow_channels WHERE job_id = ?", (v.job_id,)).fetchone()
        if row is None:
            raise UnknownChannel(f"no payment channel for job {v.job_id.hex()}")
        ch = _row(row)
        if ch.role != "provider":
            raise EscrowError("vouchers are accepted by the provider's store only")
        if ch.state != OPEN:
            raise ChannelClosed(f"job {v.job_id.hex()} channel is {ch.state}; no more vouchers")
        last = ch.cumulative if ch.voucher is not None else -1
        check_voucher(ch.agreement, v, last)
        db.execute("UPDATE escrow_channels SET cumulative = ?, voucher = ?, updated_at = ? WHERE job_id = ?",
                   (v.cumulative, v.tx, time.time(), v.job_id))
    return v.cumulative


# --- chain access ---------------------------------------------------------------------------------------------


async def _account(client: Any, key: Pubkey):
    return await client.get_account(key)


async def verify_funding(client: Any, a: Agreement) -> None:
    """Provider: the escrow on chain holds `deposit` IO, owned by the 2-of-3 multisig, and the nonce is ours."""
    acc = await _account(client, a.escrow)
    if acc is None or acc.owner != tk.TOKEN_PROGRAM_ID:
        raise FundingError(f"escrow {a.escrow} does not exist (not funded yet?)")
    ta = tk.parse_token_account(acc.data)
    if ta.mint != a.mint_key or ta.owner != a.multisig:
        raise FundingError("escrow has the wrong mint or owner")
    if ta.amount != a.deposit or ta.delegate is not None or ta.close_authority is not None:
        raise FundingError(f"escrow holds {ta.amount}, expected exactly {a.deposit} with no delegate/close authority")
    ms_acc = await _account(client, a.multisig)
    if ms_acc is None or ms_acc.owner != tk.TOKEN_PROGRAM_ID:
        raise FundingError("escrow multisig does not exist")
    ms = tk.parse_multisig(ms_acc.data)
    if ms.m != ESCROW_M or tk.multisig_signers(ms) != a.signers:
        raise FundingError("escrow multisig is not 2-of-3 [renter, provider, arbiter]")
    n_acc = await _account(client, a.nonce_key)
    if n_acc is None:
        raise FundingError("nonce account does not exist")
    ns = tk.parse_nonce(n_acc.data)
    if ns.authority != a.provider_key or str(ns.nonce) != a.nonce:
        raise FundingError("nonce account authority or value differs from the agreement")


async def fund(client: Any, renter: Keypair, a: Agreement) -> str:
    """Renter: the fund transaction (one signature). Returns its signature."""
    if renter.pubkey() != a.renter_key:
        raise EscrowError("only the agreement's renter funds it")
    have_ms = await _account(client, a.multisig)
    if have_ms is not None:
        ms = tk.parse_multisig(have_ms.data)
        if ms.m != ESCROW_M or tk.multisig_signers(ms) != a.signers:
            raise FundingError("existing escrow multisig has a different configuration")
    ms_rent = await client.rent_exempt(tk.MULTISIG_LEN) if have_ms is None else 0
    esc_rent = await client.rent_exempt(tk.ACCOUNT_LEN)
    ixs = fund_instructions(a, create_multisig=have_ms is None, multisig_rent=ms_rent, escrow_rent=esc_rent)
    bh = await client.latest_blockhash()
    tx = Transaction([renter], Message.new_with_blockhash(ixs, renter.pubkey(), bh), bh)
    return str(await client.send(tx))


async def read_nonce(client: Any, nonce_account: Pubkey) -> tk.NonceState:
    acc = await _account(client, nonce_account)
    if acc is None:
        raise FundingError(f"nonce account {nonce_account} does not exist")
    return tk.parse_nonce(acc.data)


async def lease_nonce(client: Any, store: Store, provider: Keypair, renter: Pubkey, job_id: bytes,
                      *, wait_s: float = 10.0) -> tuple[Pubkey, Hash]:
    """Provider: a nonce account of the (provider, renter) pool leased to `job_id`, created if none is free.

    Returns (address, current nonce value) for the agreement.
    """
    import trio

    p = str(provider.pubkey())
    lock = _NONCE_LOCKS.setdefault((id(store), p, str(renter)), trio.Lock())
    async with lock:  # two jobs leasing at once must not both create the same next pool entry
        return await _lease_nonce_locked(client, store, provider, renter, job_id, wait_s)


_NONCE_LOCKS: dict[tuple[int, str, str], Any] = {}


async def _lease_nonce_locked(client: Any, store: Store, provider: Keypair, renter: Pubkey, job_id: bytes,
                              wait_s: float) -> tuple[Pubkey, Hash]:
    import trio

    p = str(provider.pubkey())
    with store.tx() as db:
        row = db.execute("SELECT address FROM escrow_nonces WHERE leased_job = ?", (job_id,)).fetchone()
        if row is None:
            row = db.execute("SELECT address FROM escrow_nonces WHERE provider = ? AND renter = ? AND leased_job IS NULL "
                             "ORDER BY address LIMIT 1", (p, str(renter))).fetchone()
            if row is not None:
                db.execute("UPDATE escrow_nonces SET leased_job = ? WHERE address = ?", (job_id, row[0]))
    if row is not None:
        addr = Pubkey.from_string(row[0])
        return addr, (await read_nonce(client, addr)).nonce
    # none free: create the next one of this pair's pool
    count = store.query("SELECT COUNT(*) FROM escrow_nonces WHERE provider = ? AND renter = ?", (p, str(renter)))[0][0]
    seed = tk.seed_for("iogn", renter, count)
    addr = tk.seeded_address(provider.pubkey(), seed, tk.SYSTEM_PROGRAM_ID)
    if await _account(client, addr) is None:
        rent = await client.rent_exempt(tk.NONCE_LEN)
        ixs = create_nonce_account_with_seed(provider.pubkey(), addr, provider.pubkey(), seed, provider.pubkey(), rent)
        bh = await client.latest_blockhash()
        tx = Transaction([provider], Message.new_with_blockhash(list(ixs), provider.pubkey(), bh), bh)
        await client.send(tx)
        # a nonce initialised in this slot cannot be advanced in it: wait for the next blockhash
        with trio.fail_after(wait_s):
            while await client.latest_blockhash() == bh:
                await trio.sleep(0.05)
    with store.tx() as db:
        db.execute("INSERT OR IGNORE INTO escrow_nonces(address, provider, renter, seed, leased_job) VALUES(?,?,?,?,?)",
                   (str(addr), p, str(renter), seed, job_id))
    return addr, (await read_nonce(client, addr)).nonce


def release_nonce(store: Store, job_id: bytes) -> None:
    with store.tx() as db:
        db.execute("UPDATE escrow_nonces SET leased_job = NULL WHERE leased_job = ?", (job_id,))


async def settle(client: Any, store: Store, provider: Keypair, job_id: bytes) -> str:
    """Provider: co-sign and submit the latest voucher; idempotent across crashes and retries.

    The transaction and its signature are committed as 'settling' before sending, so a crash or an RPC outage
    leaves everything needed on disk; calling again (or :func:`settle_pending` after a restart) finishes it.
    """
    ch = channel(store, job_id)
    if ch.state in (SETTLED, REFUNDED):
        raise ChannelClosed(f"job {job_id.hex()} is already {ch.state}")
    if ch.voucher is None:
        raise NothingToSettle(f"no voucher for job {job_id.hex()}; nothing to settle")
    tx = sign_partial(decode_tx(ch.voucher), provider)
    verify_present(tx)
    sig = str(tx.signatures[0])
    if ch.state != SETTLING:
        with store.tx() as db:
            db.execute("UPDATE escrow_channels SET state = ?, settle_sig = ?, updated_at = ? WHERE job_id = ?",
                       (SETTLING, sig, time.time(), job_id))
    elif await _landed(client, ch.settle_sig):
        return _mark(store, job_id, SETTLED, ch.settle_sig)
    try:
        await client.send(tx)
    except Exception:
        # it may have landed before the error (e.g. the confirm poll timed out, or the RPC died after accepting)
        if await _landed(client, sig, quiet=True):
            return _mark(store, job_id, SETTLED, sig)
        raise
    return _mark(store, job_id, SETTLED, sig)


async def _landed(client: Any, sig: str | None, quiet: bool = False) -> bool:
    if not sig:
        return False
    try:
        return bool(await client.signature_succeeded(sig))
    except Exception:
        if quiet:
            return False
        raise


def _mark(store: Store, job_id: bytes, state: str, sig: str | None) -> str:
    with store.tx() as db:
        db.execute("UPDATE escrow_channels SET state = ?, settle_sig = ?, updated_at = ? WHERE job_id = ?",
                   (state, sig, time.time(), job_id))
        db.execute("UPDATE escrow_nonces SET leased_job = NULL WHERE leased_job = ?", (job_id,))
    return sig or ""


def mark_refunded(store: Store, job_id: bytes) -> None:
    """Provider: the escrow was closed by the renter's refund with the arbiter (which paid our latest voucher, or
    the arbiter would not have co-signed); stop trying to settle it."""
    _mark(store, job_id, REFUNDED, None)


async def settle_pending(client: Any, store: Store, provider: Keypair) -> list[tuple[bytes, str | Exception]]:
    """Restart path: settle every provider channel on disk that holds a voucher and is not finished."""
    out: list[tuple[bytes, str | Exception]] = []
    for ch in channels(store, role="provider", states=(OPEN, SETTLING)):
        if ch.voucher is None:
            continue
        try:
            out.append((ch.agreement.job_id, await settle(client, store, provider, ch.agreement.job_id)))
        except Exception as exc:  # one stuck channel must not stop the others; reported to the caller
            log.warning("settling job %s failed: %s", ch.agreement.job_id.hex(), exc)
            out.append((ch.agreement.job_id, exc))
    return out


# --- refund (renter + arbiter) --------------------------------------------------------------------------------


async def escrow_balance(client: Any, a: Agreement) -> int:
    acc = await _account(client, a.escrow)
    if acc is None:
        raise ChannelClosed(f"escrow {a.escrow} is closed (settled or refunded)")
    return tk.parse_token_account(acc.data).amount


async def arbiter_cosign_refund(client: Any, arbiter: Keypair, a: Agreement, tx_bytes: bytes,
                                best_voucher: Voucher | None = None) -> bytes:
    """Arbiter side: co-sign the renter's refund only after the deadline and only if it pays the provider's best
    valid voucher (if one was presented) and returns the rest of the escrow's actual balance to the renter."""
    if arbiter.pubkey() != a.arbiter_key:
        raise RefundRefused("this key is not the agreement's arbiter")
    now = await client.unix_time()
    if now < a.deadline:
        raise RefundRefused(f"refund refused: the agreement's deadline is in {a.deadline - now} s")
    paid = 0
    if best_voucher is not None:
        check_voucher(a, best_voucher, -1)
        paid = best_voucher.cumulative
    try:
        tx = decode_tx(tx_bytes)
    except MultisigError as exc:
        raise RefundRefused(f"refund transaction: {exc}") from None
    balance = await escrow_balance(client, a)
    expected = refund_message(a, paid, balance, tx.message.recent_blockhash)
    if bytes(tx.message) != bytes(expected):
        raise RefundRefused(f"refund transaction is not the expected one: {_diagnose(expected, tx.message)}")
    verify_present(tx)
    return encode_tx(sign_partial(tx, arbiter))


async def refund(client: Any, renter: Keypair, a: Agreement, cosign: Callable[[bytes], Awaitable[bytes]],
                 paid: int = 0) -> str:
    """Renter: build the refund (paying `paid` to the provider as the arbiter requires), get the arbiter's
    co-signature through `cosign` (a network call in the node; a library call in tests), submit it."""
    balance = await escrow_balance(client, a)
    bh = await client.latest_blockhash()
    tx = sign_partial(Transaction.new_unsigned(refund_message(a, paid, balance, bh)), renter)
    signed = decode_tx(await cosign(encode_tx(tx)))
    if bytes(signed.message) != bytes(tx.message):
        raise RefundRefused("the arbiter returned a different transaction")
    verify_present(signed)
    return str(await client.send(signed))
