"""The offer book every node keeps: the newest offer per provider, expired ones dropped, queryable.

Offers arrive already validated (signature, signer == origin, schema, expiry window, seq) by the
``/iog/offers/1`` validator; the book only orders them. A provider's offer is replaced only by a higher
``seq``, so a replayed old offer can never push out a newer one, and an offer past ``expires_at`` disappears —
that is how a provider that stopped (crashed, lost its network) leaves the market without saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..wire import Offer, Signed


@dataclass(frozen=True)
class BookEntry:
    offer: Offer
    raw: bytes  # the signed envelope as received: anyone can re-verify it
    received_at: float

    @property
    def peer_id(self) -> str:
        return self.offer.peer_id


class OfferBook:
    """In-memory book; `changed` fires whenever an offer is added, replaced or dropped."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, BookEntry] = {}
        self._clock = clock
        self._changed = trio.Event()
        self.last_change = 0.0

    def __len__(self) -> int:
        self.expire()
        return len(self._entries)

    def _touch(self) -> None:
        self.last_change = self._clock()
        self._changed.set()
        self._changed = trio.Event()

    def add(self, signed: Signed[Offer]) -> bool:
        """Keep `signed` if it is newer than what we hold for its provider and not expired; True if kept."""
        offer = signed.message
        now = self._clock()
        if offer.expires_at <= now:
            return False
        current = self._entries.get(offer.peer_id)
        if current is not None and current.offer.seq >= offer.seq:
            return False
        self._entries[offer.peer_id] = BookEntry(offer=offer, raw=signed.raw, received_at=now)
        self._touch()
        return True

    def remove(self, peer_id: str) -> bool:
        if self._entries.pop(peer_id, None) is not None:
            self._touch()
            return True
        return False

    def expire(self, now: float | None = None) -> int:
        """Drop expired offers; returns how many."""
        now = self._clock() if now is None else now
        dead = [p for p, e in self._entries.items() if e.offer.expires_at <= now]
        for p in dead:
            del self._entries[p]
        if dead:
            self._touch()
        return len(dead)

    def get(self, peer_id: str) -> Offer | None:
        self.expire()
        entry = self._entries.get(peer_id)
        return entry.offer if entry else None

    def entries(self) -> list[BookEntry]:
        self.expire()
        return sorted(self._entries.values(), key=lambda e: (e.offer.price, e.offer.peer_id))

    def offers(self) -> list[Offer]:
        return [e.offer for e in self.entries()]

    def query(self, *, kind: str | None = None, name: str | None = None, min_mem_bytes: int = 0,
              max_price: int | None = None, min_devices: int = 1) -> list[Offer]:
        """Live offers with at least `min_devices` devices matching kind / name substring / memory, cheapest first.

        `name` matches case-insensitively as a substring ("4090" finds "NVIDIA GeForce RTX 4090").
        """
        needle = name.lower() if name else None
        out = []
        for offer in self.offers():
            if max_price is not None and offer.price > max_price:
                continue
            matching = [
                d for d in offer.devices
                if (kind is None or d.kind == kind)
                and (needle is None or needle in d.name.lower())
                and d.mem_bytes >= min_mem_bytes
            ]
            if len(matching) >= min_devices:
                out.append(offer)
        return out

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_for(self, predicate: Callable[["OfferBook"], bool], timeout: float) -> bool:
        """Wait until `predicate(book)` holds (re-checked on each change and every second); False on timeout."""
        with trio.move_on_after(timeout):
            while not predicate(self):
                with trio.move_on_after(1.0):
                    await self.wait_changed()
            return True
        return False

    async def settle(self, *, quiet_s: float, timeout: float) -> None:
        """Return once no offer was added or replaced for `quiet_s` seconds (or after `timeout`)."""
        with trio.move_on_after(timeout):
            start = self._clock()
            while True:
                since = self._clock() - max(self.last_change, start)
                if since >= quiet_s:
                    return
                with trio.move_on_after(quiet_s - since):
                    await self.wait_changed()

    async def run_expiry(self, interval_s: float = 1.0) -> None:
        """Background task: drop expired offers promptly so `changed` waiters see them go."""
        while True:
            await trio.sleep(interval_s)
            self.expire()
