"""Noise over a read-buffered TCP connection: the same bytes on the wire, far fewer socket reads.

py-libp2p's Noise reader asks the raw connection for each message in two reads (the 2-byte length, then up to
64 KiB of body), and each read is a socket ``recv`` plus trio's scheduling around it. With yamux on top that is
one such pair per 64 KiB of stream data, which made the receiving end CPU-bound well below 1 GbE (DESIGN.md,
measured facts). :class:`BufferedNoise` hands the handshake and everything after it a connection that receives
up to 256 KiB per ``recv`` and serves the small reads from that. Only reads are changed: writes, close and
addresses go to the real connection, and nothing about the wire format differs.
"""

from __future__ import annotations

from typing import Any

from libp2p.abc import IRawConnection
from libp2p.security.noise.transport import Transport as NoiseTransport

RECV_SIZE = 256 * 1024


class BufferedConnection(IRawConnection):
    """A raw connection whose reads come from a buffer refilled by one large read of the real one."""

    def __init__(self, inner: IRawConnection) -> None:
        self.inner = inner
        self.is_initiator = inner.is_initiator
        self._data = b""
        self._pos = 0

    async def read(self, n: int | None = None) -> bytes:
        if self._pos >= len(self._data):
            data = await self.inner.read(RECV_SIZE if n is None else max(n, RECV_SIZE))
            if n is None or len(data) <= n:
                return data
            self._data, self._pos = data, 0
        end = len(self._data) if n is None else min(len(self._data), self._pos + n)
        out = self._data[self._pos:end] if (self._pos, end) != (0, len(self._data)) else self._data
        self._pos = end
        if self._pos >= len(self._data):
            self._data, self._pos = b"", 0
        return out

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.inner.get_remote_address()

    def get_transport_addresses(self) -> list[Any]:
        return self.inner.get_transport_addresses()

    def get_connection_type(self) -> Any:
        return self.inner.get_connection_type()

    def __getattr__(self, name: str) -> Any:  # anything else py-libp2p asks of a raw connection
        return getattr(self.inner, name)


class BufferedNoise(NoiseTransport):
    """py-libp2p's Noise transport (XX, the standard libp2p handshake) over :class:`BufferedConnection`."""

    async def secure_inbound(self, conn: IRawConnection) -> Any:
        return await super().secure_inbound(BufferedConnection(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: Any) -> Any:
        return await super().secure_outbound(BufferedConnection(conn), peer_id)
