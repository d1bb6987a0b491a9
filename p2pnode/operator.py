"""The bootstrap operator's node: a seed peer with a stable identity and a fixed port.

It is a DHT server (new nodes look themselves up through it), relays gossip on every topic it validates, keeps
the offer book (so newcomers can copy it over ``/iog/status/1.0.0``) and prints its full ``/p2p/`` address for
others to put in their bootstrap list. Operator duties (verifier, arbiter, rewards) are added on top by other
capabilities through ``node.net`` and ``node.nursery``, like on the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .config import NodeConfig
from .identity import Identity
from .net.node import BOOTSTRAP, NetNode


class BootstrapNode:
    def __init__(self, cfg: NodeConfig, *, identity: Identity | None = None) -> None:
        self.cfg = cfg
        self.identity = identity or Identity.load(cfg.key_file)
        self.net = NetNode(self.identity, cfg.net, BOOTSTRAP, home=cfg.home)
        self.nursery: trio.Nursery | None = None

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
        async with self.net.running(), trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                yield self
            finally:
                self.nursery = None
                nursery.cancel_scope.cancel()

    async def run(self) -> None:
        async with self.running():
            await trio.sleep_forever()
