"""Paying an epoch from the rewards pool: a quorum-approved, capped delegate allowance and batched v0 transfers.

**Decision: capped delegate allowance, not per-epoch quorum signatures.** The rewards pool is an SPL token account
owned by the operators' m-of-n multisig. Two ways let the quorum pay hourly:

1. collect m operator signatures over libp2p for every payout transaction (durable nonces so signing is not raced
   by blockhash expiry), or
2. have the quorum sign one SPL ``Approve`` that makes a *distributor* key the pool's delegate for a capped
   allowance (default: one day of emission), re-approved periodically; the distributor then pays each epoch alone.

We use (2). Hourly payouts of ~20 transactions would need m signers online and responsive every hour, a nonce
account per in-flight transaction (each landed transaction advances its nonce) and an m-party signing round per
batch; one slow or offline operator would delay every provider's rewards. With a delegate the quorum signs once a
day (or whenever the allowance runs low; a durable-nonce approval each operator co-signs at its own pace after
checking the terms, :mod:`p2pnode.chain.rewards_approval`), payouts need one signature per transaction, and the
risk is *bounded and stated*: a compromised or buggy distributor can move at
most the remaining allowance, and every transfer is publicly checkable against the gossiped manifest (Merkle root
in each batch's memo) so a misbehaving distributor is caught within one epoch and the quorum revokes it (SPL
``Revoke``, or approve another distributor). The allowance is the only trust added beyond the multisig itself.
An SPL account has one delegate at a time, so one operator distributes; the others verify its manifests and can
take over by having the quorum approve them.

**Payee accounts.** Rewards go to the payee's associated token account (ATA) for the IO mint. Providers normally
create it when they stake; if it is missing the distributor creates it (idempotent instruction, rent paid once per
provider, about 0.002 SOL) so a reward is never skipped or lost.

**Batching.** v0 transactions whose payee accounts come from address lookup tables (ALTs) owned by the
distributor: a plain SPL ``Transfer`` then costs ~16 bytes, ~50 transfers fit one 1232-byte transaction, so 1,000
payees take ~20 transactions per epoch. Each ALT holds 256 payees; ALT authorities are keys derived from the
distributor's seed (one ALT per authority: that lets us create them from the newest slot in the SlotHashes sysvar
on any cluster, including the embedded localnet whose SlotHashes never moves). Payees join an ALT the first epoch
they are paid (~30 per extend transaction); later epochs reuse them. Batches are grouped by ALT so each
transaction references one or two tables.

**At most once, resumable.** Before anything is sent, the epoch's plan (every transfer, its batch) is committed to
the Store. Before a batch is sent, its signed bytes, signature and last valid block height are committed. On
restart a batch with a stored transaction is resolved from the chain: landed -> done; still within its blockhash
lifetime -> the *same* bytes are re-sent (same signature, the runtime refuses duplicates); provably expired and not
landed -> rebuilt with a fresh blockhash. So no batch can land twice, and every planned transfer lands once.
Epochs are paid strictly in order (``pay_pending``): a missed epoch is caught up before any later one. Every batch
carries a memo ``iog/rewards/1 <epoch> <batch>/<count> <root hex>`` so anyone can tie transfers to the manifest; an
epoch with no payee gets one memo-only batch (plus a zero self-transfer of the pool, so it is in the pool's history).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from solders.address_lookup_table_account import (
    ID as ALT_PROGRAM_ID,
    AddressLookupTable,
    AddressLookupTableAccount,
    derive_lookup_table_address,
)
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.sysvar import SLOT_HASHES
from solders.transaction import Transaction, VersionedTransaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import approve_checked
from spl.token.models import ApproveCheckedParams, TransferParams
from spl.token.instructions import transfer as spl_transfer

from ..errors import P2PNodeError, UserError
from ..store import Store, schema
from . import token
from .rewards import Allocation

log = logging.getLogger(__name__)

PACKET_SIZE = 1232  # Solana's maximum serialized transaction
ALT_CAPACITY = 256
EXTEND_CHUNK = 27  # addresses per ExtendLookupTable transaction (the most that fit 1232 bytes with 2 signers)
ATA_CHUNK = 8  # idempotent ATA creations per transaction
MAX_ACCOUNTS_QUERY = 100  # getMultipleAccounts limit
MEMO_TAG = "iog/rewards/1"

schema("rewards_distribute", """
    CREATE TABLE IF NOT EXISTS reward_epochs (
        epoch     INTEGER PRIMARY KEY,
        root      BLOB NOT NULL,
        total     INTEGER NOT NULL,
        carry_out INTEGER NOT NULL,
        batches   INTEGER NOT NULL,
        status    TEXT NOT NULL,          -- planned | paid
        paid_at   REAL
    );
    CREATE TABLE IF NOT EXISTS reward_transfers (
        epoch   INTEGER NOT NULL,
        address TEXT NOT NULL,            -- payee owner (provider address)
        ata     TEXT NOT NULL,            -- token account paid
        amount  INTEGER NOT NULL,
        batch   INTEGER NOT NULL,
        PRIMARY KEY (epoch, address)
    );
    CREATE TABLE IF NOT EXISTS reward_batches (
        epoch      INTEGER NOT NULL,
        batch      INTEGER NOT NULL,
        status     TEXT NOT NULL,         -- planned | sent | done
        raw        BLOB,                  -- the signed transaction last sent
        signature  TEXT,
        last_valid INTEGER,               -- last block height at which `raw` can land
        PRIMARY KEY (epoch, batch)
    );
    CREATE TABLE IF NOT EXISTS reward_alts (
        alt       TEXT PRIMARY KEY,
        authority INTEGER NOT NULL UNIQUE -- index of the derived authority key
    );
    CREATE TABLE IF NOT EXISTS reward_alt_members (
        ata TEXT PRIMARY KEY,
        alt TEXT NOT NULL
    );
""")


class DistributionError(P2PNodeError):
    """A payout could not proceed (allowance too low, transaction rejected); nothing was paid twice."""


class AllowanceTooLow(DistributionError, UserError):
    """The distributor's delegate allowance on the rewards pool does not cover the epoch; the quorum must re-approve."""


@dataclass(frozen=True)
class Pool:
    """The on-chain accounts a payout touches."""

    pool: Pubkey  # rewards pool token account (owner: the operators' multisig)
    mint: Pubkey
    multisig: Pubkey

    @classmethod
    def from_network(cls, params) -> "Pool":
        return cls(pool=Pubkey.from_string(params.rewards_pool), mint=Pubkey.from_string(params.mint),
                   multisig=Pubkey.from_string(params.multisig))


@dataclass(frozen=True)
class PayResult:
    epoch: int
    transfers: int
    transactions: int  # batch transactions that landed in this call
    amount: int


# --- instruction builders ----------------------------------------------------------------------------------


def approve_allowance_ix(pool: Pool, distributor: Pubkey, amount: int, signers: Sequence[Pubkey]) -> Instruction:
    """The quorum's SPL ApproveChecked making `distributor` the pool's delegate for `amount` (replaces any old one)."""
    return approve_checked(ApproveCheckedParams(
        program_id=TOKEN_PROGRAM_ID, source=pool.pool, mint=pool.mint, delegate=distributor, owner=pool.multisig,
        amount=amount, decimals=token.DECIMALS, signers=list(signers)))


def _alt_create_ix(table: Pubkey, authority: Pubkey, payer: Pubkey, slot: int, bump: int) -> Instruction:
    data = struct.pack("<IQB", 0, slot, bump)
    return Instruction(ALT_PROGRAM_ID, data, [
        AccountMeta(table, False, True), AccountMeta(authority, True, False), AccountMeta(payer, True, True),
        AccountMeta(SYSTEM_PROGRAM_ID, False, False)])


def _alt_extend_ix(table: Pubkey, authority: Pubkey, payer: Pubkey, addresses: Sequence[Pubkey]) -> Instruction:
    data = struct.pack("<IQ", 2, len(addresses)) + b"".join(bytes(a) for a in addresses)
    return Instruction(ALT_PROGRAM_ID, data, [
        AccountMeta(table, False, True), AccountMeta(authority, True, False), AccountMeta(payer, True, True),
        AccountMeta(SYSTEM_PROGRAM_ID, False, False)])


def batch_memo(epoch: int, batch: int, count: int, root: bytes) -> str:
    return f"{MEMO_TAG} {epoch} {batch}/{count} {root.hex()}"


# --- RPC helpers (standard JSON-RPC through solana-py; confirmation by polling under trio) ------------------


async def _latest_blockhash(rpc) -> tuple[Hash, int]:
    resp = await rpc.get_latest_blockhash()
    return resp.value.blockhash, resp.value.last_valid_block_height


async def _block_height(rpc) -> int:
    return (await rpc.get_block_height()).value


async def _statuses(rpc, sigs: list[Signature]) -> list:
    out = []
    for i in range(0, len(sigs), 256):
        out.extend((await rpc.get_signature_statuses(sigs[i:i + 256], search_transaction_history=True)).value)
    return out


async def _accounts(rpc, keys: Sequence[Pubkey]) -> list:
    out = []
    for i in range(0, len(keys), MAX_ACCOUNTS_QUERY):
        out.extend((await rpc.get_multiple_accounts(list(keys[i:i + MAX_ACCOUNTS_QUERY]))).value)
    return out


async def _send(rpc, raw: bytes) -> None:
    from solana.rpc.core import RPCException
    from solana.rpc.models import TxOpts

    try:
        await rpc.send_raw_transaction(raw, opts=TxOpts(skip_preflight=False, skip_confirmation=True))
    except RPCException as exc:
        if "AlreadyProcessed" in str(exc) or "already been processed" in str(exc):
            return  # an earlier send of these exact bytes landed: that is success, not an error
        raise DistributionError(f"transaction rejected: {exc}") from exc


async def _confirm(rpc, sig: Signature, *, timeout_s: float) -> bool:
    """Poll until `sig` is processed (True), failed (DistributionError) or the timeout passes (False)."""
    with trio.move_on_after(timeout_s):
        while True:
            (st,) = await _statuses(rpc, [sig])
            if st is not None:
                if st.err is not None:
                    raise DistributionError(f"transaction {sig} failed on chain: {st.err}")
                return True
            await trio.sleep(0.2)
    return False


async def submit(rpc, payer: Keypair, ixs: list[Instruction], *, extra: Sequence[Keypair] = (),
                 timeout_s: float = 30.0) -> Signature:
    """A legacy transaction for set-up steps (ATAs, ALTs, approvals): sign, send, wait until it lands."""
    bh, _ = await _latest_blockhash(rpc)
    tx = Transaction([payer, *extra], Message.new_with_blockhash(ixs, payer.pubkey(), bh), bh)
    await _send(rpc, bytes(tx))
    if not await _confirm(rpc, tx.signatures[0], timeout_s=timeout_s):
        raise DistributionError(f"transaction {tx.signatures[0]} not confirmed within {timeout_s:.0f} s")
    return tx.signatures[0]


async def approve_allowance(rpc, pool: Pool, distributor: Pubkey, amount: int, quorum: Sequence[Keypair],
                            payer: Keypair, *, timeout_s: float = 30.0) -> Signature:
    """Quorum-signed approval, for devnets and tests where the operators' keys are local.

    On a real network each operator signs the same message on its own machine (p2pnode.chain.multisig merges the
    signatures); the instruction is :func:`approve_allowance_ix`.
    """
    ix = approve_allowance_ix(pool, distributor, amount, [k.pubkey() for k in quorum])
    return await submit(rpc, payer, [ix], extra=[k for k in quorum if k.pubkey() != payer.pubkey()],
                        timeout_s=timeout_s)


async def allowance(rpc, pool: Pool, distributor: Pubkey) -> int:
    """The distributor's remaining delegated amount on the pool (0 if it is not the delegate)."""
    (acc,) = await _accounts(rpc, [pool.pool])
    if acc is None:
        raise DistributionError(f"rewards pool {pool.pool} does not exist on this chain")
    st = token.parse_token_account(bytes(acc.data))
    if st.delegate != distributor:
        return 0
    return st.delegated_amount


# --- the distributor ---------------------------------------------------------------------------------------


class Distributor:
    """Pays manifests from the pool as its delegate; every step is durable in `store` and safe to repeat."""

    def __init__(self, rpc, store: Store, keypair: Keypair, pool: Pool, *, confirm_timeout_s: float = 30.0,
                 max_transfers_per_tx: int = 64) -> None:
        self.rpc = rpc
        self.store = store
        self.keypair = keypair
        self.pool = pool
        self.confirm_timeout_s = confirm_timeout_s
        self.max_transfers_per_tx = max_transfers_per_tx
        self.transactions_sent = 0  # every transaction this object sent (setup + batches), for benchmarks

    @property
    def key(self) -> Pubkey:
        return self.keypair.pubkey()

    # ---- plan --------------------------------------------------------------------------------------------

    def plan(self, alloc: Allocation) -> bool:
        """Commit the epoch's transfers once; True if newly planned, False if it was already (same root)."""
        row = self.store.db.execute("SELECT root FROM reward_epochs WHERE epoch = ?", (alloc.epoch,)).fetchone()
        if row is not None:
            if bytes(row[0]) != alloc.root:
                raise DistributionError(f"epoch {alloc.epoch} was already planned with a different root")
            return False
        with self.store.tx() as db:
            db.execute("INSERT INTO reward_epochs(epoch, root, total, carry_out, batches, status) VALUES(?,?,?,?,?,?)",
                       (alloc.epoch, alloc.root, alloc.paid, alloc.carry_out, -1, "planned"))
            db.executemany(
                "INSERT INTO reward_transfers(epoch, address, ata, amount, batch) VALUES(?,?,?,?,-1)",
                [(alloc.epoch, e.address, str(token.ata(Pubkey.from_string(e.address), self.pool.mint)), e.amount)
                 for e in alloc.entries if e.amount > 0])
        return True

    def epoch_status(self, epoch: int) -> str | None:
        row = self.store.db.execute("SELECT status FROM reward_epochs WHERE epoch = ?", (epoch,)).fetchone()
        return row[0] if row else None

    def last_paid_epoch(self) -> int | None:
        row = self.store.db.execute("SELECT MAX(epoch) FROM reward_epochs WHERE status = 'paid'").fetchone()
        return row[0]

    # ---- set-up: payee accounts and lookup tables ----------------------------------------------------------

    async def ensure_payee_accounts(self, owners_atas: list[tuple[Pubkey, Pubkey]]) -> int:
        """Create missing payee ATAs (idempotent instruction); returns transactions sent."""
        infos = await _accounts(self.rpc, [a for _, a in owners_atas])
        missing = [o for (o, _), info in zip(owners_atas, infos) if info is None]
        sent = 0
        for i in range(0, len(missing), ATA_CHUNK):
            ixs = [token.create_ata(self.key, o, self.pool.mint) for o in missing[i:i + ATA_CHUNK]]
            await submit(self.rpc, self.keypair, ixs, timeout_s=self.confirm_timeout_s)
            sent += 1
        self.transactions_sent += sent
        return sent

    def _alt_authority(self, index: int) -> Keypair:
        seed = hashlib.sha256(b"iog/rewards/alt-authority\x00" + self.keypair.secret() + index.to_bytes(4, "big"))
        return Keypair.from_seed(seed.digest())

    async def _recent_slot(self) -> int:
        info = (await self.rpc.get_account_info(SLOT_HASHES)).value
        if info is None or len(info.data) < 16:
            raise DistributionError("cannot read the SlotHashes sysvar to create a lookup table")
        (count,) = struct.unpack_from("<Q", bytes(info.data), 0)
        if count == 0:
            raise DistributionError("SlotHashes is empty")
        (slot,) = struct.unpack_from("<Q", bytes(info.data), 8)  # newest first
        return slot

    async def _new_alt(self) -> Pubkey:
        (index,) = self.store.db.execute("SELECT COALESCE(MAX(authority) + 1, 0) FROM reward_alts").fetchone()
        auth = self._alt_authority(index)
        slot = await self._recent_slot()
        table, bump = derive_lookup_table_address(auth.pubkey(), slot)
        (info,) = await _accounts(self.rpc, [table])
        if info is None:
            await submit(self.rpc, self.keypair, [_alt_create_ix(table, auth.pubkey(), self.key, slot, bump)],
                         extra=[auth], timeout_s=self.confirm_timeout_s)
            self.transactions_sent += 1
        with self.store.tx() as db:
            db.execute("INSERT INTO reward_alts(alt, authority) VALUES(?, ?)", (str(table), index))
        return table

    async def _alt_addresses(self, tables: Sequence[Pubkey]) -> dict[Pubkey, list[Pubkey]]:
        infos = await _accounts(self.rpc, tables)
        out = {}
        for t, info in zip(tables, infos):
            if info is None:
                raise DistributionError(f"lookup table {t} vanished")
            out[t] = list(AddressLookupTable.deserialize(bytes(info.data)).addresses)
        return out

    async def ensure_lookup_tables(self, atas: Sequence[Pubkey]) -> int:
        """Add payee token accounts to the distributor's ALTs; waits one slot so new entries are usable."""
        known = {r[0] for r in self.store.db.execute("SELECT ata FROM reward_alt_members")}
        new = [a for a in dict.fromkeys(atas) if str(a) not in known]
        if not new:
            return 0
        before = self.transactions_sent
        tables = [(Pubkey.from_string(r[0]), r[1]) for r in
                  self.store.db.execute("SELECT alt, authority FROM reward_alts ORDER BY authority")]
        onchain = await self._alt_addresses([t for t, _ in tables]) if tables else {}
        # reconcile with the chain first: an extend may have landed just before a crash
        with self.store.tx() as db:
            for t, addrs in onchain.items():
                db.executemany("INSERT OR IGNORE INTO reward_alt_members(ata, alt) VALUES(?, ?)",
                               [(str(a), str(t)) for a in addrs])
        known = {r[0] for r in self.store.db.execute("SELECT ata FROM reward_alt_members")}
        new = [a for a in new if str(a) not in known]
        last_slot = None
        while new:
            table = next((t for t, _ in tables if len(onchain.get(t, ())) < ALT_CAPACITY), None)
            if table is None:
                table = await self._new_alt()
                (idx,) = self.store.db.execute("SELECT authority FROM reward_alts WHERE alt = ?",
                                               (str(table),)).fetchone()
                tables.append((table, idx))
                onchain[table] = []
            auth_index = next(i for t, i in tables if t == table)
            room = ALT_CAPACITY - len(onchain[table])
            chunk = new[:min(EXTEND_CHUNK, room)]
            await submit(self.rpc, self.keypair, [_alt_extend_ix(table, self._alt_authority(auth_index).pubkey(),
                                                                 self.key, chunk)],
                         extra=[self._alt_authority(auth_index)], timeout_s=self.confirm_timeout_s)
            self.transactions_sent += 1
            with self.store.tx() as db:
                db.executemany("INSERT INTO reward_alt_members(ata, alt) VALUES(?, ?)",
                               [(str(a), str(table)) for a in chunk])
            onchain[table].extend(chunk)
            new = new[len(chunk):]
            last_slot = (await self.rpc.get_slot()).value
        if last_slot is not None:  # entries become usable in the slot after they were added
            with trio.fail_after(self.confirm_timeout_s):
                while (await self.rpc.get_slot()).value <= last_slot:
                    await trio.sleep(0.1)
        return self.transactions_sent - before

    # ---- batches -----------------------------------------------------------------------------------------

    def _build(self, epoch: int, batch: int, count: int, root: bytes, rows: list[tuple[Pubkey, int]],
               tables: list[AddressLookupTableAccount], bh: Hash) -> VersionedTransaction:
        ixs = [token.memo(batch_memo(epoch, batch, count, root))]
        ixs += [spl_transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=self.pool.pool, dest=ata,
                                            owner=self.key, amount=amount)) for ata, amount in rows]
        if not rows:
            # an epoch nobody earned: the memo alone anchors its root. A zero self-transfer of the pool by its
            # delegate ties the transaction to the pool's history (where everyone looks) and proves the signer is
            # the current distributor; it moves nothing.
            ixs.append(spl_transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=self.pool.pool,
                                                   dest=self.pool.pool, owner=self.key, amount=0)))
        msg = MessageV0.try_compile(self.key, ixs, tables, bh)
        return VersionedTransaction(msg, [self.keypair])

    async def _assign_batches(self, epoch: int, root: bytes, *, memo_only: bool = False) -> int:
        """Split the epoch's transfers into transactions that fit the packet; committed before any is sent."""
        rows = self.store.db.execute(
            "SELECT t.ata, t.amount, m.alt FROM reward_transfers t LEFT JOIN reward_alt_members m ON m.ata = t.ata "
            "LEFT JOIN reward_alts a ON a.alt = m.alt WHERE t.epoch = ? ORDER BY a.authority, t.address",
            (epoch,)).fetchall()
        tables = await self._table_accounts()
        bh = Hash.default()  # sizes do not depend on the blockhash
        batches: list[list[str]] = []
        current: list[tuple[Pubkey, int]] = []
        names: list[str] = []
        for ata, amount, _ in rows:
            trial = current + [(Pubkey.from_string(ata), amount)]
            fits = len(trial) <= self.max_transfers_per_tx and len(bytes(self._build(
                epoch, 999_999, 999_999, root, trial, self._tables_for(trial, tables), bh))) <= PACKET_SIZE
            if not fits and current:
                batches.append(names)
                current, names = [(Pubkey.from_string(ata), amount)], [ata]
            else:
                current, names = trial, names + [ata]
        if names:
            batches.append(names)
        if not batches and memo_only:
            batches.append([])  # one memo-only batch: the root of an epoch with no payee is still posted
        with self.store.tx() as db:
            for i, names in enumerate(batches):
                db.executemany("UPDATE reward_transfers SET batch = ? WHERE epoch = ? AND ata = ?",
                               [(i, epoch, a) for a in names])
                db.execute("INSERT INTO reward_batches(epoch, batch, status) VALUES(?, ?, 'planned')", (epoch, i))
            db.execute("UPDATE reward_epochs SET batches = ? WHERE epoch = ?", (len(batches), epoch))
        return len(batches)

    async def _table_accounts(self) -> list[AddressLookupTableAccount]:
        tables = [Pubkey.from_string(r[0]) for r in self.store.db.execute("SELECT alt FROM reward_alts ORDER BY authority")]
        if not tables:
            return []
        addrs = await self._alt_addresses(tables)
        return [AddressLookupTableAccount(t, addrs[t]) for t in tables]

    @staticmethod
    def _tables_for(rows: list[tuple[Pubkey, int]], tables: list[AddressLookupTableAccount]) -> list:
        wanted = {a for a, _ in rows}
        return [t for t in tables if wanted & set(t.addresses)]

    async def pay(self, alloc: Allocation) -> PayResult:
        """Pay one epoch (plan if needed); safe to call again after a crash at any point."""
        self.plan(alloc)
        epoch = alloc.epoch
        (status, n_batches) = self.store.db.execute(
            "SELECT status, batches FROM reward_epochs WHERE epoch = ?", (epoch,)).fetchone()
        if status == "paid":
            return PayResult(epoch, 0, 0, 0)
        transfers = self.store.db.execute("SELECT address, ata, amount FROM reward_transfers WHERE epoch = ?",
                                          (epoch,)).fetchall()
        if n_batches < 0:
            # nothing of ours is in flight for this epoch; a previous delegate may have paid part or all of it
            transfers = await self._drop_paid_elsewhere(epoch, alloc.root, transfers)
            pairs = [(Pubkey.from_string(r[0]), Pubkey.from_string(r[1])) for r in transfers]
            await self.ensure_payee_accounts(pairs)
            await self.ensure_lookup_tables([a for _, a in pairs])
            n_batches = await self._assign_batches(epoch, alloc.root, memo_only=not alloc.entries)
        unpaid = self.store.db.execute(
            "SELECT COALESCE(SUM(t.amount), 0) FROM reward_transfers t JOIN reward_batches b "
            "ON b.epoch = t.epoch AND b.batch = t.batch WHERE t.epoch = ? AND b.status != 'done'", (epoch,)).fetchone()[0]
        if unpaid and await allowance(self.rpc, self.pool, self.key) < unpaid:
            # a batch in flight may already have spent part of the allowance; resolve those first
            pending_sent = self.store.db.execute(
                "SELECT COUNT(*) FROM reward_batches WHERE epoch = ? AND status = 'sent'", (epoch,)).fetchone()[0]
            if not pending_sent:
                raise AllowanceTooLow(
                    f"epoch {epoch} needs {unpaid} base units but the distributor's allowance on the rewards pool is "
                    f"lower; the operators' quorum must re-approve (`approve_allowance`)")
        tables = await self._table_accounts()
        landed = 0
        for batch in range(n_batches):
            landed += await self._pay_batch(epoch, batch, n_batches, alloc.root, tables)
        with self.store.tx() as db:
            db.execute("UPDATE reward_epochs SET status = 'paid', paid_at = strftime('%s','now') WHERE epoch = ?",
                       (epoch,))
        log.info("rewards epoch %d paid: %d transfers in %d transactions", epoch, len(transfers), n_batches)
        return PayResult(epoch, len(transfers), landed, sum(r[2] for r in transfers))

    async def _drop_paid_elsewhere(self, epoch: int, root: bytes, transfers: list) -> list:
        """Remove from the plan what the chain already holds for (epoch, root) — a handover between delegates.

        Runs before any batch of ours exists for the epoch, so every such transfer was sent by another distributor
        (the previous delegate). An amount that differs from ours for the same account means two different
        allocations were paid: stop, nothing more is sent.
        """
        from .rewards_onchain import reward_transfers

        done = await reward_transfers(self.rpc, self.pool.pool, self.pool.pool, epochs={epoch}, stop_below=epoch)
        if not done:
            return transfers
        other_roots = {t.root for t in done if t.root != root}
        if other_roots:
            raise DistributionError(f"epoch {epoch} was already paid on chain under another root "
                                    f"({sorted(r.hex()[:16] for r in other_roots)}); not paying it again")
        paid: dict[str, int] = {}
        for t in done:
            paid[str(t.dest)] = paid.get(str(t.dest), 0) + t.amount
        keep = []
        with self.store.tx() as db:
            for address, ata, amount in transfers:
                got = paid.get(ata)
                if got is None:
                    keep.append((address, ata, amount))
                elif got != amount:
                    raise DistributionError(f"epoch {epoch}: {ata} already received {got} on chain, the plan says "
                                            f"{amount}; not paying it again")
                else:
                    db.execute("DELETE FROM reward_transfers WHERE epoch = ? AND ata = ?", (epoch, ata))
        log.info("rewards epoch %d: %d of %d transfers were already paid by a previous delegate", epoch,
                 len(transfers) - len(keep), len(transfers))
        return keep

    async def _pay_batch(self, epoch: int, batch: int, count: int, root: bytes,
                         tables: list[AddressLookupTableAccount]) -> int:
        row = self.store.db.execute("SELECT status, raw, signature, last_valid FROM reward_batches "
                                    "WHERE epoch = ? AND batch = ?", (epoch, batch)).fetchone()
        status, raw, sig_text, last_valid = row
        if status == "done":
            return 0
        if status == "sent":
            # a transaction for this batch may have landed or may still land: resolve it before anything new
            sig = Signature.from_string(sig_text)
            while True:
                (st,) = await _statuses(self.rpc, [sig])
                if st is not None and st.err is None:
                    self._mark_done(epoch, batch)
                    return 1
                if st is not None and st.err is not None:
                    break  # failed on chain: nothing moved, rebuild
                if await _block_height(self.rpc) > last_valid:
                    (st,) = await _statuses(self.rpc, [sig])  # one last look after expiry
                    if st is not None and st.err is None:
                        self._mark_done(epoch, batch)
                        return 1
                    break  # expired without landing: can never land now, rebuild
                await _send(self.rpc, bytes(raw))  # same bytes, same signature: lands at most once
                if await _confirm(self.rpc, sig, timeout_s=min(5.0, self.confirm_timeout_s)):
                    self._mark_done(epoch, batch)
                    return 1
        rows = [(Pubkey.from_string(a), amt) for a, amt in self.store.db.execute(
            "SELECT ata, amount FROM reward_transfers WHERE epoch = ? AND batch = ? ORDER BY address",
            (epoch, batch))]
        bh, last_valid = await _latest_blockhash(self.rpc)
        tx = self._build(epoch, batch, count, root, rows, self._tables_for(rows, tables), bh)
        raw = bytes(tx)
        sig = tx.signatures[0]
        with self.store.tx() as db:  # durable before it can reach the chain
            db.execute("UPDATE reward_batches SET status = 'sent', raw = ?, signature = ?, last_valid = ? "
                       "WHERE epoch = ? AND batch = ?", (raw, str(sig), last_valid, epoch, batch))
        self.transactions_sent += 1
        await self._before_send_hook(epoch, batch)
        await _send(self.rpc, raw)
        if not await _confirm(self.rpc, sig, timeout_s=self.confirm_timeout_s):
            return await self._pay_batch(epoch, batch, count, root, tables)  # resolves via the 'sent' path
        self._mark_done(epoch, batch)
        return 1

    async def _before_send_hook(self, epoch: int, batch: int) -> None:
        """Tests override this to crash between the durable write and the send."""

    def _mark_done(self, epoch: int, batch: int) -> None:
        with self.store.tx() as db:
            db.execute("UPDATE reward_batches SET status = 'done' WHERE epoch = ? AND batch = ?", (epoch, batch))

    async def pay_pending(self, allocations: Sequence[Allocation]) -> list[PayResult]:
        """Pay epochs strictly in order: each must be paid before the next starts (catch-up after downtime)."""
        results = []
        for alloc in sorted(allocations, key=lambda a: a.epoch):
            last = self.last_paid_epoch()
            if last is not None and alloc.epoch <= last and self.epoch_status(alloc.epoch) == "paid":
                continue
            results.append(await self.pay(alloc))
        return results
