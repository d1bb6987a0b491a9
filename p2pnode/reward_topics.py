"""The two gossip topics rewards are recomputed from, as every node role subscribes to them.

``/iog/attest/1`` (signed attestations, :class:`~p2pnode.compute.attest_service.AttestTopic`) and
``/iog/rewards/1`` (signed epoch manifests, :class:`~p2pnode.chain.rewards_gossip.RewardsTopic`). Each node
validates before relaying and, when it has a store, keeps what passed: that history is what
``p2pnode rewards verify --epoch N`` and ``p2pnode rewards earnings`` read on a provider's own home.

Without network.json a node still checks attestations (signature, signer = verifier = gossip origin, time window)
but cannot tell an operator from anyone else, and cannot check manifests at all, so it does not subscribe to
``/iog/rewards/1`` (and does not relay it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RewardTopics:
    """What :func:`subscribe_reward_topics` registered (validators keep their own counters and state)."""

    attest: Any
    rewards: Any | None


async def subscribe_reward_topics(gossip: Any, *, params: Any = None, store: Any = None) -> RewardTopics:
    """Register both validators on a running :class:`~p2pnode.net.gossip.Gossip`; handlers store when `store`."""
    from .compute.attest import record_attestation
    from .compute.attest_service import AttestTopic, operator_peer_ids

    attest = AttestTopic(operator_peer_ids(params) if params is not None else None)
    rewards = None
    if params is not None:
        from .chain.rewards_gossip import RewardsTopic

        rewards = RewardsTopic.for_network(params, store)
    if store is not None:
        store.ensure_schemas()  # tables of modules imported after the store was opened

    def keep_attestation(signed, msg) -> None:
        record_attestation(store, signed)

    await gossip.add_topic(attest, keep_attestation if store is not None else None)
    if rewards is not None:
        await gossip.add_topic(rewards, rewards.handle if store is not None else None)
    return RewardTopics(attest=attest, rewards=rewards)


__all__ = ["RewardTopics", "subscribe_reward_topics"]
