"""The network half every role shares: host + gossip + discovery + offer book + status protocol.

:class:`NetNode` is what :class:`~p2pnode.provider.ProviderNode`, :class:`~p2pnode.renter.LightClient` and
:class:`~p2pnode.operator.BootstrapNode` are built on; the roles differ only in DHT mode, whether they publish
offers, and what they add on top. Use it as ``async with NetNode(...).running() as node:`` — leaving the block
(normally, by error or by Ctrl-C) cancels every background task and closes the host.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from ..config import NetConfig
from ..identity import Identity
from ..market.book import OfferBook
from ..market.offers import OfferValidator
from ..wire import Offer, Signed
from .discovery import Discovery, DiscoverySettings
from .gossip import Gossip, GossipMessage, GossipSettings
from .host import HostSettings, listen_addrs, running_host, transport_addrs
from .status import Status, StatusServer, query_status

log = logging.getLogger(__name__)

RUNTIME_FILE = "node.json"  # written into the node home while it runs; `p2pnode status` reads it


@dataclass(frozen=True)
class Role:
    name: str
    dht_server: bool


PROVIDER = Role("provider", dht_server=True)
BOOTSTRAP = Role("bootstrap", dht_server=True)
LIGHT = Role("light", dht_server=False)


class NetNode:
    """One running libp2p node with the offers topic validated and booked."""

    def __init__(self, identity: Identity, net: NetConfig, role: Role, *, home: Path | None = None,
                 offer_clock_skew_s: float = 30.0) -> None:
        self.identity = identity
        self.net = net
        self.role = role
        self.home = home
        self.book = OfferBook()
        self.offer_validator = OfferValidator(clock_skew_s=offer_clock_skew_s)
        self.started_at = time.time()
        self.host = None
        self.gossip: Gossip | None = None
        self.discovery: Discovery | None = None
        self.status_server: StatusServer | None = None
        self.nursery: trio.Nursery | None = None
        self.offer_seq = 0  # set by roles that publish
        self.synced_from: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator["NetNode"]:
        settings = HostSettings.from_config(self.net)
        gossip_settings = GossipSettings(heartbeat_s=self.net.heartbeat_s,
                                         max_msgs_per_peer_topic_s=self.net.max_msgs_per_peer_topic_s,
                                         invalid_msg_weight=self.net.invalid_msg_weight,
                                         graylist_score=self.net.graylist_score)
        async with running_host(self.identity, settings) as host:
            self.host = host
            self.gossip = Gossip(host, gossip_settings)
            await self.gossip.add_topic(self.offer_validator, self._on_offer)
            self.status_server = StatusServer(host, self.identity, self.status, self.raw_offers)
            self.discovery = Discovery(host, DiscoverySettings(
                bootstrap=list(self.net.bootstrap), dht_server=self.role.dht_server, max_peers=self.net.max_peers,
                dial_timeout_s=self.net.dial_timeout_s))
            try:
                async with self.gossip.running(), trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self.book.run_expiry)
                    await nursery.start(self.discovery.run)
                    nursery.start_soon(self._sync_from_bootstrap)
                    self._write_runtime_file()
                    log.info("%s %s listening on %s", self.role.name, self.identity.peer_id,
                             " ".join(self.addrs()))
                    try:
                        yield self
                    finally:
                        nursery.cancel_scope.cancel()
                        # Close every connection while pubsub still runs: a gossip frame arriving on a live
                        # stream after pubsub's service stopped makes py-libp2p raise "Nursery is closed to new
                        # arrivals" out of the swarm, failing the node's shutdown (seen under load).
                        with trio.CancelScope(shield=True), trio.move_on_after(5):
                            await host.close()
            finally:
                self._remove_runtime_file()
                self.nursery = None

    # --- offers ----------------------------------------------------------------------------------------------

    def _on_offer(self, signed: Signed[Offer], msg: GossipMessage) -> None:
        if self.book.add(signed):
            log.info("offer from %s seq=%d (%d device(s), price %d)", signed.message.peer_id, signed.message.seq,
                     len(signed.message.devices), signed.message.price)

    def raw_offers(self) -> list[bytes]:
        return [e.raw for e in self.book.entries()]

    def add_synced_offers(self, raws: list[bytes], source: str) -> int:
        """Check offers fetched by book sync against every offer rule; returns how many entered the book."""
        added = 0
        for raw in raws:
            try:
                signed = self.offer_validator.check(raw, origin=None)
            except Exception as exc:  # ProtocolError for bad input; count it against the peer that sent it
                self.gossip.rejections.add(source, type(exc).__name__) if self.gossip else None
                continue
            added += self.book.add(signed)
        return added

    async def sync_book(self, peer_id) -> int:
        """Fetch a peer's offer book over /iog/status/1.0.0 and merge it into ours."""
        try:
            _, raws = await query_status(self.host, peer_id, self.identity, want_offers=True)
        except Exception as exc:
            log.info("book sync from %s failed: %s: %s", peer_id, type(exc).__name__, exc)
            return 0
        added = self.add_synced_offers(raws, peer_id.to_base58())
        self.synced_from.add(peer_id.to_base58())
        log.info("book sync from %s: %d offer(s), %d new", peer_id, len(raws), added)
        return added

    async def _sync_from_bootstrap(self) -> None:
        """Once connected to a seed peer, copy its book: a new node sees the market at once."""
        assert self.discovery is not None
        await self.discovery.bootstrapped.wait()
        for info in self.discovery.bootstrap:
            if info.peer_id in self.host.get_connected_peers():
                await self.sync_book(info.peer_id)

    # --- status ----------------------------------------------------------------------------------------------

    def addrs(self) -> list[str]:
        return listen_addrs(self.host) if self.host is not None else []

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self.host.get_connected_peers()] if self.host is not None else []

    def status(self, nonce: bytes = b"\x00" * 16) -> Status:
        from .. import __version__

        return Status(
            nonce=nonce,
            peer_id=self.identity.peer_id,
            role=self.role.name,
            version=__version__,
            addrs=self.addrs()[:32],
            peers=self.connected_peers()[:512],
            offers=len(self.book),
            rejected=self.gossip.rejections.total() if self.gossip else 0,
            uptime_s=max(time.time() - self.started_at, 0.0),
            time=int(time.time()),
            routing_table=self.discovery.routing_table_size() if self.discovery else 0,
            offer_seq=self.offer_seq,
        )

    def _write_runtime_file(self) -> None:
        """Tell local tools (`p2pnode status`) where this node listens; not a secret, but only ours to write."""
        if self.home is None:
            return
        path = self.home / RUNTIME_FILE
        data = {"peer_id": self.identity.peer_id, "role": self.role.name, "pid": os.getpid(),
                "addrs": transport_addrs(self.host), "started_at": int(self.started_at)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _remove_runtime_file(self) -> None:
        if self.home is None:
            return
        path = self.home / RUNTIME_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("pid") == os.getpid() and data.get("peer_id") == self.identity.peer_id:
                path.unlink()
        except (OSError, ValueError):
            pass
