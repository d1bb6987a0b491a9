"""The localnet's ledger on disk: every written account, the slot and the signature statuses, in SQLite.

A devnet that forgets balances on restart loses money, so confirmations wait for this: a transaction is reported
``finalized`` only once its accounts and status are committed here (WAL, ``synchronous=FULL``: the commit is
fsynced). Writes happen in one SQLite transaction per flush, called from a worker thread (trio.to_thread) while the
trio thread keeps serving; only one flush runs at a time.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from solders.signature import Signature

from ..errors import UserError
from .localnet_state import Snapshot, TxRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (pubkey BLOB PRIMARY KEY, account BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (sig BLOB PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS addr_sigs (addr BLOB NOT NULL, seq INTEGER NOT NULL, sig BLOB NOT NULL,
                                      PRIMARY KEY (addr, seq));
"""


class LedgerError(UserError):
    """The ledger directory cannot be used (not writable, corrupt, from another chain)."""


class Ledger:
    """SQLite file ``<dir>/ledger.sqlite``; one connection, used by one thread at a time."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.path = self.dir / "ledger.sqlite"
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            # Lookups of old statuses from the trio thread must not wait behind a flush's fsync: own connection.
            self.reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"{directory}: cannot open the localnet ledger ({exc}); pick a writable --ledger DIR")

    def load(self) -> tuple[list[tuple[bytes, bytes]], dict[str, str]]:
        try:
            accounts = [(bytes(k), bytes(v)) for k, v in self.db.execute("SELECT pubkey, account FROM accounts")]
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: unreadable ledger ({exc}); move it away to start a fresh chain")
        return accounts, meta

    def address_index(self) -> list[tuple[bytes, int, bytes]]:
        """getSignaturesForAddress's index, oldest first."""
        try:
            return [(bytes(a), int(q), bytes(s)) for a, q, s in
                    self.db.execute("SELECT addr, seq, sig FROM addr_sigs ORDER BY seq")]
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: unreadable ledger ({exc}); move it away to start a fresh chain")

    def record(self, sig: Signature) -> TxRecord | None:
        row = self.reader.execute("SELECT record FROM txs WHERE sig = ?", (bytes(sig),)).fetchone()
        return TxRecord.from_json(row[0]) if row else None

    def write(self, snap: Snapshot) -> None:
        """One fsynced SQLite transaction; blocking (run it in a worker thread)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for key, data in snap.accounts:
                if data is None:
                    cur.execute("DELETE FROM accounts WHERE pubkey = ?", (key,))
                else:
                    cur.execute("INSERT OR REPLACE INTO accounts (pubkey, account) VALUES (?, ?)", (key, data))
            cur.executemany("INSERT OR REPLACE INTO txs (sig, record) VALUES (?, ?)", snap.records)
            cur.executemany("INSERT OR REPLACE INTO addr_sigs (addr, seq, sig) VALUES (?, ?, ?)", snap.addresses)
            cur.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(snap.meta.items()))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.reader.close()
        self.db.close()
