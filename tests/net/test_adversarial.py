"""Every kind of bad offer, gossiped by a real attacker peer, is rejected, counted and penalised; service goes on.

The attacker is a plain py-libp2p GossipSub peer with no validators of its own (so it can publish anything),
connected to the seed like any node; a light client also hangs off the seed. Each bad message must bump the
seed's rejection counter for the attacker under the right reason and never reach either book.
"""

from __future__ import annotations

import os
import time

import msgpack
import trio

from p2pnode.identity import Identity
from p2pnode.market.offers import OFFERS_TOPIC, build_offer
from p2pnode.net.gossip import Gossip
from p2pnode.net.host import HostSettings, peer_info, running_host
from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode
from p2pnode.renter import LightClient
from p2pnode.wire import MAX_OFFER_SIZE, pack, seal, signing_payload

from .conftest import CPU, LOOPBACK, eventually, net_config, node_config, start


def offer_bytes(ident: Identity, *, seq: int = 1, expires_in: float = 300, signer: Identity | None = None,
                price: int = 5) -> bytes:
    from p2pnode.config import OfferConfig

    offer = build_offer(ident, OfferConfig(price=price), CPU, [], seq=seq)
    offer = type(offer)(**{**offer.__dict__, "expires_at": int(time.time() + expires_in)})
    return seal(offer, signer or ident)


def forged(data: bytes) -> bytes:
    env = msgpack.unpackb(data, raw=False)
    env["sig"] = bytes(64 - 1) + b"\x01"
    return pack(env)


def signed_envelope(ident: Identity, t: str, body_obj) -> bytes:
    body = pack(body_obj)
    return pack({"v": 1, "t": t, "body": body, "signer": ident.public_key,
                 "sig": ident.sign(signing_payload(t, body))})


async def test_bad_offers_rejected_counted_penalised(homes):
    boot_home, boot_id = homes("boot")
    attacker_id = Identity.generate()
    other = Identity.generate()
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot, \
            trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        client = (await start(nursery, LightClient(net_config([seed])))).node
        async with running_host(attacker_id, HostSettings(listen=[LOOPBACK])) as host:
            raw = Gossip(host)  # no validators: publishes whatever it is given
            async with raw.running():
                await host.connect(peer_info(seed))
                await raw.pubsub.subscribe(OFFERS_TOPIC)
                await raw.pubsub.wait_for_subscription(peer_info(seed).peer_id, OFFERS_TOPIC, timeout=10)
                # The attacker publishes through py-libp2p directly, which sends only to mesh peers: until a
                # heartbeat has grafted the seed, a publish reaches nobody (the cause of this test's flakiness
                # under load; Gossip.publish waits for this itself).
                assert await eventually(lambda: raw.mesh_peers(OFFERS_TOPIC), 10)
                me = attacker_id.peer_id
                counters = boot.net.gossip.rejections

                async def expect(data: bytes, reason: str) -> None:
                    before = counters.reasons(me)[reason]
                    await raw.pubsub.publish(OFFERS_TOPIC, data)
                    assert await eventually(lambda: counters.reasons(me)[reason] == before + 1, 10), \
                        (reason, counters.snapshot())

                # a valid offer first: the attacker is a normal peer until it misbehaves
                await raw.pubsub.publish(OFFERS_TOPIC, offer_bytes(attacker_id, seq=5))
                assert await client.book.wait_for(lambda b: b.get(me) is not None, 10)

                await expect(forged(offer_bytes(attacker_id, seq=6)), "BadSignature")
                await expect(offer_bytes(other, seq=1), "SignerMismatch")  # signer != gossip originator
                await expect(offer_bytes(attacker_id, seq=7, signer=other), "SignerMismatch")
                await expect(offer_bytes(attacker_id, seq=8, expires_in=-5), "OfferExpired")
                await expect(offer_bytes(attacker_id, seq=9, expires_in=3600), "OfferTooFarAhead")
                await expect(offer_bytes(attacker_id, seq=3, price=1), "StaleSeq")  # replayed lower seq
                await expect(os.urandom(MAX_OFFER_SIZE + 4096), "OversizeGossip")
                await expect(os.urandom(200), "MalformedMessage")
                await expect(pack([1, 2, 3]), "MalformedMessage")  # valid msgpack, not an envelope
                await expect(signed_envelope(attacker_id, "offer", {"peer_id": me, "price": "free"}), "SchemaError")
                await expect(signed_envelope(attacker_id, "no-such-type", {}), "UnknownType")

                assert counters.total(me) == 11
                assert boot.net.gossip.peer_score(me, OFFERS_TOPIC) < -50  # P4 penalty applied
                # nothing bad reached a book: the attacker's entry is still its first, valid offer
                assert boot.book.get(me).seq == 5 and boot.book.get(me).price == 5
                assert client.book.get(me).seq == 5
                assert client.net.gossip.rejections.total() == 0  # the seed stopped them all

        # the network keeps serving: an honest provider joins and reaches the light client
        home, ident = homes("honest")
        await start(nursery, ProviderNode(node_config(home, [seed]), identity=ident, devices=CPU))
        assert await client.book.wait_for(lambda b: b.get(ident.peer_id) is not None, 10)
        nursery.cancel_scope.cancel()
