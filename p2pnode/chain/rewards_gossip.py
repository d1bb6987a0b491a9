"""The ``/iog/rewards/1`` topic validator: every node checks manifests before relaying and records accepted ones.

Kept apart from :mod:`rewards_manifest` because it plugs into the libp2p gossip layer (``p2pnode.net.gossip``),
which pure recomputation (``p2pnode rewards verify``) does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..net.gossip import GossipMessage, TopicValidator
from ..store import Store
from ..wire import MAX_ENVELOPE
from .rewards_inputs import previous_carry, record_manifest
from .rewards_manifest import TOPIC, ManifestValidator, UnknownOperator


@dataclass
class RewardsTopic(TopicValidator):
    """Signature by a known operator (who must also be the gossip origin), schema, recomputed split and root."""

    checker: ManifestValidator
    store: Store | None = None
    topic: str = TOPIC
    max_size: int = MAX_ENVELOPE

    @classmethod
    def for_network(cls, params, store: Store | None = None) -> "RewardsTopic":
        import base58

        ops = [base58.b58decode(o) for o in params.operators]
        carry = None
        if store is not None:
            def carry(epoch: int) -> int | None:
                row = store.query("SELECT carry_out FROM reward_manifests WHERE epoch = ?", (epoch,))
                return int(row[0][0]) if row else None
        return cls(checker=ManifestValidator(operators=ops, pool=params.rewards_pool, carry_of=carry), store=store)

    def validate(self, msg: GossipMessage):
        signed = self.checker.validate(msg.data)
        if signed.signer_peer_id != msg.origin:
            raise UnknownOperator("rewards manifest gossiped by a peer other than its signing operator")
        return signed

    def handle(self, signed, gm: GossipMessage) -> None:
        """Topic handler: keep the manifest (the node's own record for `p2pnode rewards`)."""
        if self.store is not None:
            record_manifest(self.store, signed)


__all__ = ["RewardsTopic", "previous_carry"]
