"""``/iog/status/1.0.0``: ask a node how it is doing and, optionally, for the offers in its book.

One request/response per stream, every frame varint-length-prefixed (wire.FramedStream):

1. client → ``status_request`` envelope (a fresh nonce, whether it wants offers, how many at most);
2. server → ``status`` envelope (echoing the nonce, so a recorded answer cannot be replayed);
3. if offers were asked for: one frame per offer, each the provider's own signed envelope exactly as received
   (the client re-checks every offer rule itself), then an empty frame.

The offer list is how a light client fills its book at once instead of waiting up to a re-publish interval;
``p2pnode status`` uses the status part against a node running on the same machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import ProtocolError
from ..identity import Identity
from ..wire import KiB, FramedStream, Message, Signed, bounded, message, MAX_OFFER_SIZE

log = logging.getLogger(__name__)

STATUS_PROTOCOL = "/iog/status/1.0.0"
STATUS_TIMEOUT_S = 10.0
MAX_SYNC_OFFERS = 5000


class StatusMismatch(ProtocolError):
    """The status answer does not echo our nonce or is not signed by the peer we asked."""


@message("status_request", max_size=1 * KiB)
@dataclass(frozen=True)
class StatusRequest(Message):
    nonce: bytes = bounded(exact_len=16)
    want_offers: bool = False
    max_offers: int = bounded(min=0, max=MAX_SYNC_OFFERS, default=MAX_SYNC_OFFERS)


@message("status", max_size=128 * KiB)
@dataclass(frozen=True)
class Status(Message):
    nonce: bytes = bounded(exact_len=16)
    peer_id: str = bounded(max_len=64)
    role: str = bounded(max_len=16)
    version: str = bounded(max_len=32)
    addrs: list[str] = bounded(max_len=32)
    peers: list[str] = bounded(max_len=512)
    offers: int = bounded(min=0, max=2**31)
    rejected: int = bounded(min=0, max=2**63 - 1)
    uptime_s: float = bounded(min=0.0, max=1e12)
    time: int = bounded(min=0, max=2**40)
    routing_table: int = bounded(min=0, max=2**31, default=0)
    offer_seq: int = bounded(min=0, max=2**63 - 1, default=0)  # our own latest offer's seq (providers)


StatusFn = Callable[[bytes], Status]
OffersFn = Callable[[], list[bytes]]


class StatusServer:
    """Answers status requests on a host; `status_fn(nonce)` builds the answer, `offers_fn()` lists raw offers."""

    def __init__(self, host, identity: Identity, status_fn: StatusFn, offers_fn: OffersFn) -> None:
        self.host = host
        self.identity = identity
        self.status_fn = status_fn
        self.offers_fn = offers_fn
        self.served = 0
        self.rejected = 0
        host.set_stream_handler(STATUS_PROTOCOL, self._handle)

    async def _handle(self, stream) -> None:
        try:
            with trio.fail_after(STATUS_TIMEOUT_S):
                framed = FramedStream(stream)
                req = (await framed.receive_message(StatusRequest, max_size=1 * KiB)).message
                await framed.send_message(self.status_fn(req.nonce), self.identity)
                if req.want_offers:
                    for raw in self.offers_fn()[: req.max_offers]:
                        await framed.send(raw)
                    await framed.send(b"")
            self.served += 1
            await stream.close()
        except (ProtocolError, trio.TooSlowError) as exc:
            self.rejected += 1
            log.info("status request rejected: %s: %s", type(exc).__name__, exc)
            await _reset(stream)
        except Exception as exc:  # the peer went away mid-answer: a stream error, not our bug
            log.debug("status stream failed: %s", exc)
            await _reset(stream)


async def _reset(stream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:
            pass


async def query_status(host, peer_id, identity: Identity, *, want_offers: bool = False,
                       timeout: float = STATUS_TIMEOUT_S) -> tuple[Signed[Status], list[bytes]]:
    """Ask a connected (or dialable) peer for its status and optionally its offers; raw offers are unchecked."""
    nonce = os.urandom(16)
    with trio.fail_after(timeout):
        stream = await host.new_stream(peer_id, [STATUS_PROTOCOL])
        try:
            framed = FramedStream(stream)
            await framed.send_message(StatusRequest(nonce=nonce, want_offers=want_offers), identity)
            status = await framed.receive_message(Status, max_size=128 * KiB)
            if status.message.nonce != nonce:
                raise StatusMismatch("status answer does not echo our nonce")
            if status.signer_peer_id != peer_id.to_base58():
                raise StatusMismatch(f"status answer signed by {status.signer_peer_id}, not the peer we asked")
            offers: list[bytes] = []
            if want_offers:
                while True:
                    raw = await framed.receive(MAX_OFFER_SIZE)
                    if not raw:
                        break
                    offers.append(raw)
                    if len(offers) > MAX_SYNC_OFFERS:
                        raise StatusMismatch("peer sent more offers than asked for")
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except Exception:
                    pass
    return status, offers
