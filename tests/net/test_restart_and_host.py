"""Host stack and lifecycle: Noise only, real addresses back from tcp/0, no leaked connections over restarts."""

from __future__ import annotations

import pytest
import trio

from p2pnode.errors import ConfigError
from p2pnode.identity import Identity
from p2pnode.net.host import BadMultiaddr, HostSettings, build_host, peer_info, running_host
from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode

from .conftest import CPU, LOOPBACK, eventually, node_config


async def test_provider_restarted_20_times_keeps_connecting(homes):
    boot_home, boot_id = homes("boot")
    home, ident = homes("prov")
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot:
        seed = boot.addrs()[0]
        cfg = node_config(home, [seed])
        seqs = []
        for i in range(20):
            node = ProviderNode(cfg, identity=Identity.load(home / "identity.json"), devices=CPU)
            async with node.running():
                assert node.peer_id == ident.peer_id
                assert await eventually(lambda: boot.book.get(ident.peer_id) is not None
                                        and boot.book.get(ident.peer_id).seq == node.publisher.current.seq, 10), i
                seqs.append(node.publisher.current.seq)
            # the seed sees the old connection go away: nothing is left half-open
            assert await eventually(lambda: ident.peer_id not in boot.net.connected_peers(), 10), i
        assert seqs == sorted(seqs) and len(set(seqs)) == 20
        assert len(boot.net.connected_peers()) == 0
        assert boot.net.gossip.rejections.total() == 0


async def test_noise_only_plaintext_peer_cannot_connect():
    from libp2p import new_host
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    import multiaddr

    ours = Identity.generate()
    async with running_host(ours, HostSettings(listen=[LOOPBACK])) as host:
        addr = str(host.get_addrs()[0])
        assert "/tcp/0/" not in addr and addr.endswith(ours.peer_id)
        kp = Identity.generate().libp2p_keypair()
        listen = [multiaddr.Multiaddr(LOOPBACK)]
        plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)}, listen_addrs=listen)
        async with plain.run(listen):
            with pytest.raises(Exception), trio.fail_after(15):
                await plain.connect(peer_info(addr))
            assert plain.get_connected_peers() == []
        await plain.close()


def test_bad_addresses_are_config_errors():
    ident = Identity.generate()
    with pytest.raises(BadMultiaddr, match="not a multiaddr"):
        build_host(ident, HostSettings(listen=["tcp://1.2.3.4:5"]))
    with pytest.raises(BadMultiaddr, match="not plain TCP"):
        build_host(ident, HostSettings(listen=["/ip4/127.0.0.1/udp/1/quic-v1"]))
    with pytest.raises(BadMultiaddr, match="/p2p/"):
        peer_info("/ip4/127.0.0.1/tcp/4001")
    with pytest.raises(ConfigError):
        build_host(ident, HostSettings(listen=[]))


async def test_unspecified_address_is_never_advertised_and_busy_port_is_a_config_error():
    ident = Identity.generate()
    async with running_host(ident, HostSettings(listen=["/ip4/0.0.0.0/tcp/0"])) as host:
        addrs = [str(a) for a in host.get_addrs()]
        assert addrs and not any("/0.0.0.0/" in a for a in addrs)
        assert any(a.startswith("/ip4/127.0.0.1/") for a in addrs)
        port = host.get_transport_addrs()[0].value_for_protocol("tcp")
        with pytest.raises(ConfigError, match="cannot listen"):
            async with running_host(Identity.generate(), HostSettings(listen=[f"/ip4/0.0.0.0/tcp/{port}"])):
                pass


async def test_announce_address_replaces_listen_addresses():
    ident = Identity.generate()
    async with running_host(ident, HostSettings(listen=[LOOPBACK], announce=["/ip4/203.0.113.7/tcp/4001"])) as h:
        assert [str(a) for a in h.get_addrs()] == [f"/ip4/203.0.113.7/tcp/4001/p2p/{ident.peer_id}"]
