"""An epoch's allocation inputs from what a node has seen: stored signed attestations plus stake read from chain.

Operators build manifests with this, and ``p2pnode rewards verify`` recomputes them with exactly the same code, so
the only way two honest nodes disagree is by having seen different attestations or chain state. Every stored
attestation envelope is re-verified here (signature, verifier is a network operator) before it counts: the table
is evidence, not trust.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..identity import peer_id_from_public_key, public_key_from_peer_id, solana_address
from ..store import Store, schema
from ..wire import WireError, open_envelope
from .rewards import Allocation, EpochClock, Observation, StakeState, allocate

schema("rewards_inputs", """
    CREATE TABLE IF NOT EXISTS reward_manifests (
        epoch    INTEGER PRIMARY KEY,
        signer   BLOB NOT NULL,
        root     BLOB NOT NULL,
        carry_out INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS reward_own_manifests (
        epoch    INTEGER PRIMARY KEY,     -- manifests this operator computed and signed itself
        root     BLOB NOT NULL,
        envelope BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS reward_slashed (
        provider TEXT NOT NULL,           -- Solana address
        epoch    INTEGER NOT NULL,        -- first epoch it is excluded from
        evidence TEXT NOT NULL,
        PRIMARY KEY (provider, epoch)
    );
""")


@dataclass(frozen=True)
class SeenDevice:
    """A device as attested (name/kind for the required-stake rule)."""

    name: str
    kind: str


def provider_address(provider: str) -> str:
    """Attestations name the provider by PeerID; rewards are keyed by its Solana address (the same key)."""
    try:
        return solana_address(public_key_from_peer_id(provider))
    except ValueError:
        return provider  # already an address; allocate() rejects anything that is neither


def operator_peer_ids(operators: Iterable[str]) -> set[str]:
    """network.json lists operators as Solana addresses; attestations name verifiers by PeerID."""
    import base58

    return {peer_id_from_public_key(base58.b58decode(op)) for op in operators}


def observations(store: Store, clock: EpochClock, epoch: int, operators: Collection[str]
                 ) -> tuple[list[Observation], dict[str, dict[int, SeenDevice]]]:
    """Observations from stored attestations in the epoch by known operators, and each provider's devices."""
    from ..compute.attest import Attestation  # numpy-only module; registers the message type

    verifiers = operator_peer_ids(operators)
    start, end = clock.bounds(epoch)
    rows = store.query("SELECT envelope FROM attestations WHERE time >= ? AND time < ? ORDER BY challenge",
                       (start, end))
    out: list[Observation] = []
    devices: dict[str, dict[int, SeenDevice]] = {}
    for (raw,) in rows:
        try:
            signed = open_envelope(bytes(raw), Attestation)
        except WireError:
            continue  # a corrupt row is not evidence
        a = signed.message
        if a.verifier not in verifiers or peer_id_from_public_key(signed.signer) != a.verifier:
            continue
        addr = provider_address(a.provider)
        out.append(Observation(provider=addr, device=f"{a.device_index}", passed=bool(a.passed),
                               tflops_milli=int(a.tflops * 1000), at=int(a.time), challenge=bytes(a.challenge)))
        if a.device is not None and a.passed:
            # required stake covers the devices that earn (passed); a failed or unanswered challenge's device
            # record (e.g. the placeholder of an unreachable provider) must not change what is required
            devices.setdefault(addr, {})[a.device_index] = SeenDevice(name=a.device.name, kind=a.device.kind)
    return out, devices


def slashed_in(store: Store, epoch: int) -> set[str]:
    return {r[0] for r in store.query("SELECT provider FROM reward_slashed WHERE epoch <= ?", (epoch,))}


def record_slash(store: Store, provider: str, epoch: int, evidence: str) -> None:
    with store.tx() as db:
        db.execute("INSERT OR IGNORE INTO reward_slashed(provider, epoch, evidence) VALUES(?, ?, ?)",
                   (provider, epoch, evidence))


async def stakes_for(client, params, devices: dict[str, dict[int, SeenDevice]]) -> dict[str, StakeState]:
    """Locked stake (chain) against the stake required for the devices attested (network rule)."""
    from .stake import required_stake, stake_of

    out = {}
    for addr, devs in sorted(devices.items()):
        out[addr] = StakeState(stake=await stake_of(client, params, addr),
                               required=required_stake(params, list(devs.values())))
    return out


async def slashed_on_chain(client, params, providers: Iterable[str], clock: EpochClock, epoch: int) -> set[str]:
    """Providers whose stake was slashed by a transaction that landed during the epoch, read from chain.

    A slashing is a quorum transfer stake account -> treasury with the memo ``iog/slash/1 <provider> <evidence>``
    (:func:`p2pnode.chain.stake.slash_message`). Only a *landed* transaction that really moves tokens out of this
    provider's stake account to the treasury counts: anyone can attach a look-alike memo to a transaction that
    merely mentions the account, but only the quorum can make that transfer succeed. Later epochs are governed by
    the reduced stake (eligible again once it is back at the required level).
    """
    from .rewards_onchain import parse_transfers
    from .stake import SLASH_MEMO, stake_addresses
    from .token import pubkey

    start, end = clock.bounds(epoch)
    treasury = pubkey(params.treasury)
    out = set()
    for provider in sorted(set(providers)):
        account = stake_addresses(provider).account
        for st in await client.signatures_for_address(account, limit=1000, commitment="confirmed"):
            if st.block_time is not None and st.block_time < start:
                break  # newest first: everything further is older than the epoch
            if st.err is not None or not st.memo or SLASH_MEMO not in st.memo or st.block_time is None \
                    or st.block_time >= end:
                continue
            got = await client.get_transaction(st.signature)
            if got is None or got[2]:
                continue
            tx = got[0]
            memos, transfers = parse_transfers(tx.message, list(tx.message.account_keys), account)
            if any(m.startswith(f"{SLASH_MEMO} {provider} ") for m in memos) and \
                    any(dest == treasury and amount > 0 for dest, amount in transfers):
                out.add(provider)
                break
    return out


async def compute_allocation(store: Store, client, params, epoch: int, *, carry_in: int | None = None,
                             slashed: Collection[str] | None = None) -> Allocation:
    """The epoch as this node sees it. `carry_in` defaults to the stored previous manifest's carry_out (0 at 0).

    Slashed = slashings that landed on chain during the epoch (:func:`slashed_on_chain`) plus any exclusion an
    operator recorded (:func:`record_slash`), unless `slashed` is given.
    """
    clock = EpochClock(genesis_time=params.genesis_time, epoch_s=params.epoch_s)
    obs, devices = observations(store, clock, epoch, params.operators)
    stakes = await stakes_for(client, params, devices)
    if carry_in is None:
        carry_in = previous_carry(store, epoch)
    if slashed is None:
        slashed = slashed_in(store, epoch) | await slashed_on_chain(client, params, {o.provider for o in obs},
                                                                    clock, epoch)
    return allocate(epoch, clock=clock, observations=obs, stakes=stakes, slashed=slashed, carry_in=carry_in)


def previous_carry(store: Store, epoch: int) -> int:
    if epoch <= 0:
        return 0
    row = store.query("SELECT carry_out FROM reward_manifests WHERE epoch = ?", (epoch - 1,))
    return int(row[0][0]) if row else 0


def record_manifest(store: Store, signed) -> bool:
    """Keep a validated manifest (first one per epoch wins; a second, different one is evidence of equivocation)."""
    m = signed.message
    with store.tx() as db:
        cur = db.execute("INSERT OR IGNORE INTO reward_manifests(epoch, signer, root, carry_out, envelope) "
                         "VALUES(?, ?, ?, ?, ?)", (m.epoch, signed.signer, m.root, m.carry_out, signed.raw))
        return cur.rowcount == 1


def record_own_manifest(store: Store, signed) -> None:
    """An operator's own signed manifest, kept apart from gossip (reward_manifests keeps the first one *received*).

    Closing, catching up and paying go by these, so an operator never skips an epoch because another operator's
    manifest arrived first, and the delegate pays what it computed itself.
    """
    with store.tx() as db:
        db.execute("INSERT OR IGNORE INTO reward_own_manifests(epoch, root, envelope) VALUES(?, ?, ?)",
                   (signed.message.epoch, signed.message.root, signed.raw))


def own_manifest(store: Store, epoch: int):
    from .rewards_manifest import RewardsManifest

    row = store.query("SELECT envelope FROM reward_own_manifests WHERE epoch = ?", (epoch,))
    return open_envelope(bytes(row[0][0]), RewardsManifest) if row else None


def stored_manifest(store: Store, epoch: int):
    from .rewards_manifest import RewardsManifest

    row = store.query("SELECT envelope FROM reward_manifests WHERE epoch = ?", (epoch,))
    return open_envelope(bytes(row[0][0]), RewardsManifest) if row else None


def to_json(alloc: Allocation) -> str:
    return json.dumps({"epoch": alloc.epoch, "emission": alloc.emission, "carry_in": alloc.carry_in,
                       "carry_out": alloc.carry_out, "root": alloc.root.hex(),
                       "entries": [e.to_wire() for e in alloc.entries],
                       "excluded": [x.to_wire() for x in alloc.excluded]}, indent=2)
