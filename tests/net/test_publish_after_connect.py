"""A message published right after joining must not vanish.

Regression for the flaky adversarial test: a provider publishes its first offer as soon as it is connected to
a seed, but GossipSub (py-libp2p has no flood-publish) sends a subscriber's message only to its mesh peers, and
the mesh is filled at a heartbeat after the subscription exchange. Published earlier, the offer reached nobody
and stayed unseen until the next re-publish (60 s by default). :meth:`Gossip.publish` now waits (bounded) for a
mesh peer when it has connected peers.
"""

from __future__ import annotations

import time

import trio

from p2pnode.identity import Identity
from p2pnode.market.offers import OFFERS_TOPIC, OfferValidator, build_offer
from p2pnode.net.gossip import Gossip, GossipSettings
from p2pnode.net.host import HostSettings, peer_info, running_host
from p2pnode.operator import BootstrapNode
from p2pnode.renter import LightClient
from p2pnode.wire import seal

from .conftest import CPU, LOOPBACK, net_config, node_config, start


async def test_offer_published_right_after_connect_reaches_a_light_client(homes):
    boot_home, boot_id = homes("boot")
    ident = Identity.generate()
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot, \
            trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        client = (await start(nursery, LightClient(net_config([seed])))).node
        async with running_host(ident, HostSettings(listen=[LOOPBACK])) as host:
            # a slow heartbeat widens the window between connect and mesh, as a loaded machine does
            gossip = Gossip(host, GossipSettings(heartbeat_s=2.0))
            await gossip.add_topic(OfferValidator())
            async with gossip.running():
                await host.connect(peer_info(seed))
                from p2pnode.config import OfferConfig

                offer = build_offer(ident, OfferConfig(price=7), CPU, [], seq=1)
                t0 = time.monotonic()
                sent_to = await gossip.publish(OFFERS_TOPIC, seal(offer, ident))  # no sleep, no subscription wait
                waited = time.monotonic() - t0
                assert sent_to >= 1, "published into an empty mesh"
                assert waited < GossipSettings().publish_wait_s
                assert await client.book.wait_for(lambda b: b.get(ident.peer_id) is not None, 10)
        nursery.cancel_scope.cancel()


async def test_publish_without_peers_does_not_wait():
    ident = Identity.generate()
    async with running_host(ident, HostSettings(listen=[LOOPBACK])) as host:
        gossip = Gossip(host, GossipSettings(heartbeat_s=1.0))
        await gossip.add_topic(OfferValidator())
        async with gossip.running():
            from p2pnode.config import OfferConfig

            t0 = time.monotonic()
            sent_to = await gossip.publish(OFFERS_TOPIC, seal(build_offer(ident, OfferConfig(), CPU, [], seq=1),
                                                              ident))
            assert sent_to == 0 and time.monotonic() - t0 < 1.0  # a lone node publishes at once
