"""What a renter remembers about providers, and the choice policy built on it.

Per provider: jobs completed and verified, failures (refused after accepting, timed out, vanished), and bad
results (failed verification). The choice policy ranks live offers by price per unit of attested capacity —
what a network operator signed, checked here, never the TFLOPS a provider writes into its own offer — penalised
by that history: a provider that ever returned a wrong result goes to the back of the queue (it is
also reported to the arbiter and slashed), one that timed out is tried after the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..identity import peer_id_from_public_key
from ..store import Store, schema
from ..wire import MAX_DEVICE_ATTESTATION, Device, Offer, WireError, open_envelope

ATTESTATION_TRUST_S = 24 * 3600  # how long a renter counts a passed attestation (operators re-attest each epoch)

schema("market_reputation", """
    CREATE TABLE IF NOT EXISTS market_reputation (
        peer_id     TEXT PRIMARY KEY,
        ok          INTEGER NOT NULL DEFAULT 0,
        failed      INTEGER NOT NULL DEFAULT 0,
        bad_results INTEGER NOT NULL DEFAULT 0,
        refused     INTEGER NOT NULL DEFAULT 0,
        updated_at  REAL NOT NULL
    );
""")

OUTCOMES = ("ok", "failed", "bad_results", "refused")


@dataclass(frozen=True)
class Record:
    peer_id: str
    ok: int = 0
    failed: int = 0
    bad_results: int = 0
    refused: int = 0

    def penalty(self) -> float:
        """>= 0.5; 1.0 for a stranger. Wrong results weigh far more than time-outs; refusals (busy) barely."""
        return max(1.0 + 2.0 * self.failed + 50.0 * self.bad_results + 0.1 * self.refused
                   - 0.05 * min(self.ok, 10), 0.5)


class Reputation:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, peer_id: str) -> Record:
        rows = self.store.query("SELECT * FROM market_reputation WHERE peer_id = ?", (peer_id,))
        if not rows:
            return Record(peer_id)
        r = rows[0]
        return Record(peer_id, r["ok"], r["failed"], r["bad_results"], r["refused"])

    def record(self, peer_id: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self.store.tx() as db:
            db.execute("INSERT INTO market_reputation(peer_id, updated_at) VALUES(?, ?) ON CONFLICT(peer_id) DO NOTHING",
                       (peer_id, time.time()))
            db.execute(f"UPDATE market_reputation SET {outcome} = {outcome} + 1, updated_at = ? WHERE peer_id = ?",
                       (time.time(), peer_id))


@dataclass(frozen=True)
class Wanted:
    """The renter's filters (CLI: --max-price, --gpu, --min-tflops) and the job's duration bound."""

    max_price: int | None = None
    gpu: str | None = None  # substring of the device name (case-insensitive)
    min_tflops: float = 0.0
    max_s: int = 60
    kind: str | None = None  # device kind: "cuda" | "cpu" | None for any


def attested_tflops(offer: Offer, index: int, verifiers: set[str] | None, *, now: float | None = None) -> float:
    """What a renter may believe of device `index`: the TFLOPS of the attestation the offer carries for it, if a
    network operator (`verifiers`, PeerIDs) signed it for this provider, this device index and name, it passed and
    is less than a day old; else 0 (unattested). Never more than the offer itself claims."""
    from ..compute.attest import ATTESTATION_MAX_SKEW_S, Attestation

    d = offer.devices[index]
    if not d.attestation or not verifiers:
        return 0.0
    try:
        signed = open_envelope(d.attestation, Attestation, max_size=MAX_DEVICE_ATTESTATION)
    except WireError:
        return 0.0
    a = signed.message
    now = time.time() if now is None else now
    if not (a.passed and a.verifier in verifiers and peer_id_from_public_key(signed.signer) == a.verifier
            and a.provider == offer.peer_id and a.device_index == index and a.device is not None
            and (a.device.kind, a.device.name) == (d.kind, d.name)
            and now - ATTESTATION_TRUST_S <= a.time <= now + ATTESTATION_MAX_SKEW_S):
        return 0.0
    return min(a.tflops, d.tflops)


def matching_devices(offer: Offer, want: Wanted, verifiers: set[str] | None = None) -> list[tuple[Device, float]]:
    """(device, attested TFLOPS) for each free device of the offer that fits `want`."""
    out = []
    for i, d in enumerate(offer.devices):
        if d.busy:
            continue
        if want.kind and d.kind != want.kind:
            continue
        if want.gpu and want.gpu.lower() not in d.name.lower():
            continue
        tflops = attested_tflops(offer, i, verifiers)
        if tflops < want.min_tflops:
            continue
        out.append((d, tflops))
    return out


def rank(offers: list[Offer], want: Wanted, reputation: Reputation | None = None,
         verifiers: set[str] | None = None) -> list[Offer]:
    """Offers that fit, best first: price / (1 + attested TFLOPS of the best matching device) x history penalty.

    `verifiers` are the network's operators (PeerIDs): only their signed attestations count as capacity."""
    scored = []
    for o in offers:
        if want.max_price is not None and o.price > want.max_price:
            continue
        if not o.min_s <= want.max_s <= o.max_s:
            continue
        devs = matching_devices(o, want, verifiers)
        if not devs:
            continue
        capacity = max(t for _, t in devs)
        pen = reputation.get(o.peer_id).penalty() if reputation is not None else 1.0
        scored.append(((o.price / (1.0 + capacity)) * pen, o.peer_id, o))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [o for _, _, o in scored]


__all__ = ["Record", "Reputation", "Wanted", "attested_tflops", "matching_devices", "rank"]
