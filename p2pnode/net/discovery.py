"""Finding peers: dial the bootstrap list, then let the Kademlia DHT introduce us to everyone else.

A new node knows only its seed peers. It dials them (retrying with back-off, since a seed may restart), joins
the DHT (server mode for providers and seeds so others can find them; client mode for light clients, which
only ask), and looks up the peers closest to its own ID. Every peer such a lookup returns is dialled until we
hold ``max_peers`` connections — that is what lets two providers that only know the seed find and connect to
each other, and keeps the gossip mesh from hanging off the seed alone.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)


@dataclass
class DiscoverySettings:
    bootstrap: Sequence[str] = ()
    dht_server: bool = True
    max_peers: int = 64
    dial_timeout_s: float = 10.0
    fast_interval_s: float = 2.0  # lookups while the network is still being found
    fast_rounds: int = 10
    slow_interval_s: float = 30.0


class Discovery:
    """Bootstrap dialing + Kad-DHT lookups for one host; run with ``nursery.start(discovery.run)``."""

    def __init__(self, host, settings: DiscoverySettings) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        from .host import peer_info

        self.host = host
        self.settings = settings
        self.bootstrap = [peer_info(a) for a in settings.bootstrap]
        self.dht = KadDHT(host, DHTMode.SERVER if settings.dht_server else DHTMode.CLIENT,
                          enable_random_walk=False)
        self.bootstrapped = trio.Event()
        self.dials_failed = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.dht):
            async with trio.open_nursery() as nursery:
                for info in self.bootstrap:
                    nursery.start_soon(self._keep_bootstrap, info)
                if not self.bootstrap:
                    self.bootstrapped.set()
                task_status.started()
                nursery.start_soon(self._lookup_loop)

    async def _keep_bootstrap(self, info) -> None:
        """Stay connected to a seed peer: dial now, redial with back-off whenever the connection drops."""
        delay = 0.5
        me = self.host.get_id()
        if info.peer_id == me:
            return
        while True:
            if info.peer_id not in self.host.get_connected_peers():
                if await self.dial(info):
                    delay = 0.5
                    log.info("joined seed peer %s", info.peer_id)
                    await self.dht.add_peer(info.peer_id, skip_server_mode_check=True)
                    if not self.bootstrapped.is_set():
                        self.bootstrapped.set()
                        await self.lookup()
                else:
                    delay = min(delay * 2, 30.0)
            await trio.sleep(delay if info.peer_id not in self.host.get_connected_peers() else 5.0)

    async def dial(self, info) -> bool:
        try:
            with trio.fail_after(self.settings.dial_timeout_s):
                await self.host.connect(info)
            return True
        except (trio.TooSlowError, Exception) as exc:  # libp2p raises a zoo of dial errors; none is fatal
            self.dials_failed += 1
            log.info("dial %s failed: %s", info.peer_id, type(exc).__name__)
            return False

    async def lookup(self) -> int:
        """One DHT lookup of our own ID, then dial the new peers it found; returns how many we connected."""
        from libp2p.peer.peerinfo import PeerInfo

        me = self.host.get_id()
        found: list = []
        try:
            with trio.move_on_after(max(self.settings.dial_timeout_s, 5.0)):
                found = await self.dht.peer_routing.find_closest_peers_network(me.to_bytes())
        except Exception as exc:
            log.info("DHT lookup failed: %s", exc)
            return 0
        connected = set(self.host.get_connected_peers())
        new = [p for p in found or [] if p != me and p not in connected]
        random.shuffle(new)
        room = max(self.settings.max_peers - len(connected), 0)
        joined = 0
        store = self.host.get_peerstore()
        for peer in new[:room]:
            try:
                addrs = store.addrs(peer)
            except Exception:
                addrs = []
            if addrs and await self.dial(PeerInfo(peer, addrs)):
                joined += 1
                log.info("joined %s (found in the DHT)", peer)
        return joined

    async def _lookup_loop(self) -> None:
        await self.bootstrapped.wait()
        rounds = 0
        while True:
            interval = self.settings.fast_interval_s if rounds < self.settings.fast_rounds else self.settings.slow_interval_s
            await trio.sleep(interval * random.uniform(0.8, 1.2))
            rounds += 1
            await self.lookup()

    def routing_table_size(self) -> int:
        return self.dht.get_routing_table_size()
