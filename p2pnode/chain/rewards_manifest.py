"""The signed rewards manifest gossiped on ``/iog/rewards/1``, and the validator every node runs on it.

The manifest carries everything needed to recompute the epoch's split *without trusting the operator*: each
paid entry's weight inputs (capacity class, challenges issued/answered, stake, required stake), the exclusions,
emission and carry. The validator re-runs :func:`p2pnode.chain.rewards.split` on those inputs and rejects the
manifest unless amounts, carry and Merkle root come out identical; whether the *inputs* match the gossiped
attestations and chain state is checked by ``p2pnode rewards verify`` (it needs the attestation history).

Size: one envelope is at most 1 MiB (the control-frame and gossip limit); an entry costs about 120 bytes, so a
manifest holds up to :data:`MAX_ENTRIES` paid providers. Beyond that the manifest would need paging (not built).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..errors import ProtocolError
from ..identity import Identity
from ..wire import MAX_ENVELOPE, Message, SchemaError, Signed, bounded, message, open_envelope, seal
from .emission import hour_emission
from .rewards import Allocation, Excluded, RewardEntry, address_key, split

TOPIC = "/iog/rewards/1"
MAX_ENTRIES = 7000
MAX_EXCLUDED = 2000


class ManifestRejected(ProtocolError):
    """A rewards manifest failed validation; it is dropped and its sender penalised."""


class UnknownOperator(ManifestRejected):
    """Signed by a key that is not one of the network's operators."""


class ManifestMismatch(ManifestRejected):
    """Amounts, carry or root do not follow from the manifest's own inputs (a forged or buggy manifest)."""


@message("rewards_manifest", max_size=MAX_ENVELOPE)
@dataclass(frozen=True)
class RewardsManifest(Message):
    """One epoch's allocation; `pool` binds it to one network (the rewards pool token account)."""

    pool: str = bounded(max_len=44)
    epoch: int = bounded(min=0, max=2**40)
    epoch_s: int = bounded(min=1, max=2**31)
    emission: int = bounded(min=0, max=2**64 - 1)
    carry_in: int = bounded(min=0, max=2**64 - 1)
    carry_out: int = bounded(min=0, max=2**64 - 1)
    entries: list[RewardEntry] = bounded(max_len=MAX_ENTRIES)
    excluded: list[Excluded] = bounded(max_len=MAX_EXCLUDED)
    root: bytes = bounded(exact_len=32)
    created_at: int = bounded(min=0, max=2**40)

    def check(self, where: str) -> None:
        keys = [address_key(e.address) for e in self.entries]
        if any(a >= b for a, b in zip(keys, keys[1:])):
            raise SchemaError(f"{where}.entries: not strictly sorted by address")
        xkeys = [address_key(x.address) for x in self.excluded]
        if any(a >= b for a, b in zip(xkeys, xkeys[1:])):
            raise SchemaError(f"{where}.excluded: not strictly sorted by address")
        if set(keys) & set(xkeys):
            raise SchemaError(f"{where}: an address is both paid and excluded")

    @classmethod
    def from_allocation(cls, alloc: Allocation, *, pool: str, epoch_s: int, created_at: int) -> "RewardsManifest":
        return cls(pool=pool, epoch=alloc.epoch, epoch_s=epoch_s, emission=alloc.emission, carry_in=alloc.carry_in,
                   carry_out=alloc.carry_out, entries=list(alloc.entries), excluded=list(alloc.excluded),
                   root=alloc.root, created_at=created_at)

    def allocation(self) -> Allocation:
        return Allocation(epoch=self.epoch, emission=self.emission, carry_in=self.carry_in,
                          carry_out=self.carry_out, entries=tuple(self.entries), excluded=tuple(self.excluded),
                          root=self.root)

    def entry_for(self, address: str) -> RewardEntry | None:
        return next((e for e in self.entries if e.address == address), None)


def sign_manifest(alloc: Allocation, identity: Identity, *, pool: str, epoch_s: int, created_at: int) -> bytes:
    return seal(RewardsManifest.from_allocation(alloc, pool=pool, epoch_s=epoch_s, created_at=created_at), identity)


@dataclass
class ManifestValidator:
    """What every node checks before relaying or believing a manifest.

    `operators` are the operators' public keys (from network.json); `pool` the rewards pool address;
    `carry_of(epoch)` optionally returns the carry_out of an already accepted manifest for that epoch, so a chain
    of manifests cannot invent or drop carry.
    """

    operators: Collection[bytes]
    pool: str
    carry_of: Callable[[int], int | None] | None = None

    def validate(self, data: bytes) -> Signed[RewardsManifest]:
        signed = open_envelope(data, RewardsManifest)  # signature before anything is interpreted
        if signed.signer not in set(self.operators):
            raise UnknownOperator(f"rewards manifest signed by {signed.signer_peer_id}, not a network operator")
        m = signed.message
        if m.pool != self.pool:
            raise ManifestMismatch(f"manifest for pool {m.pool}, this network's pool is {self.pool}")
        if m.emission != hour_emission(m.epoch):
            raise ManifestMismatch(f"epoch {m.epoch} emits {hour_emission(m.epoch)}, manifest says {m.emission}")
        if self.carry_of is not None and m.epoch > 0:
            prev = self.carry_of(m.epoch - 1)
            if prev is not None and prev != m.carry_in:
                raise ManifestMismatch(f"carry_in {m.carry_in} differs from epoch {m.epoch - 1}'s carry_out {prev}")
        expected = split(m.epoch, emission=m.emission, carry_in=m.carry_in, inputs=list(m.entries),
                         excluded=list(m.excluded))
        if [e.amount for e in expected.entries] != [e.amount for e in m.entries] or len(expected.entries) != len(m.entries):
            raise ManifestMismatch(f"epoch {m.epoch}: amounts do not follow from the weights")
        if expected.carry_out != m.carry_out:
            raise ManifestMismatch(f"epoch {m.epoch}: carry_out {m.carry_out}, weights give {expected.carry_out}")
        if expected.root != m.root:
            raise ManifestMismatch(f"epoch {m.epoch}: Merkle root does not match the entries")
        return signed
