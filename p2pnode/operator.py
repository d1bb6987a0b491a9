"""The bootstrap operator's node: a seed peer with a stable identity and a fixed port.

It is a DHT server (new nodes look themselves up through it), relays gossip on every topic it validates, keeps
the offer book (so newcomers can copy it over ``/iog/status/1.0.0``) and prints its full ``/p2p/`` address for
others to put in their bootstrap list. Like every role it validates ``/iog/attest/1`` and ``/iog/rewards/1``
(:mod:`p2pnode.reward_topics`) and, when its home has a network.json, keeps what passed in its store.

When its key is one of the network's operators (network.json), ``running()`` also starts the operator duties,
each owning what it needs and all cancelled when the node stops:

* the arbiter and slashing service (:class:`~p2pnode.market.evidence.ArbiterService`);
* the rewards epoch service (:class:`~p2pnode.operator_epochs.EpochService`): it challenges the providers in the
  offer book at random times over ``/iog/attest/1.0.0`` (:class:`~p2pnode.compute.attest_service.Challenger`),
  gossips the signed verdicts, closes each epoch (``epoch_s`` from network.json) into a signed manifest gossiped on
  ``/iog/rewards/1`` and, while its key is the rewards pool's delegate, pays it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .config import NodeConfig
from .identity import Identity
from .net.node import BOOTSTRAP, NetNode

log = logging.getLogger(__name__)


class BootstrapNode:
    """A seed peer; an operator's duties on top when network.json lists its key.

    `arbiter` / `epochs`: False turns that duty off (tests); `epoch_options` overrides
    :class:`~p2pnode.operator_epochs.EpochService` settings (e.g. ``grace_s``); `challenge_policy` the size of
    challenges (default: from the epoch length, :meth:`ChallengePolicy.for_epoch`).
    """

    def __init__(self, cfg: NodeConfig, *, identity: Identity | None = None, arbiter: bool | None = None,
                 epochs: bool | None = None, epoch_options: dict[str, Any] | None = None,
                 challenge_policy: Any = None) -> None:
        self.cfg = cfg
        self.identity = identity or Identity.load(cfg.key_file)
        self.net = NetNode(self.identity, cfg.net, BOOTSTRAP, home=cfg.home)
        self.nursery: trio.Nursery | None = None
        self.params = None
        if cfg.network_file.exists():
            from .chain.network import NetworkParams

            self.params = NetworkParams.load(cfg.network_file)
        self.store = None
        self.topics = None  # reward_topics.RewardTopics once running
        # arbiter + slashing duties, rewards epochs: when this seed's key is one of the network's operators
        self.arbiter = None
        self.epochs = None
        self.challenger = None
        self._arbiter_wanted = arbiter
        self._epochs_wanted = epochs
        self._epoch_options = dict(epoch_options or {})
        self._challenge_policy = challenge_policy
        self._client = None
        self._rpc = None

    @property
    def is_operator(self) -> bool:
        return self.params is not None and self.identity.address in self.params.operators

    def _open_duties(self) -> None:
        """Store, chain clients and duty services; called once the host and gossip run (services need them)."""
        if self.params is None:
            return
        from .store import Store

        self.store = Store(self.cfg.db_file)
        if not self.is_operator:
            return
        from .chain.rpc import ChainClient

        self._client = ChainClient(self.cfg.chain.rpc_url, timeout_s=self.cfg.chain.confirm_timeout_s)
        if self._arbiter_wanted is not False:
            from .market.evidence import ArbiterService

            self.arbiter = ArbiterService(self.identity, self.store, self.params, self._client,
                                          slash_bps=self.cfg.market.slash_bps, gossip=self.net.gossip)
        if self._epochs_wanted is not False:
            self.epochs = self._make_epochs()

    def _make_epochs(self):
        from solana.rpc.async_api import AsyncClient

        from .compute.attest_service import (
            ChallengePolicy,
            Challenger,
            epoch_settings,
            operator_peer_ids,
        )
        from .operator_epochs import EpochService

        settings: dict[str, Any] = {**epoch_settings(self.params.epoch_s), **self._epoch_options}
        timeout = float(settings.get("challenge_timeout_s", 60.0))
        policy = self._challenge_policy or ChallengePolicy.for_epoch(self.params.epoch_s)
        self.challenger = Challenger(self.net, self.identity, self.store, publish=self._publish, policy=policy,
                                     busy_wait_s=timeout / 2, open_timeout_s=min(self.cfg.net.dial_timeout_s, timeout),
                                     operators=operator_peer_ids(self.params))
        # the distributor's own HTTP client (solana-py AsyncClient: plain calls are trio-safe through anyio)
        self._rpc = AsyncClient(self.cfg.chain.rpc_url, timeout=self.cfg.chain.confirm_timeout_s)
        return EpochService.for_operator(self.identity, self.params, self.store, self._client, self._rpc,
                                         publish=self._publish, challenge=self.challenger.challenge,
                                         providers=self.challenger.providers, **settings)

    async def _close_duties(self) -> None:
        if self._rpc is not None:
            try:
                await self._rpc.close()
            except Exception as exc:  # closing an HTTP pool must not hide why we stopped
                log.debug("closing the distributor's RPC client: %s", exc)
            self._rpc = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def _publish(self, topic: str, data: bytes) -> None:
        assert self.net.gossip is not None
        await self.net.gossip.publish(topic, data)

    @classmethod
    @asynccontextmanager
    async def start(cls, cfg: NodeConfig, **kwargs) -> AsyncIterator["BootstrapNode"]:
        node = cls(cfg, **kwargs)
        async with node.running():
            yield node

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def book(self):
        return self.net.book

    def addrs(self) -> list[str]:
        return self.net.addrs()

    @asynccontextmanager
    async def running(self) -> AsyncIterator["BootstrapNode"]:
        try:
            async with self.net.running(), trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    self._open_duties()
                    from .reward_topics import subscribe_reward_topics

                    self.topics = await subscribe_reward_topics(self.net.gossip, params=self.params,
                                                                store=self.store)
                    if self.arbiter is not None:
                        await nursery.start(self.arbiter.run, self.net.host)
                    if self.epochs is not None:
                        await nursery.start(self.epochs.run)
                        log.info("rewards epochs: %d s each, challenging the providers in the offer book",
                                 self.params.epoch_s)
                    yield self
                finally:
                    self.nursery = None
                    nursery.cancel_scope.cancel()
        finally:
            # every duty task has ended (the nursery is closed): now their clients and store can go
            with trio.CancelScope(shield=True):
                await self._close_duties()

    async def run(self) -> None:
        async with self.running():
            await trio.sleep_forever()
