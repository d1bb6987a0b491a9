"""The market's durable record of every job, on both sides: the signed agreement before anything acts on it.

One row per job (``market_jobs``) in the node's SQLite store. The row is written inside :meth:`Store.tx` (fsync)
at each step that matters for money, before the step is acknowledged to the peer or acted on:

* ``accepted``  both: the provider-signed quote the renter accepted (it embeds the payment-channel agreement);
* ``funded``    renter after the fund transaction confirmed / provider after checking the escrow on chain;
* ``running``   the job started on the provider;
* ``done``      a result was returned (provider) / verified (renter; ``verdict`` says how it went);
* ``settled`` / ``refunded`` / ``closed``  the escrow is closed on chain (``closed``: by the other party);
* ``failed``    nothing was funded (refused, timed out before funding) — no money involved;
* ``abandoned`` renter: gave up on the provider mid-job; the refund with the arbiter is pending until the
  agreement's deadline.

The renter also keeps its latest voucher here (``cumulative``, ``voucher``) — stored before it is sent — so after
a crash it can present it to the arbiter and never pays twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..store import Store, schema

schema("market_jobs", """
    CREATE TABLE IF NOT EXISTS market_jobs (
        job_id      BLOB PRIMARY KEY,
        role        TEXT NOT NULL,
        peer        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        state       TEXT NOT NULL,
        price       INTEGER NOT NULL,
        deposit     INTEGER NOT NULL,
        cumulative  INTEGER NOT NULL DEFAULT 0,
        fee         INTEGER NOT NULL DEFAULT 0,
        refunded    INTEGER NOT NULL DEFAULT 0,
        quote       BLOB NOT NULL,
        spec        BLOB NOT NULL,
        voucher     BLOB,
        fund_sig    TEXT,
        settle_sig  TEXT,
        refund_sig  TEXT,
        verdict     TEXT NOT NULL DEFAULT '',
        seconds     REAL NOT NULL DEFAULT 0,
        detail      TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS market_jobs_state ON market_jobs(state)
""")

STATES = ("accepted", "funded", "running", "done", "settled", "refunded", "closed", "failed", "abandoned")
FINAL = ("settled", "refunded", "closed", "failed")
_COLUMNS = ("state", "cumulative", "fee", "refunded", "voucher", "fund_sig", "settle_sig", "refund_sig", "verdict",
            "seconds", "detail")


@dataclass(frozen=True)
class JobRow:
    job_id: bytes
    role: str
    peer: str
    kind: str
    state: str
    price: int
    deposit: int
    cumulative: int
    fee: int
    refunded: int
    quote: bytes
    spec: bytes
    voucher: bytes | None
    fund_sig: str | None
    settle_sig: str | None
    refund_sig: str | None
    verdict: str
    seconds: float
    detail: str
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id.hex(), "role": self.role, "peer": self.peer, "kind": self.kind,
                "state": self.state, "price": self.price, "deposit": self.deposit, "paid": self.cumulative,
                "fee": self.fee, "refunded": self.refunded, "fund_sig": self.fund_sig, "settle_sig": self.settle_sig,
                "refund_sig": self.refund_sig, "verdict": self.verdict, "seconds": round(self.seconds, 3),
                "detail": self.detail, "created_at": self.created_at, "updated_at": self.updated_at}


def _row(r: Any) -> JobRow:
    return JobRow(**{k: (bytes(r[k]) if k in ("job_id", "quote", "spec") or (k == "voucher" and r[k] is not None)
                         else r[k]) for k in r.keys()})


class Agreements:
    """Typed access to ``market_jobs``; every write is one committed transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, *, job_id: bytes, role: str, peer: str, kind: str, price: int, deposit: int, quote: bytes,
               spec: bytes) -> None:
        """Record an accepted agreement; the same job id twice is refused (a replayed accept)."""
        now = time.time()
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM market_jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise KeyError(f"job {job_id.hex()} already recorded")
            db.execute("INSERT INTO market_jobs(job_id, role, peer, kind, state, price, deposit, quote, spec, "
                       "created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                       (job_id, role, peer, kind, "accepted", price, deposit, quote, spec, now, now))

    def update(self, job_id: bytes, **fields: Any) -> None:
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise KeyError(f"not a market_jobs column: {', '.join(sorted(bad))}")
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.store.tx() as db:
            db.execute(f"UPDATE market_jobs SET {sets}, updated_at = ? WHERE job_id = ?",
                       (*fields.values(), time.time(), job_id))

    def get(self, job_id: bytes) -> JobRow | None:
        rows = self.store.query("SELECT * FROM market_jobs WHERE job_id = ?", (job_id,))
        return _row(rows[0]) if rows else None

    def list(self, *, role: str | None = None, states: tuple[str, ...] | None = None, limit: int = 1000
             ) -> list[JobRow]:
        rows = [_row(r) for r in self.store.query("SELECT * FROM market_jobs ORDER BY created_at DESC LIMIT ?",
                                                  (limit,))]
        return [r for r in rows if (role is None or r.role == role) and (states is None or r.state in states)]

    def count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM market_jobs")[0][0])


__all__ = ["Agreements", "FINAL", "JobRow", "STATES"]
