"""A peer that speaks GossipSub badly — protobuf garbage, an oversize frame — loses its stream, not our node.

py-libp2p 0.8.1 catches only stream/varint errors in its pubsub handler; a protobuf DecodeError or an oversize
length escaped through the swarm and stopped the whole node. `Gossip` guards the handler; this proves it with a
raw libp2p host that opens `/meshsub/1.1.0` to a seed and writes bytes no honest peer would.
"""

from __future__ import annotations

import os

import trio
from libp2p.peer.id import ID

from p2pnode.identity import Identity
from p2pnode.net.host import HostSettings, peer_info, running_host
from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode
from p2pnode.renter import LightClient

from .conftest import CPU, LOOPBACK, net_config, node_config, start


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


async def test_garbage_pubsub_frames_cost_the_sender_its_stream_only(homes):
    boot_home, boot_id = homes("boot")
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot, trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        seed_id = ID.from_base58(peer_info(seed).peer_id.to_base58())
        attacker = Identity.generate()
        async with running_host(attacker, HostSettings(listen=[LOOPBACK])) as host:
            await host.connect(peer_info(seed))
            for payload in (varint(40) + os.urandom(40),  # a frame of protobuf garbage
                            varint(64 << 20)):  # a frame claiming 64 MiB
                with trio.fail_after(10):
                    stream = await host.new_stream(seed_id, ["/meshsub/1.1.0"])
                    await stream.write(payload)
                    await trio.sleep(0.5)
            counters = boot.net.gossip.rejections
            with trio.fail_after(10):
                while counters.reasons(attacker.peer_id)["MalformedRPC"] < 1:
                    await trio.sleep(0.1)

        # the seed still serves: a provider joins and a light client sees its offer through the seed
        home, ident = homes("honest")
        await start(nursery, ProviderNode(node_config(home, [seed]), identity=ident, devices=CPU))
        client = (await start(nursery, LightClient(net_config([seed])))).node
        assert await client.book.wait_for(lambda b: b.get(ident.peer_id) is not None, 20)
        nursery.cancel_scope.cancel()
