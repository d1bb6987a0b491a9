"""Durable node state in SQLite: money-bearing rows are fsynced before anything is acknowledged.

One database per node home (``node.db``), WAL mode with ``synchronous=FULL`` so a committed transaction
survives power loss. Each capability declares its own tables with :func:`schema` next to the code that uses
them (offers seen, agreements, vouchers, attestations, reward claims); :class:`Store` creates every
registered table on open. Writes happen inside :meth:`Store.tx`, which commits (and therefore fsyncs) on exit;
only after it returns may a node acknowledge a voucher or agreement to its peer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMAS: dict[str, str] = {
    "kv": """
        CREATE TABLE IF NOT EXISTS kv (
            key   TEXT PRIMARY KEY,
            value BLOB NOT NULL
        );
    """,
}


def schema(name: str, ddl: str) -> None:
    """Register tables (idempotent ``CREATE TABLE IF NOT EXISTS`` DDL) created whenever a store opens."""
    existing = _SCHEMAS.get(name)
    if existing is not None and existing != ddl:
        raise RuntimeError(f"schema {name!r} registered twice with different DDL")
    _SCHEMAS[name] = ddl


class Store:
    """A node's SQLite database. Not shared between processes except read-only (`p2pnode jobs`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        self.ensure_schemas()

    def ensure_schemas(self) -> None:
        """Create tables registered since open (modules imported later register theirs on import)."""
        with self.tx():
            for ddl in _SCHEMAS.values():
                for stmt in ddl.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction; nested calls join the outer one. Committed (fsynced) when the outermost exits."""
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self.db
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("ROLLBACK")
            raise
        else:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: Any) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, value))

    def next_counter(self, key: str, *, at_least: int = 0) -> int:
        """Atomically increment and return a persisted counter (offer seq survives restarts this way)."""
        with self.tx() as db:
            row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            value = max(int(row[0]) + 1 if row else 1, at_least)
            db.execute("INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, value))
        return value

    def close(self) -> None:
        self.db.close()
