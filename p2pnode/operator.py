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
    def __init__(self, cfg: NodeConfig, *, identity: Identity | None = None, arbiter: bool | None = None) -> None:
        self.cfg = cfg
        self.identity = identity or Identity.load(cfg.key_file)
        self.net = NetNode(self.identity, cfg.net, BOOTSTRAP, home=cfg.home)
        self.nursery: trio.Nursery | None = None
        # arbiter + slashing duties: when this seed's key is one of the network's operators (network.json)
        self.arbiter = None
        self._arbiter_wanted = arbiter

    def _make_arbiter(self):
        if self._arbiter_wanted is False or not self.cfg.network_file.exists():
            return None
        from .chain.network import NetworkParams
        from .chain.rpc import ChainClient
        from .market.evidence import ArbiterService
        from .store import Store

        params = NetworkParams.load(self.cfg.network_file)
        if self.identity.address not in params.operators:
            return None
        store = Store(self.cfg.db_file)
        client = ChainClient(self.cfg.chain.rpc_url, timeout_s=self.cfg.chain.confirm_timeout_s)
        return ArbiterService(self.identity, store, params, client, slash_bps=self.cfg.market.slash_bps,
                              gossip=self.net.gossip)

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
            self.arbiter = self._make_arbiter()
            try:
                if self.arbiter is not None:
                    await nursery.start(self.arbiter.run, self.net.host)
                yield self
            finally:
                self.nursery = None
                nursery.cancel_scope.cancel()
                if self.arbiter is not None:
                    with trio.CancelScope(shield=True):
                        await self.arbiter.client.aclose()
                    self.arbiter.store.close()

    async def run(self) -> None:
        async with self.running():
            await trio.sleep_forever()
