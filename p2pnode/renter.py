"""The light client: joins through a seed peer, listens to offers, keeps a book — publishes nothing, runs nothing.

This is the base the marketplace's ``Renter`` extends. It imports neither torch nor solana, so ``from p2pnode
import LightClient`` works on a machine with only the network dependencies. A light client is a DHT client
(it asks, it does not answer lookups) and by default uses a throw-away identity: it holds no money.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .config import NetConfig
from .identity import Identity
from .net.node import LIGHT, NetNode
from .wire import Offer


class LightClient:
    """``async with LightClient(net_cfg).running() as client: await client.wait_settled(); client.book.query(...)``"""

    def __init__(self, net: NetConfig, *, identity: Identity | None = None, params=None, store=None) -> None:
        """`params` (network.json's NetworkParams) lets it check /iog/rewards/1 manifests and attestations'
        verifiers; `store` keeps what passed (otherwise it only validates and relays)."""
        self.identity = identity or Identity.generate()
        self.params = params
        self.store = store
        self.topics = None  # reward_topics.RewardTopics once running
        if not net.bootstrap:
            from .errors import ConfigError

            raise ConfigError("a light client needs a seed peer: pass --bootstrap /ip4/.../tcp/.../p2p/<PeerID> "
                              "or set net.bootstrap in the config")
        self.net = NetNode(self.identity, net, LIGHT)
        self.nursery: trio.Nursery | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def book(self):
        return self.net.book

    @asynccontextmanager
    async def running(self) -> AsyncIterator["LightClient"]:
        async with self.net.running(), trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                from .reward_topics import subscribe_reward_topics

                self.topics = await subscribe_reward_topics(self.net.gossip, params=self.params, store=self.store)
                yield self
            finally:
                self.nursery = None
                nursery.cancel_scope.cancel()

    async def wait_joined(self, timeout: float = 10.0) -> bool:
        """True once connected to a seed peer and its book was copied."""
        assert self.net.discovery is not None
        with trio.move_on_after(timeout):
            await self.net.discovery.bootstrapped.wait()
            while not self.net.synced_from:
                await trio.sleep(0.05)
            return True
        return False

    async def wait_settled(self, *, wait_s: float = 3.0, quiet_s: float = 1.0) -> list[Offer]:
        """Join, then wait until no new offer arrived for `quiet_s` (at most `wait_s` in all); the live offers."""
        with trio.move_on_after(wait_s):
            await self.wait_joined(wait_s)
            await self.book.settle(quiet_s=quiet_s, timeout=wait_s)
        return self.book.offers()


def __getattr__(name: str):
    """``Renter`` (the marketplace client built on LightClient) lives in market/renter_jobs.py; re-exported here."""
    if name in ("Renter", "RentOutcome", "NoProvider"):
        from .market import renter_jobs

        return getattr(renter_jobs, name)
    raise AttributeError(f"module 'p2pnode.renter' has no attribute {name!r}")
