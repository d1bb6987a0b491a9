"""The issue's scenario on real libp2p hosts over loopback: seed + 3 providers + a light client."""

from __future__ import annotations

import trio

from p2pnode.identity import Identity
from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode
from p2pnode.renter import LightClient

from .conftest import CPU, eventually, net_config, node_config, start


async def test_network_books_offers_expires_and_restarts(homes):
    boot_home, boot_id = homes("boot")
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot, \
            trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        assert seed.endswith("/p2p/" + boot_id.peer_id) and "/tcp/0/" not in seed
        providers = []
        for i in range(3):
            home, ident = homes(f"p{i}")
            # short ttl: a stopped provider's offer must vanish within seconds
            cfg = node_config(home, [seed], price=100 + i, ttl_s=4, republish_s=1.0)
            providers.append(await start(nursery, ProviderNode(cfg, identity=ident, devices=CPU)))
        client = (await start(nursery, LightClient(net_config([seed])))).node

        ids = {r.node.peer_id for r in providers}
        assert await client.book.wait_for(lambda b: {o.peer_id for o in b.offers()} == ids, 10)
        assert [o.price for o in client.book.offers()] == [100, 101, 102]
        assert client.book.query(kind="cpu", max_price=100)[0].peer_id == providers[0].node.peer_id
        assert client.book.query(kind="cuda") == []
        assert len(boot.book) == 3

        # Kad-DHT: providers that only know the seed find and connect to each other.
        assert await eventually(lambda: all(len(set(r.node.net.connected_peers()) & ids) == 2 for r in providers),
                                15), [r.node.net.connected_peers() for r in providers]

        # Stop provider 0: its offer expires from every book.
        victim = providers[0].node
        last_seq = victim.publisher.current.seq
        assert last_seq >= 1
        await providers[0].stop()
        assert await client.book.wait_for(lambda b: b.get(victim.peer_id) is None, 12)
        assert len(client.book) == 2 and len(boot.book) == 2

        # Restart with the same key and home: same PeerID, seq continues from disk.
        again = ProviderNode(victim.cfg, identity=Identity.load(victim.cfg.home / "identity.json"), devices=CPU)
        assert again.peer_id == victim.peer_id
        await start(nursery, again)
        assert again.publisher.current.seq > last_seq
        assert await client.book.wait_for(lambda b: b.get(victim.peer_id) is not None, 10)
        assert client.book.get(victim.peer_id).seq > last_seq
        assert client.net.gossip.rejections.total() == 0
        assert boot.net.gossip.rejections.total() == 0
        nursery.cancel_scope.cancel()
