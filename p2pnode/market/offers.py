"""Offers: build a provider's offer, validate offers from the network, keep publishing ours.

The rules an offer on ``/iog/offers/1`` must pass (DESIGN.md "Wire contract") are all in
:class:`OfferValidator`: the envelope signature verifies, its signer is the PeerID that originated the gossip
message (and the offer's own ``peer_id``), the body matches the schema, ``expires_at`` lies in
(now, now + 10 min] and ``seq`` is higher than the last one seen from that provider. The same checks apply to
offers fetched through ``/iog/status/1.0.0`` (book sync), except that there is no gossip originator to compare.

A provider's ``seq`` comes from :meth:`Store.next_counter`, so it keeps rising across restarts and a restarted
provider's first offer is never mistaken for a replay.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import trio

from ..config import NodeConfig, OfferConfig
from ..errors import ProtocolError
from ..identity import Identity
from ..net.gossip import GossipMessage, TopicValidator
from ..store import Store
from ..wire import MAX_OFFER_SIZE, OFFER_MAX_AHEAD_S, Device, Offer, Signed, open_envelope, seal

log = logging.getLogger(__name__)

OFFERS_TOPIC = "/iog/offers/1"
SEQ_KEY = "market.offer_seq"


class OfferRejected(ProtocolError):
    """An offer that decodes and verifies but breaks an offer rule."""


class SignerMismatch(OfferRejected):
    """The envelope's signer is not the peer that originated the gossip message, or not the offer's peer_id."""


class OfferExpired(OfferRejected):
    """expires_at is not in the future."""


class OfferTooFarAhead(OfferRejected):
    """expires_at is more than 10 minutes (plus allowed clock skew) ahead."""


class StaleSeq(OfferRejected):
    """seq is not higher than the last seen for that provider (a replay or an out-of-order old offer)."""


class OfferValidator(TopicValidator):
    """The ``/iog/offers/1`` rules; keeps the highest seq seen per provider (bounded, expired ones forgotten)."""

    topic = OFFERS_TOPIC
    max_size = MAX_OFFER_SIZE

    def __init__(self, *, clock: Callable[[], float] = time.time, clock_skew_s: float = 30.0,
                 max_tracked: int = 100_000) -> None:
        self._clock = clock
        self.clock_skew_s = clock_skew_s
        self.max_tracked = max_tracked
        self._last: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()  # peer_id -> (seq, expires, sha256)

    def validate(self, msg: GossipMessage) -> Signed[Offer]:
        return self.check(msg.data, origin=msg.origin)

    def check(self, data: bytes, *, origin: str | None) -> Signed[Offer]:
        """All offer rules; `origin` is the gossip originator's PeerID (None for offers fetched by book sync)."""
        signed = open_envelope(data, Offer, max_size=MAX_OFFER_SIZE)
        offer = signed.message
        signer = signed.signer_peer_id
        if origin is not None and signer != origin:
            raise SignerMismatch(f"offer signed by {signer} but gossiped as originating from {origin}")
        if offer.peer_id != signer:
            raise SignerMismatch(f"offer for {offer.peer_id} signed by {signer}")
        now = self._clock()
        if offer.expires_at <= now:
            raise OfferExpired(f"offer from {signer} expired {now - offer.expires_at:.0f} s ago")
        if offer.expires_at > now + OFFER_MAX_AHEAD_S + self.clock_skew_s:
            raise OfferTooFarAhead(f"offer from {signer} expires {offer.expires_at - now:.0f} s ahead "
                                   f"(limit {OFFER_MAX_AHEAD_S} s)")
        digest = hashlib.sha256(signed.raw).digest()
        last = self._last.get(signer)
        if last is not None and offer.seq <= last[0]:
            if offer.seq == last[0] and digest == last[2]:
                # The very offer we hold, reaching us a second way (book sync, then gossip): harmless, and the
                # honest peer relaying it must not be penalised. The book ignores it (same seq).
                return signed
            raise StaleSeq(f"offer from {signer} has seq {offer.seq}, not above the last seen {last[0]}")
        self._remember(signer, offer.seq, offer.expires_at, now, digest)
        return signed

    def last_seq(self, peer_id: str) -> int | None:
        last = self._last.get(peer_id)
        return last[0] if last else None

    def _remember(self, peer_id: str, seq: int, expires_at: int, now: float, digest: bytes) -> None:
        self._last[peer_id] = (seq, expires_at, digest)
        self._last.move_to_end(peer_id)
        if len(self._last) > self.max_tracked:
            # Forget providers whose last offer expired long ago (their replays now fail the expiry check
            # anyway); if that is not enough, the least recently heard.
            stale = [p for p, (_, exp, _) in self._last.items() if exp < now - OFFER_MAX_AHEAD_S]
            for p in stale:
                del self._last[p]
            while len(self._last) > self.max_tracked:
                self._last.popitem(last=False)


def build_offer(identity: Identity, cfg: OfferConfig, devices: Sequence[Device], addrs: Sequence[str], *,
                seq: int, now: float | None = None, stake: str = "") -> Offer:
    """The offer a provider gossips, from its config and detected devices."""
    now = time.time() if now is None else now
    return Offer(
        peer_id=identity.peer_id,
        payout=cfg.payout or identity.address,
        devices=list(devices),
        price=cfg.price,
        min_s=cfg.min_s,
        max_s=cfg.max_s,
        stake=stake,
        addrs=list(addrs)[:16],
        seq=seq,
        expires_at=int(math.floor(now)) + int(cfg.ttl_s),
    )


class OfferPublisher:
    """Publishes our offer on start, whenever :meth:`changed` is called, and before it expires.

    `publish` is the gossip publish function; `devices` and `addrs` are read afresh for every offer, so a
    device change or a new announce address shows up in the next one.
    """

    def __init__(self, identity: Identity, store: Store, cfg: OfferConfig,
                 publish: Callable[[str, bytes], object], devices: Callable[[], Sequence[Device]],
                 addrs: Callable[[], Sequence[str]], stake: Callable[[], str] = lambda: "") -> None:
        self.identity = identity
        self.store = store
        self.cfg = cfg
        self._publish = publish
        self._devices = devices
        self._addrs = addrs
        self._stake = stake
        self._wake = trio.Event()
        self.current: Offer | None = None
        self.published = 0

    @property
    def interval_s(self) -> float:
        """Republish early enough that peers never see our offer lapse: at most half the ttl."""
        return max(min(self.cfg.republish_s, self.cfg.ttl_s / 2), 0.05)

    def changed(self) -> None:
        """Ask for a new offer now (price, devices or addresses changed)."""
        self._wake.set()

    async def publish_now(self) -> Offer:
        devices = list(self._devices())
        if not devices:
            raise RuntimeError("no devices to offer")
        seq = self.store.next_counter(SEQ_KEY)  # committed (fsynced) before the offer leaves the node
        offer = build_offer(self.identity, self.cfg, devices, self._addrs(), seq=seq, stake=self._stake())
        await self._publish(OFFERS_TOPIC, seal(offer, self.identity))
        self.current = offer
        self.published += 1
        log.info("published offer seq=%d (%d device(s), price %d, expires %d)", offer.seq, len(offer.devices),
                 offer.price, offer.expires_at)
        return offer

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                await self.publish_now()
            except ProtocolError as exc:
                log.warning("our own offer was rejected: %s", exc)
            if not started:
                started = True
                task_status.started()
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()
            self._wake = trio.Event()


def offer_devices_from_config(cfg: NodeConfig) -> list[Device]:
    """Detect devices with the compute capability (imports torch lazily: only providers call this)."""
    from ..compute.devices import detect_devices

    return [d.to_offer_device() for d in detect_devices(cfg.compute.max_memory_bytes)]
