"""The embedded chain's state machine: LiteSVM plus what a validator adds around it.

LiteSVM is the real SVM runtime but only a library: it has one valid blockhash, a clock stuck at 0, no slots, no
signature status cache and no disk. This module adds those the way a validator does, so code tested here behaves
the same against devnet or mainnet:

* a slot ticks every 400 ms (``tick``): LiteSVM's blockhash is expired, the Clock sysvar gets the slot and wall time;
* blockhash age is checked by *us* against the last 150 blockhashes (LiteSVM's own check only knows the latest one,
  which would make any client that fetched a blockhash one tick earlier fail spuriously); durable-nonce transactions
  are accepted when their blockhash equals the nonce account's stored nonce, exactly like the runtime does;
* preflight = simulate first (no state change on failure), as a validator's RPC does;
* signature statuses (with ``err``) and transaction records are kept, replays are refused (AlreadyProcessed);
* every account a transaction may have written is remembered in ``dirty`` so the ledger can snapshot it (LiteSVM
  cannot enumerate its accounts).

Everything here is synchronous and single-threaded: the RPC server calls it from the trio thread only.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from solders.account import Account
from solders.address_lookup_table_account import AddressLookupTable
from solders.clock import Clock
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import TransactionErrorFieldless

SLOT_S = 0.4  # Solana's target slot time
MAX_PROCESSING_AGE = 150  # a blockhash is usable for this many slots, as on a real cluster
SLOTS_PER_EPOCH = 432_000
SIGNATURE_FEE = 5_000  # LiteSVM's default lamports per signature
_ADVANCE_NONCE = 4  # SystemInstruction::AdvanceNonceAccount
_NONCE_ACCOUNT_LEN = 80
MAX_SLOT_HASHES = 512  # the SlotHashes sysvar's length on a real cluster
MAX_STATUS_RECORDS = 500_000  # in memory; older ones stay in the ledger (if any)


class TxRejected(Exception):
    """A transaction failed before or during execution; carries the runtime error like a validator reports it."""

    def __init__(self, err: object, logs: list[str] | None = None, units: int | None = None,
                 fee: int | None = None) -> None:
        super().__init__(str(err))
        self.err = err
        self.logs = logs or []
        self.units = units
        self.fee = fee

    def sim_result(self) -> RpcSimulateTransactionResult:
        return RpcSimulateTransactionResult(err=self.err, logs=self.logs, units_consumed=self.units, fee=self.fee)


class BadTransaction(ValueError):
    """The bytes are not a sanitizable transaction (JSON-RPC answers -32602)."""


@dataclass
class TxRecord:
    """What getSignatureStatuses/getTransaction need about one processed transaction."""

    slot: int
    block_time: int
    tx: bytes  # wire bytes (empty for records of airdrops LiteSVM signed itself)
    err: object | None
    logs: list[str]
    fee: int
    units: int
    pre_balances: list[int]
    post_balances: list[int]
    durable: bool = False  # on disk (or, without a ledger, past one flush): reported as finalized

    def to_json(self) -> str:
        sim = RpcSimulateTransactionResult(err=self.err, logs=self.logs, units_consumed=self.units, fee=self.fee,
                                           pre_balances=self.pre_balances, post_balances=self.post_balances)
        return json.dumps({"slot": self.slot, "block_time": self.block_time,
                           "tx": base64.b64encode(self.tx).decode(), "sim": sim.to_json()})

    @classmethod
    def from_json(cls, raw: str) -> "TxRecord":
        d = json.loads(raw)
        sim = RpcSimulateTransactionResult.from_json(d["sim"])
        return cls(slot=d["slot"], block_time=d["block_time"], tx=base64.b64decode(d["tx"]), err=sim.err,
                   logs=list(sim.logs or []), fee=sim.fee or 0, units=sim.units_consumed or 0,
                   pre_balances=list(sim.pre_balances or []), post_balances=list(sim.post_balances or []),
                   durable=True)


@dataclass
class Snapshot:
    """State to write to the ledger in one transaction (taken on the trio thread, written off it)."""

    accounts: list[tuple[bytes, bytes | None]]
    records: list[tuple[bytes, str]]
    meta: dict[str, str]
    signatures: list[Signature] = field(default_factory=list)
    addresses: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # (address, seq, signature) index rows


MEMO_PROGRAM_IDS = (Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"),
                    Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo"))


def loaded_keys(tx: VersionedTransaction, svm: LiteSVM) -> list[Pubkey]:
    """Every account a transaction references: static keys plus all addresses loaded from lookup tables."""
    msg = tx.message
    out = list(msg.account_keys)
    for lookup in getattr(msg, "address_table_lookups", None) or []:
        acc = svm.get_account(lookup.account_key)
        if acc is None:
            continue
        try:
            addrs = list(AddressLookupTable.deserialize(bytes(acc.data)).addresses)
        except Exception:
            continue
        out.extend(addrs[i] for i in list(lookup.writable_indexes) + list(lookup.readonly_indexes) if i < len(addrs))
    return list(dict.fromkeys(out))


def memo_text(tx: VersionedTransaction) -> str | None:
    """The `memo` field of getSignaturesForAddress: "[len] text" per Memo instruction, joined by "; "."""
    keys = tx.message.account_keys
    parts = []
    for ix in tx.message.instructions:
        if ix.program_id_index < len(keys) and keys[ix.program_id_index] in MEMO_PROGRAM_IDS:
            data = bytes(ix.data)
            parts.append(f"[{len(data)}] {data.decode('utf-8', 'replace')}")
    return "; ".join(parts) if parts else None


def writable_keys(tx: VersionedTransaction, svm: LiteSVM) -> list[Pubkey]:
    """Static keys the header marks writable, plus writable addresses loaded from lookup tables."""
    msg = tx.message
    h = msg.header
    keys = list(msg.account_keys)
    n_sig = h.num_required_signatures
    out = []
    for i, key in enumerate(keys):
        if i < n_sig:
            if i < n_sig - h.num_readonly_signed_accounts:
                out.append(key)
        elif i < len(keys) - h.num_readonly_unsigned_accounts:
            out.append(key)
    for lookup in getattr(msg, "address_table_lookups", None) or []:
        acc = svm.get_account(lookup.account_key)
        if acc is None:
            continue
        try:
            table = AddressLookupTable.deserialize(bytes(acc.data))
        except Exception:  # an invalid table made the transaction fail; nothing was written through it
            continue
        addrs = list(table.addresses)
        out.extend(addrs[i] for i in lookup.writable_indexes if i < len(addrs))
    return out


class LocalChain:
    """LiteSVM with slots, a blockhash window, signature statuses, nonce checks and dirty-account tracking."""

    def __init__(self, *, dev: bool = False, start_time: float | None = None) -> None:
        self.svm = (LiteSVM().with_blockhash_check(False).with_transaction_history(0)
                    .with_log_bytes_limit(10_000))
        self.dev = dev
        self.slot = 0
        self.time_offset = 0  # seconds added to wall time (dev warp)
        self.transaction_count = 0
        self.genesis_hash = self.svm.latest_blockhash()
        self._window: OrderedDict[Hash, int] = OrderedDict()  # blockhash -> slot it was produced at
        self._window[self.genesis_hash] = 0
        self._slot_hashes: list[tuple[int, Hash]] = [(0, self.genesis_hash)]  # newest first, like the sysvar
        self.records: OrderedDict[Signature, TxRecord] = OrderedDict()
        self.dirty: set[Pubkey] = set()
        self.pending: list[Signature] = []  # records not yet durable
        self.lookup_record = None  # optional fallback (ledger) for statuses evicted from memory
        # getSignaturesForAddress: address -> [(seq, signature)] oldest first (rebuilt from the ledger on restart)
        self.by_address: dict[Pubkey, list[tuple[int, Signature]]] = {}
        self.index_seq = 0
        self._pending_index: list[tuple[bytes, int, bytes]] = []
        self._start_time = start_time
        self._set_clock()

    # ---- time -------------------------------------------------------------------------------------------------
    def unix_time(self) -> int:
        return int(time.time()) + self.time_offset

    def _set_clock(self) -> None:
        epoch = self.slot // SLOTS_PER_EPOCH
        self.svm.set_clock(Clock(self.slot, 0, epoch, epoch, self.unix_time()))

    def tick(self) -> None:
        """One slot: a new blockhash (the oldest leaves the window), SlotHashes and the clock follow."""
        self._advance()
        self._publish_slot_hashes()

    def _advance(self) -> None:
        self.svm.expire_blockhash()
        self.slot += 1
        self._window[self.svm.latest_blockhash()] = self.slot
        while len(self._window) > MAX_PROCESSING_AGE + 1:
            self._window.popitem(last=False)
        self._slot_hashes.insert(0, (self.slot, self.svm.latest_blockhash()))
        del self._slot_hashes[MAX_SLOT_HASHES:]
        self._set_clock()

    def _publish_slot_hashes(self) -> None:
        """SlotHashes must move like on a cluster: address lookup tables are created from a recent slot in it."""
        self.svm.set_slot_hashes(self._slot_hashes)

    def replay_ticks(self, slots: int) -> None:
        """After a restart: walk LiteSVM's deterministic blockhash chain to where it was, so a blockhash (and so a
        durable nonce) is never produced twice and old transactions cannot become valid again."""
        for _ in range(slots):
            self._advance()
        self._publish_slot_hashes()

    def warp_clock(self, seconds: int) -> int:
        if not self.dev:
            raise PermissionError("time warp is only enabled on a --dev localnet")
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.time_offset += seconds
        self._set_clock()
        return self.unix_time()

    # ---- blockhashes --------------------------------------------------------------------------------------------
    def latest_blockhash(self) -> tuple[Hash, int]:
        bh = self.svm.latest_blockhash()
        return bh, self.slot + MAX_PROCESSING_AGE

    def blockhash_valid(self, bh: Hash) -> bool:
        return bh in self._window

    def _nonce_of(self, tx: VersionedTransaction) -> Hash | None:
        """The stored durable nonce if `tx` is a durable-nonce transaction (first ix AdvanceNonceAccount)."""
        msg = tx.message
        ixs = msg.instructions
        if not ixs:
            return None
        ix = ixs[0]
        keys = msg.account_keys
        if ix.program_id_index >= len(keys) or keys[ix.program_id_index] != SYSTEM_PROGRAM_ID:
            return None
        data = bytes(ix.data)
        if len(data) < 4 or struct.unpack_from("<I", data)[0] != _ADVANCE_NONCE or not ix.accounts:
            return None
        idx = ix.accounts[0]
        if idx >= len(keys):
            return None
        acc = self.svm.get_account(keys[idx])
        if acc is None or acc.owner != SYSTEM_PROGRAM_ID or len(acc.data) != _NONCE_ACCOUNT_LEN:
            return None
        raw = bytes(acc.data)
        _version, state = struct.unpack_from("<II", raw)
        if state != 1:  # uninitialized
            return None
        return Hash(raw[40:72])

    def check_age(self, tx: VersionedTransaction) -> None:
        bh = tx.message.recent_blockhash
        if bh in self._window:
            return
        if self._nonce_of(tx) == bh:
            return
        raise TxRejected(TransactionErrorFieldless.BlockhashNotFound)

    # ---- transactions -------------------------------------------------------------------------------------------
    @staticmethod
    def decode(raw: bytes) -> VersionedTransaction:
        try:
            tx = VersionedTransaction.from_bytes(raw)
        except Exception as exc:
            raise BadTransaction(f"failed to deserialize transaction: {exc}") from None
        if not tx.signatures:
            raise BadTransaction("transaction has no signatures")
        if len(tx.signatures) != tx.message.header.num_required_signatures:
            raise BadTransaction("transaction signature count does not match its header")
        return tx

    def status(self, sig: Signature) -> TxRecord | None:
        rec = self.records.get(sig)
        if rec is None and self.lookup_record is not None:
            rec = self.lookup_record(sig)
        return rec

    def simulate(self, tx: VersionedTransaction, *, check_age: bool = True) -> RpcSimulateTransactionResult:
        try:
            if check_age:
                self.check_age(tx)
        except TxRejected as rej:
            return rej.sim_result()
        res = self.svm.simulate_transaction(tx)
        if isinstance(res, FailedTransactionMetadata):
            meta = res.meta()
            return RpcSimulateTransactionResult(err=res.err(), logs=meta.logs(),
                                                units_consumed=meta.compute_units_consumed(), fee=meta.fee())
        meta = res.meta()
        return RpcSimulateTransactionResult(err=None, logs=meta.logs(), units_consumed=meta.compute_units_consumed(),
                                            fee=meta.fee(), return_data=meta.return_data())

    def send(self, tx: VersionedTransaction, raw: bytes, *, preflight: bool = True) -> Signature:
        """Execute like a validator: preflight failures raise TxRejected with no state change; a transaction that
        passes preflight (or skips it) lands in the slot and its status carries ``err`` if execution failed.
        With preflight skipped, a transaction with an unknown blockhash is dropped (the signature is returned and
        never gets a status), as on a real cluster."""
        sig = tx.signatures[0]
        if self.status(sig) is not None:
            if preflight:
                raise TxRejected(TransactionErrorFieldless.AlreadyProcessed)
            return sig
        try:
            self.check_age(tx)
        except TxRejected:
            if preflight:
                raise
            return sig
        svm = self.svm
        keys = list(tx.message.account_keys)
        writable = writable_keys(tx, svm)
        pre = [svm.get_balance(k) or 0 for k in keys]
        # Preflight is this one execution, undone if it fails: LiteSVM executes exactly what simulate_transaction
        # would (same runtime, same state, nothing runs in between on this thread) but commits a failed
        # transaction's fee (and a durable nonce's advance), so the writable accounts are put back as they were.
        # One execution instead of simulate + execute; the answer (err, logs, units, fee) is the same.
        saved = [(k, svm.get_account(k)) for k in writable] if preflight else None
        res = svm.send_transaction(tx)
        if isinstance(res, FailedTransactionMetadata):
            err, meta = res.err(), res.meta()
            if saved is not None:
                self._restore(saved)
                raise TxRejected(err, meta.logs(), meta.compute_units_consumed(), meta.fee())
        else:
            err, meta = None, res
        if err is not None and meta.fee() == 0 and not meta.logs():
            # Failed before execution (bad signature, unknown fee payer, ...): a validator never puts these in a
            # block either, so there is no status (only reached with preflight skipped).
            return sig
        post = [svm.get_balance(k) or 0 for k in keys]
        self.dirty.update(writable)
        self._record(sig, TxRecord(self.slot, self.unix_time(), raw, err, list(meta.logs()), meta.fee(),
                                   meta.compute_units_consumed(), pre, post))
        self._index(sig, loaded_keys(tx, self.svm))
        return sig

    def _restore(self, saved: list[tuple[Pubkey, Account | None]]) -> None:
        """Put accounts back exactly as they were before a failed preflight execution."""
        for key, acc in saved:
            now = self.svm.get_account(key)
            if acc is None:
                if now is not None and now.lamports:
                    self.svm.set_account(key, Account(0, b"", SYSTEM_PROGRAM_ID, False, 0))
            elif now != acc:
                self.svm.set_account(key, acc)

    def airdrop(self, to: Pubkey, lamports: int) -> Signature:
        faucet = self.svm.airdrop_pubkey()
        pre = [self.svm.get_balance(faucet) or 0, self.svm.get_balance(to) or 0]
        res = self.svm.airdrop(to, lamports)
        if isinstance(res, FailedTransactionMetadata):
            meta = res.meta()
            raise TxRejected(res.err(), meta.logs(), meta.compute_units_consumed(), meta.fee())
        assert isinstance(res, TransactionMetadata)
        sig = res.signature()
        post = [self.svm.get_balance(faucet) or 0, self.svm.get_balance(to) or 0]
        self.dirty.update((faucet, to))
        self._record(sig, TxRecord(self.slot, self.unix_time(), b"", None, list(res.logs()), res.fee(),
                                   res.compute_units_consumed(), pre, post))
        self._index(sig, [faucet, to])
        return sig

    def _index(self, sig: Signature, keys: list[Pubkey]) -> None:
        self.index_seq += 1
        for k in keys:
            sigs = self.by_address.setdefault(k, [])
            if sigs and sigs[-1][1] == sig:
                continue  # an identical airdrop in the same slot has the same signature: one entry
            sigs.append((self.index_seq, sig))
            self._pending_index.append((bytes(k), self.index_seq, bytes(sig)))

    def restore_index(self, rows: list[tuple[bytes, int, bytes]]) -> None:
        for addr, seq, sig in rows:
            self.by_address.setdefault(Pubkey.from_bytes(addr), []).append((seq, Signature.from_bytes(sig)))
            self.index_seq = max(self.index_seq, seq)

    def signatures_for(self, address: Pubkey, *, limit: int, before: Signature | None = None,
                       until: Signature | None = None) -> list[tuple[Signature, TxRecord]]:
        """Newest first, like getSignaturesForAddress: strictly older than `before`, stopping at `until`."""
        out = []
        started = before is None
        for _seq, sig in reversed(self.by_address.get(address, [])):
            if not started:
                started = sig == before
                continue
            if until is not None and sig == until:
                break
            rec = self.status(sig)
            if rec is None:
                continue
            out.append((sig, rec))
            if len(out) >= limit:
                break
        return out

    def _record(self, sig: Signature, rec: TxRecord) -> None:
        self.records[sig] = rec
        self.pending.append(sig)
        self.transaction_count += 1
        while len(self.records) > MAX_STATUS_RECORDS:
            self.records.popitem(last=False)

    # ---- persistence hooks ----------------------------------------------------------------------------------------
    def take_snapshot(self, *, serialize: bool = True) -> Snapshot:
        """Everything changed since the last snapshot; `dirty` and `pending` are reset. Without a ledger
        (`serialize=False`) only the signatures are taken: nothing would write the accounts and records."""
        sigs = self.pending
        accounts: list[tuple[bytes, bytes | None]] = []
        records: list[tuple[bytes, str]] = []
        index: list[tuple[bytes, int, bytes]] = []
        if serialize:
            for key in self.dirty:
                acc = self.svm.get_account(key)
                accounts.append((bytes(key), None if acc is None or acc.lamports == 0 else bytes(acc)))
            sigs = [s for s in sigs if s in self.records]
            records = [(bytes(s), self.records[s].to_json()) for s in sigs]
            index = self._pending_index
        self.dirty = set()
        self.pending = []
        self._pending_index = []
        meta = {"slot": str(self.slot), "time_offset": str(self.time_offset),
                "transaction_count": str(self.transaction_count), "genesis_hash": str(self.genesis_hash)}
        return Snapshot(accounts, records, meta, sigs, index)

    def mark_durable(self, sigs: list[Signature]) -> None:
        for s in sigs:
            rec = self.records.get(s)
            if rec is not None:
                rec.durable = True

    def restore(self, accounts: list[tuple[bytes, bytes]], meta: dict[str, str]) -> None:
        for key, data in accounts:
            self.svm.set_account(Pubkey.from_bytes(key), Account.from_bytes(data))
        self.time_offset = int(meta.get("time_offset", "0"))
        self.transaction_count = int(meta.get("transaction_count", "0"))
        self.replay_ticks(int(meta.get("slot", "0")))
