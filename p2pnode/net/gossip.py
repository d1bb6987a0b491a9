"""GossipSub with one validator per topic, per-peer rejection counters and a score penalty for bad input.

Every topic (``/iog/offers/1`` here; ``/iog/attest/1`` and ``/iog/rewards/1`` from other capabilities) registers a
:class:`TopicValidator`. The validator runs before a message is delivered or relayed; a :class:`ProtocolError`
rejects it, the forwarding peer's counter for that reason goes up and GossipSub's P4 ("invalid messages") score
drops, so a peer that keeps sending garbage is graylisted. Whatever the validator returns is handed to the
topic's handler, so nothing is parsed or signature-checked twice.

Settings differ from py-libp2p's defaults on purpose (DESIGN.md): a ~1 s heartbeat instead of 120 s, and the
per-peer spam limit exempts our own publishes (py-libp2p counts them against ourselves, which throttled
re-publishing). Eclipse protection is off because it wants ≥ 3 distinct IPs in every mesh — home nodes behind one
NAT, and every test on loopback, share an IP.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import ProtocolError

log = logging.getLogger(__name__)

GOSSIP_PROTOCOLS = ("/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0")


class GossipRejected(ProtocolError):
    """A gossip message failed a rule outside the payload (several topics, wrong size); see subclasses."""


class OversizeGossip(GossipRejected):
    """A gossip payload above the topic's size limit; dropped before decoding."""


class WrongTopic(GossipRejected):
    """A message published on several topics at once; ours are always single-topic."""


@dataclass(frozen=True)
class GossipMessage:
    """A received (or own) gossip message before validation: who created it, who relayed it to us, the bytes."""

    topic: str
    origin: str  # PeerID (base58) of the creator; pubsub strict signing proved it
    forwarder: str  # PeerID of the peer that handed it to us (== our own ID for our publishes)
    data: bytes
    msg_id: bytes


class TopicValidator:
    """Checks one topic's messages; subclass per topic. Raise a ProtocolError subclass to reject."""

    topic: str = ""
    max_size: int = 64 * 1024

    def validate(self, msg: GossipMessage) -> Any:
        """Return the parsed, checked payload (given to the topic handler) or raise ProtocolError."""
        raise NotImplementedError


Handler = Callable[[Any, GossipMessage], Awaitable[None] | None]


@dataclass
class GossipSettings:
    heartbeat_s: float = 1.0
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    max_msgs_per_peer_topic_s: float = 50.0  # relays forward many providers' offers; own publishes are exempt
    invalid_msg_weight: float = 10.0  # P4: each invalid message costs this much score (positive = penalise)
    invalid_msg_decay: float = 0.99  # per heartbeat; a mistake is forgiven over minutes, a flood is not
    graylist_score: float = -100.0  # below this a peer's messages are ignored without validation
    publish_wait_s: float = 5.0  # longest a publish waits for a mesh peer when connected (see Gossip.publish)


@dataclass
class RejectionCounters:
    """Rejected messages per forwarding peer and reason (the exception type), for logs, status and tests."""

    by_peer: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    accepted: int = 0

    def add(self, peer: str, reason: str) -> None:
        self.by_peer[peer][reason] += 1

    def total(self, peer: str | None = None) -> int:
        if peer is not None:
            return sum(self.by_peer.get(peer, Counter()).values())
        return sum(sum(c.values()) for c in self.by_peer.values())

    def reasons(self, peer: str | None = None) -> Counter:
        if peer is not None:
            return Counter(self.by_peer.get(peer, Counter()))
        out: Counter = Counter()
        for c in self.by_peer.values():
            out.update(c)
        return out

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {p: dict(c) for p, c in self.by_peer.items() if c}


def _make_router(settings: GossipSettings):
    from libp2p.pubsub.gossipsub import GossipSub
    from libp2p.pubsub.score import ScoreParams, TopicScoreParams

    class _Router(GossipSub):
        """GossipSub whose spam limit never applies to our own publishes and whose caches stay bounded."""

        def _check_spam_protection(self, peer_id, msg) -> bool:  # type: ignore[override]
            if self.pubsub is not None and peer_id == self.pubsub.my_id:
                return True
            return super()._check_spam_protection(peer_id, msg)

    params = ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=settings.invalid_msg_weight, cap=1000.0,
                                             decay=settings.invalid_msg_decay),
        graylist_threshold=settings.graylist_score,
        publish_threshold=settings.graylist_score,
    )
    return _Router(
        protocols=list(GOSSIP_PROTOCOLS),
        degree=settings.degree,
        degree_low=settings.degree_low,
        degree_high=settings.degree_high,
        heartbeat_interval=settings.heartbeat_s,  # type: ignore[arg-type]  (a float works: it is a trio.sleep)
        heartbeat_initial_delay=0.1,
        score_params=params,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=settings.max_msgs_per_peer_topic_s,
        eclipse_protection_enabled=False,
    )


class Gossip:
    """Pubsub on a running host: register topics with a validator and a handler, publish, read counters.

    Use as ``async with Gossip(host, settings).running() as gossip:``; topics added before or after start.
    """

    def __init__(self, host: Any, settings: GossipSettings | None = None) -> None:
        from libp2p.pubsub.pubsub import Pubsub

        self.host = host
        self.settings = settings or GossipSettings()
        self.router = _make_router(self.settings)
        # seen_ttl covers an offer's whole life (10 min) so a replay is caught by the seen cache or by expiry
        self.pubsub = Pubsub(host, self.router, strict_signing=True, cache_size=4096, seen_ttl=660)
        # py-libp2p starts the pubsub seqno at int(time.time()): a node restarted within the same second reuses
        # message IDs (from + seqno) that peers have seen and silently drops. Nanoseconds never repeat.
        self.pubsub.counter = time.time_ns()
        # py-libp2p lets a malformed RPC from a peer (protobuf DecodeError, an oversize frame) escape its stream
        # handler and the swarm, which stops the whole node: one bad peer must only lose its stream.
        for proto in GOSSIP_PROTOCOLS:
            host.set_stream_handler(proto, self._guarded_stream_handler)
        self.rejections = RejectionCounters()
        self._validators: dict[str, TopicValidator] = {}
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._parsed: OrderedDict[bytes, Any] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._subscribed: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    def running(self):
        from contextlib import asynccontextmanager

        from libp2p.tools.anyio_service import background_trio_service

        @asynccontextmanager
        async def _run():
            async with background_trio_service(self.pubsub), background_trio_service(self.router):
                with trio.fail_after(10):
                    await self.pubsub.wait_until_ready()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._maintenance)
                    for topic in list(self._validators):
                        await self._subscribe(topic)
                    try:
                        yield self
                    finally:
                        self._nursery = None
                        nursery.cancel_scope.cancel()

        return _run()

    async def _guarded_stream_handler(self, stream: Any) -> None:
        try:
            await self.pubsub.stream_handler(stream)
        except Exception as exc:  # not Cancelled: shutdown still unwinds
            peer = stream.muxed_conn.peer_id
            self.rejections.add(peer.to_base58(), "MalformedRPC")
            log.info("dropped a pubsub stream from %s: %s: %s", peer.to_base58(), type(exc).__name__, exc)
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:
                    pass
            try:
                self.pubsub._handle_dead_peer(peer)  # what py-libp2p does for the errors it does catch
            except Exception:
                pass

    async def _maintenance(self) -> None:
        """Keep py-libp2p's equivocation map bounded (it is never trimmed otherwise)."""
        while True:
            await trio.sleep(max(self.settings.heartbeat_s, 1.0) * 10)
            try:
                self.router._periodic_security_cleanup()
            except Exception:  # a library-internal bookkeeping failure must not stop the node
                log.exception("gossip cache cleanup failed")

    # --- topics ----------------------------------------------------------------------------------------------

    async def add_topic(self, validator: TopicValidator, handler: Handler | None = None) -> None:
        """Validate every message on `validator.topic`; subscribe and pass accepted payloads to `handler`."""
        topic = validator.topic
        if not topic:
            raise ValueError("a TopicValidator needs a topic")
        existing = self._validators.get(topic)
        if existing is not None and existing is not validator:
            raise RuntimeError(f"topic {topic} already has a validator")
        self._validators[topic] = validator
        self.pubsub.set_topic_validator(topic, self._make_validator_fn(validator), False)
        if handler is not None:
            self._handlers[topic].append(handler)
        if self._nursery is not None:
            await self._subscribe(topic)

    async def _subscribe(self, topic: str) -> None:
        if topic in self._subscribed:
            return
        self._subscribed.add(topic)
        sub = await self.pubsub.subscribe(topic)
        assert self._nursery is not None
        self._nursery.start_soon(self._read, topic, sub)

    def _make_validator_fn(self, validator: TopicValidator):
        from libp2p.peer.id import ID

        def validate(forwarder: Any, msg: Any) -> bool:
            # Runs synchronously inside py-libp2p's push_msg: no await between the seen-check and marking the
            # message seen, so validator state (e.g. last seq per provider) is never raced.
            forwarder_s = forwarder.to_base58() if hasattr(forwarder, "to_base58") else str(forwarder)
            try:
                if len(msg.topicIDs) != 1:
                    raise WrongTopic(f"message on {len(msg.topicIDs)} topics at once")
                if len(msg.data) > validator.max_size:
                    raise OversizeGossip(f"{len(msg.data)} bytes exceeds the {validator.max_size}-byte limit "
                                         f"of {validator.topic}")
                gm = GossipMessage(topic=validator.topic, origin=ID(msg.from_id).to_base58(),
                                   forwarder=forwarder_s, data=bytes(msg.data),
                                   msg_id=self.pubsub.get_message_id(msg))
                parsed = validator.validate(gm)
            except ProtocolError as exc:
                self.rejections.add(forwarder_s, type(exc).__name__)
                log.info("rejected %s message from %s: %s: %s", validator.topic, forwarder_s,
                         type(exc).__name__, exc)
                return False
            except Exception as exc:  # a validator bug must reject the message, not kill the pubsub task
                self.rejections.add(forwarder_s, "ValidatorError")
                log.exception("validator for %s failed on a message from %s: %s", validator.topic, forwarder_s, exc)
                return False
            self.rejections.accepted += 1
            self._parsed[gm.msg_id] = (parsed, gm)
            while len(self._parsed) > 4096:
                self._parsed.popitem(last=False)
            return True

        return validate

    async def _read(self, topic: str, sub: Any) -> None:
        async for msg in sub:
            item = self._parsed.pop(self.pubsub.get_message_id(msg), None)
            if item is None:  # evicted under a flood; the message passed validation but we lost its parse
                continue
            parsed, gm = item
            for handler in self._handlers.get(topic, ()):
                try:
                    result = handler(parsed, gm)
                    if result is not None:
                        await result
                except ProtocolError as exc:
                    log.info("handler for %s dropped a message from %s: %s", topic, gm.origin, exc)
                except Exception:
                    log.exception("handler for %s failed", topic)

    # --- publish and inspect ---------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> int:
        """Publish on a topic (our own validator runs on it first, like on everyone's); returns the mesh size.

        py-libp2p sends a subscriber's own message to its mesh peers only (no flood-publish), and the mesh is
        filled at a heartbeat after the peers' subscriptions arrive. A node that publishes right after
        connecting — a provider's first offer once it reached a seed — would send to nobody, and the message
        would reach the network only if IHAVE gossip happened to cover it, else at the next re-publish
        (a minute later). So while we have connections but an empty mesh, wait for a mesh peer, at most
        ``publish_wait_s`` (a node whose peers do not join the topic still publishes, late rather than never).
        """
        if topic not in self._validators:
            raise RuntimeError(f"publish on {topic} without a validator registered")
        if self.host.get_connected_peers() and not self._send_peers(topic):
            with trio.move_on_after(self.settings.publish_wait_s):
                while not self._send_peers(topic):
                    await trio.sleep(0.05)
        peers = self._send_peers(topic)
        if not peers and self.host.get_connected_peers():
            log.info("publishing on %s with no mesh peer after %.1f s", topic, self.settings.publish_wait_s)
        await self.pubsub.publish(topic, data)
        return peers

    def _send_peers(self, topic: str) -> int:
        """How many peers a publish on `topic` goes to now: the mesh if subscribed, else known subscribers."""
        if topic in self.router.mesh:
            return len(self.router.mesh[topic])
        return len(self.pubsub.peer_topics.get(topic, ()))

    def peer_score(self, peer_id: str, topic: str) -> float:
        from libp2p.peer.id import ID

        return float(self.router.scorer.score(ID.from_base58(peer_id), [topic]))

    def topic_peers(self, topic: str) -> list[str]:
        return [p.to_base58() for p in self.pubsub.peer_topics.get(topic, ())]

    def mesh_peers(self, topic: str) -> list[str]:
        return [p.to_base58() for p in self.router.mesh.get(topic, ())]
