"""The libp2p host every role uses: TCP + Noise only + yamux, one connection per peer, always closed on exit.

py-libp2p's defaults are wrong for us in three measured ways (DESIGN.md): the default security list also offers
plaintext and secio, every connect waits 250 ms unless ``max_connections_per_peer=1``, and leaving
``host.run()`` does not close connections. :func:`running_host` fixes all three in one place so no caller can
forget one of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import socket
from typing import Any

import multiaddr
import trio

from ..config import NetConfig
from ..errors import ConfigError
from ..identity import Identity

NOISE_ONLY = "/noise"
YAMUX_ONLY = "/yamux/1.0.0"


class BadMultiaddr(ConfigError):
    """A configured or given multiaddr does not parse or lacks the part we need."""


def parse_maddr(text: str, *, need_peer: bool = False, what: str = "address") -> multiaddr.Multiaddr:
    """Parse a multiaddr from config or the command line, with an error that names it and the expected form."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise BadMultiaddr(f"{what} {text!r} is not a multiaddr ({exc}); expected e.g. /ip4/1.2.3.4/tcp/4001") from None
    if need_peer:
        try:
            addr.value_for_protocol("p2p")
        except Exception:
            raise BadMultiaddr(f"{what} {text!r} has no /p2p/<PeerID> part; use the full address the seed peer prints")
    return addr


def peer_info(text: str, *, what: str = "bootstrap address"):
    """A `PeerInfo` from a full ``.../p2p/<PeerID>`` multiaddr."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    addr = parse_maddr(text, need_peer=True, what=what)
    try:
        return info_from_p2p_addr(addr)
    except Exception as exc:
        raise BadMultiaddr(f"{what} {text!r}: {exc}") from None


@dataclass(frozen=True)
class HostSettings:
    """What the host factory needs; built from :class:`NetConfig` so tests can pass tcp/0 addresses."""

    listen: Sequence[str]
    announce: Sequence[str] = ()
    dial_timeout_s: float = 10.0
    max_peers: int = 64

    @classmethod
    def from_config(cls, net: NetConfig) -> "HostSettings":
        return cls(listen=list(net.listen), announce=list(net.announce), dial_timeout_s=net.dial_timeout_s,
                   max_peers=net.max_peers)


def build_host(identity: Identity, settings: HostSettings):
    """A py-libp2p host with our transport stack; not yet listening (see :func:`running_host`)."""
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID, Yamux

    from .transport import BufferedNoise

    if not settings.listen:
        raise ConfigError("net.listen is empty; give at least one address such as /ip4/0.0.0.0/tcp/4001")
    listen = [parse_maddr(a, what="listen address") for a in settings.listen]
    for a in listen:
        names = [p.name for p in a.protocols()]
        if "tcp" not in names or any(n in names for n in ("ws", "wss", "quic", "quic-v1")):
            raise BadMultiaddr(f"listen address {a} is not plain TCP; this node speaks TCP + Noise + yamux only")
    announce = [parse_maddr(a, what="announce address") for a in settings.announce] or None
    addrs_factory = None if announce else _expand_unspecified
    key_pair = identity.libp2p_keypair()
    conn_cfg = ConnectionConfig(
        max_connections_per_peer=1,  # DESIGN: otherwise every connect waits 250 ms
        dial_timeout=settings.dial_timeout_s,
        max_connections=max(settings.max_peers * 2, 16),
        # The connection manager's auto-connect keeps dialling old peers; our discovery decides whom to dial.
        min_connections=0,
        low_watermark=0,
        high_watermark=max(settings.max_peers * 2, 16),
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: BufferedNoise(key_pair, noise_privkey=new_x25519().private_key)},
        muxer_opt={YAMUX_ID: Yamux},
        listen_addrs=listen,
        connection_config=conn_cfg,
        announce_addrs=announce,
        addrs_factory=addrs_factory,
    )
    return host, listen


def handing_to(nursery: trio.Nursery, serve: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """A stream handler that hands each stream to `nursery`: py-libp2p's handler task is not ours to keep, the
    service's nursery owns (and cancels) the work. Once that nursery has closed — the service stopped — new
    streams are reset."""

    async def handle(stream: Any) -> None:
        try:
            nursery.start_soon(serve, stream)
        except RuntimeError:  # "Nursery is closed to new arrivals"
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:
                    pass

    return handle


@asynccontextmanager
async def running_host(identity: Identity, settings: HostSettings) -> AsyncIterator[object]:
    """Run a listening host for the body of the block and close every connection afterwards, even on Ctrl-C."""
    host, listen = build_host(identity, settings)
    for addr in listen:
        _check_port_free(addr)
    try:
        async with host.run(listen_addrs=listen):
            if not host.get_transport_addrs():
                raise ConfigError(f"cannot listen on {', '.join(map(str, listen))}; check net.listen / --listen")
            try:
                yield host
            finally:
                # Close while the swarm service still runs: closing after run() has exited leaves the TCP
                # sockets open (the peer keeps a live connection to a node that is gone).
                await _close(host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {', '.join(map(str, listen))} ({exc.strerror or exc}); "
                          "choose another port with --listen or net.listen") from None
    finally:
        await _close(host)  # idempotent; covers a failure inside run() before the body started


def _check_port_free(addr: multiaddr.Multiaddr) -> None:
    """Refuse a fixed port someone already listens on.

    py-libp2p binds with SO_REUSEPORT, so a second node on the same port would start "fine" and the kernel would
    split incoming connections between the two. A plain bind (no SO_REUSEPORT) fails if anyone listens there.
    """
    port = int(addr.value_for_protocol("tcp"))
    if port == 0:
        return
    try:
        ip, family = addr.value_for_protocol("ip4"), socket.AF_INET
    except Exception:
        ip, family = addr.value_for_protocol("ip6"), socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr} ({exc.strerror or exc}): another process (another node?) "
                          "holds the port; stop it or choose another port with --listen or net.listen") from None


async def _close(host) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        await host.close()


def _local_ips() -> list[str]:
    """Loopback plus the address of the interface that routes outward (no packet is sent)."""
    ips = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, only used to pick the interface
            ip = s.getsockname()[0]
            if ip and ip not in ips and not ip.startswith("0."):
                ips.append(ip)
    except OSError:
        pass
    return ips


def _expand_unspecified(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Never advertise 0.0.0.0 (peers cannot dial it): list the concrete addresses behind it instead."""
    out: list[multiaddr.Multiaddr] = []
    seen: set[str] = set()
    for a in addrs:
        text = str(a)
        candidates = [text.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/", 1) for ip in _local_ips()] \
            if text.startswith("/ip4/0.0.0.0/") else [text]
        for c in candidates:
            if c not in seen:
                seen.add(c)
                out.append(multiaddr.Multiaddr(c))
    return out


def listen_addrs(host) -> list[str]:
    """The full addresses (with /p2p/) others can dial, announce addresses first when configured."""
    return [str(a) for a in host.get_addrs()]


def transport_addrs(host) -> list[str]:
    """The real listen addresses (tcp/0 resolved to the port the OS chose), without /p2p/."""
    return [str(a) for a in host.get_transport_addrs()]
