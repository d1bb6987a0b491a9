"""Hourly reward allocation: who earned what in one epoch, computed the same way by everyone.

Pure and deterministic on purpose: every operator computes the epoch independently, and any provider or auditor
recomputes it from the gossiped attestations and chain state (``p2pnode rewards verify``). Only integers are used
(no floats, no iteration-order dependence), so equal inputs give byte-identical Merkle roots on every machine.

Rules (issue 6, DESIGN.md "Hourly rewards"):

* **epoch -> schedule hour**: epoch ``e`` pays ``hour_emission(e)``. The epoch *length* (3600 s by default, a few
  seconds on a devnet) only maps wall time to ``e``; it never changes the hour index, so a devnet walks the real
  20-year schedule faster.
* **eligible** = stake >= the stake required for its devices, at least one passed attestation in the epoch, not
  slashed. Everyone else is listed as excluded with a reason, and gets nothing.
* **weight** = capacity class x answered fraction, as the integer ``class * (answered * 10**6 // issued)``:
  ``issued`` counts distinct challenges in the epoch (passed or failed), ``answered`` the passed ones. The class
  (:func:`capacity_class`) is a power of two of the attested TFLOPS, so measurement noise does not move weights.
* **shares**: largest-remainder split of ``E(h) + carry_in`` proportional to weight, remainders tied by address
  (raw 32-byte public key order); an epoch with no eligible provider carries everything. Always
  ``sum(amounts) + carry_out == E(h) + carry_in``.
* **Merkle root** of the paid (address, amount) leaves, see :func:`leaf_hash`/:func:`node_hash`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import base58

from ..wire import Record, SchemaError, bounded
from .emission import hour_emission

UPTIME_SCALE = 10**6  # answered fraction in parts per million (exact integer weights)
CLASS_UNIT_MILLI = 125  # capacity class steps: 1/8 TFLOPS doubles the class each doubling
MAX_AMOUNT = 2**64 - 1

LEAF_DOMAIN = b"iog/rewards/1/leaf\x00"
NODE_DOMAIN = b"iog/rewards/1/node\x00"
EMPTY_DOMAIN = b"iog/rewards/1/empty\x00"

# exclusion reasons (stable strings: they travel in manifests)
UNSTAKED = "unstaked"
NO_PASS = "no_pass"
SLASHED = "slashed"
REASONS = (UNSTAKED, NO_PASS, SLASHED)


# --- time -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochClock:
    """Maps wall time to epochs; the epoch index *is* the schedule hour whatever the epoch length."""

    genesis_time: int
    epoch_s: int = 3600

    def __post_init__(self) -> None:
        if self.epoch_s <= 0:
            raise ValueError("epoch_s must be positive")

    def epoch_at(self, unix_time: float) -> int:
        return (int(unix_time) - self.genesis_time) // self.epoch_s

    def bounds(self, epoch: int) -> tuple[int, int]:
        """[start, end) of the epoch in unix seconds."""
        start = self.genesis_time + epoch * self.epoch_s
        return start, start + self.epoch_s

    @staticmethod
    def hour(epoch: int) -> int:
        return epoch

    def emission(self, epoch: int) -> int:
        return hour_emission(self.hour(epoch))


# --- inputs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One attestation outcome seen in the epoch, already signature-checked and from a known verifier."""

    provider: str  # the provider's Solana address (= its node key)
    device: str  # device name/index as attested; capacity sums over distinct devices
    passed: bool
    tflops_milli: int  # measured capacity in thousandths of a TFLOPS (integer: the weight must be exact)
    at: int  # unix seconds
    challenge: bytes  # challenge hash: a re-gossiped attestation counts once


@dataclass(frozen=True)
class StakeState:
    """Chain state of one provider at the epoch's end."""

    stake: int
    required: int


def capacity_class(tflops_milli: int) -> int:
    """1, 2, 4, 8, ... doubling each time the attested TFLOPS double (1/8 TFLOPS or less is class 1)."""
    q = max(0, int(tflops_milli)) // CLASS_UNIT_MILLI
    return 1 << q.bit_length()


def address_key(address: str) -> bytes:
    """The 32 raw public-key bytes of a Solana address: the canonical sort and Merkle key.

    Cached: an epoch decodes every provider's address several times (eligibility, split order, Merkle leaves), and
    pure-Python base58 was most of the 10,000-provider allocation time.
    """
    if not isinstance(address, str):
        raise SchemaError(f"not a base58 address: {address!r:.64}")
    return _address_key(address)


@lru_cache(maxsize=1 << 17)
def _address_key(address: str) -> bytes:
    if len(address) <= 44:
        try:  # solders' Rust decoder: same bytes as base58 for a 32-byte key, ~20x faster
            from solders.pubkey import Pubkey

            return bytes(Pubkey.from_string(address))
        except Exception:
            pass  # fall through for the precise error
    try:
        raw = base58.b58decode(address)
    except Exception as exc:
        raise SchemaError(f"not a base58 address: {address[:64]!r}") from exc
    if len(raw) != 32:
        raise SchemaError(f"address {address[:64]!r} is not 32 bytes")
    return raw


# --- outputs (Records so they travel in the manifest unchanged) ------------------------------------------


@dataclass(frozen=True)
class RewardEntry(Record):
    """One paid provider with the inputs its weight came from, so anyone can recompute the split."""

    address: str = bounded(max_len=44)
    amount: int = bounded(min=0, max=MAX_AMOUNT)
    cls: int = bounded(min=1, max=2**40)  # capacity class
    issued: int = bounded(min=1, max=2**20)
    answered: int = bounded(min=1, max=2**20)
    stake: int = bounded(min=0, max=MAX_AMOUNT)
    required: int = bounded(min=0, max=MAX_AMOUNT)

    @property
    def weight(self) -> int:
        return self.cls * (self.answered * UPTIME_SCALE // self.issued)

    def check(self, where: str) -> None:
        if self.answered > self.issued:
            raise SchemaError(f"{where}: answered {self.answered} > issued {self.issued}")
        if self.stake < self.required:
            raise SchemaError(f"{where}: stake below required cannot be paid")


@dataclass(frozen=True)
class Excluded(Record):
    """A provider seen in the epoch that earns nothing, and why."""

    address: str = bounded(max_len=44)
    reason: str = bounded(max_len=16)

    def check(self, where: str) -> None:
        if self.reason not in REASONS:
            raise SchemaError(f"{where}.reason: {self.reason!r} is not one of {REASONS}")


@dataclass(frozen=True)
class Allocation:
    """The epoch's result: amounts per eligible provider, exclusions, carry and Merkle root."""

    epoch: int
    emission: int
    carry_in: int
    carry_out: int
    entries: tuple[RewardEntry, ...]  # sorted by address_key
    excluded: tuple[Excluded, ...]  # sorted by address_key
    root: bytes = field(repr=False)

    @property
    def paid(self) -> int:
        return sum(e.amount for e in self.entries)


# --- the split --------------------------------------------------------------------------------------------


def largest_remainder(pool: int, weights: list[tuple[bytes, int]]) -> list[int]:
    """Split `pool` proportionally to integer weights; leftover units go to the largest remainders, ties by key.

    `weights` is a list of (key, weight > 0); the result is aligned with it and sums to `pool` exactly.
    """
    total = sum(w for _, w in weights)
    if total <= 0:
        raise ValueError("largest_remainder needs a positive total weight")
    shares = []
    remainders = []
    for i, (key, w) in enumerate(weights):
        q, r = divmod(pool * w, total)
        shares.append(q)
        remainders.append((-r, key, i))
    leftover = pool - sum(shares)
    if leftover:
        remainders.sort()
        for _, _, i in remainders[:leftover]:
            shares[i] += 1
    return shares


def summarize(epoch: int, clock: EpochClock, observations: Iterable[Observation],
              ) -> dict[str, tuple[int, int, int]]:
    """Per provider: (capacity class, issued, answered) from the epoch's observations.

    Only observations inside the epoch's [start, end) count; a challenge hash counts once per provider (a replayed
    or re-gossiped attestation changes nothing). Capacity = sum over devices of the class of that device's best
    passed measurement.
    """
    start, end = clock.bounds(epoch)
    seen: set[tuple[str, bytes]] = set()
    issued: dict[str, int] = {}
    answered: dict[str, int] = {}
    best: dict[str, dict[str, int]] = {}
    for ob in observations:
        if not (start <= ob.at < end):
            continue
        key = (ob.provider, ob.challenge)
        if key in seen:
            continue
        seen.add(key)
        issued[ob.provider] = issued.get(ob.provider, 0) + 1
        if ob.passed:
            answered[ob.provider] = answered.get(ob.provider, 0) + 1
            dev = best.setdefault(ob.provider, {})
            dev[ob.device] = max(dev.get(ob.device, 0), ob.tflops_milli)
    out = {}
    for provider, n in issued.items():
        cls = sum(capacity_class(m) for m in best.get(provider, {}).values())
        out[provider] = (cls, n, answered.get(provider, 0))
    return out


def allocate(epoch: int, *, clock: EpochClock, observations: Iterable[Observation],
             stakes: Mapping[str, StakeState], slashed: Iterable[str] = (), carry_in: int = 0) -> Allocation:
    """The whole epoch: eligibility, weights, the largest-remainder split and the Merkle root."""
    if carry_in < 0:
        raise ValueError("carry_in must be non-negative")
    slashed_set = set(slashed)
    summary = summarize(epoch, clock, observations)
    eligible: list[tuple[bytes, str, int, int, int, StakeState]] = []
    excluded: list[tuple[bytes, Excluded]] = []
    for provider, (cls, issued, answered) in summary.items():
        key = address_key(provider)
        st = stakes.get(provider)
        if provider in slashed_set:
            reason = SLASHED
        elif answered == 0:
            reason = NO_PASS
        elif st is None or st.stake < st.required:
            reason = UNSTAKED
        else:
            eligible.append((key, provider, cls, issued, answered, st))
            continue
        excluded.append((key, Excluded(address=provider, reason=reason)))
    return split(epoch, emission=clock.emission(epoch), carry_in=carry_in,
                 inputs=[RewardEntry(address=p, amount=0, cls=c, issued=i, answered=a, stake=s.stake,
                                     required=s.required) for _, p, c, i, a, s in eligible],
                 excluded=[x for _, x in sorted(excluded, key=lambda t: t[0])])


def split(epoch: int, *, emission: int, carry_in: int, inputs: list[RewardEntry],
          excluded: list[Excluded] = ()) -> Allocation:
    """Amounts from weight inputs (ignoring any `amount` given): the step a manifest validator re-runs."""
    keyed = sorted(((address_key(e.address), e) for e in inputs), key=lambda t: t[0])
    for a, b in zip(keyed, keyed[1:]):
        if a[0] == b[0]:
            raise SchemaError(f"provider {a[1].address} listed twice")
    pool = emission + carry_in
    weighted = [(k, e.weight) for k, e in keyed]
    if not weighted or sum(w for _, w in weighted) == 0:
        entries: tuple[RewardEntry, ...] = ()
        carry_out = pool
    else:
        amounts = largest_remainder(pool, weighted)
        if max(amounts) > MAX_AMOUNT:
            raise ValueError("an amount exceeds the u64 range of an SPL transfer")
        entries = tuple(RewardEntry(address=e.address, amount=amt, cls=e.cls, issued=e.issued, answered=e.answered,
                                    stake=e.stake, required=e.required) for (_, e), amt in zip(keyed, amounts))
        carry_out = 0
    root = merkle_root(epoch, [(address_key(e.address), e.amount) for e in entries], presorted=True)
    return Allocation(epoch=epoch, emission=emission, carry_in=carry_in, carry_out=carry_out, entries=entries,
                      excluded=tuple(excluded), root=root)


# --- Merkle tree ------------------------------------------------------------------------------------------
# leaf  = sha256(LEAF_DOMAIN  || epoch u64 BE || pubkey 32 || amount u64 BE)   (epoch inside: no cross-epoch reuse)
# node  = sha256(NODE_DOMAIN  || left || right)                               (domains: a leaf is never a node)
# empty = sha256(EMPTY_DOMAIN || epoch u64 BE)
# Leaves are sorted by pubkey bytes, one per address; a level with an odd count promotes its last node unchanged
# (no duplication, so no second-preimage trick with a repeated last leaf).


def leaf_hash(epoch: int, pubkey: bytes, amount: int) -> bytes:
    return hashlib.sha256(LEAF_DOMAIN + epoch.to_bytes(8, "big") + pubkey + amount.to_bytes(8, "big")).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_DOMAIN + left + right).digest()


def _levels(epoch: int, leaves: list[tuple[bytes, int]], presorted: bool) -> list[list[bytes]]:
    if not presorted:
        leaves = sorted(leaves)
    level = [leaf_hash(epoch, k, a) for k, a in leaves]
    levels = [level]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels.append(level)
    return levels


def merkle_root(epoch: int, leaves: list[tuple[bytes, int]], *, presorted: bool = False) -> bytes:
    if not leaves:
        return hashlib.sha256(EMPTY_DOMAIN + epoch.to_bytes(8, "big")).digest()
    return _levels(epoch, leaves, presorted)[-1][0]


def merkle_proof(epoch: int, leaves: list[tuple[bytes, int]], pubkey: bytes) -> list[tuple[bytes, bool]]:
    """Sibling hashes from leaf to root; the bool says the sibling is on the left."""
    ordered = sorted(leaves)
    index = next((i for i, (k, _) in enumerate(ordered) if k == pubkey), None)
    if index is None:
        raise KeyError("address not in the tree")
    proof = []
    for level in _levels(epoch, ordered, True)[:-1]:
        sib = index ^ 1
        if sib < len(level):
            proof.append((level[sib], sib < index))
        index //= 2
    return proof


def verify_proof(epoch: int, pubkey: bytes, amount: int, proof: list[tuple[bytes, bool]], root: bytes) -> bool:
    h = leaf_hash(epoch, pubkey, amount)
    for sib, left in proof:
        h = node_hash(sib, h) if left else node_hash(h, sib)
    return h == root
