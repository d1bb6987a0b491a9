"""The embedded local chain: LiteSVM served over standard Solana JSON-RPC 2.0 on HTTP/1.1, on trio.

No validator binary can be installed here, so `p2pnode localnet` is the default chain; node code only speaks RPC,
so pointing ``rpc_url`` at devnet or mainnet changes nothing else. One trio task per connection (keep-alive,
TCP_NODELAY, h11 parsing, batch requests); one task ticks slots every 400 ms; one task flushes written accounts and
signature statuses to the ledger (``--ledger DIR``) and only then reports transactions as finalized.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from .localnet_ledger import Ledger, LedgerError
from .localnet_rpc import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, Methods, RpcError
from .localnet_state import SLOT_S, LocalChain

log = logging.getLogger(__name__)

MAX_BODY = 50 * 1024  # what a Solana validator's RPC accepts
MAX_BATCH = 1024
MAX_CONNECTIONS = 512  # beyond this, new connections wait for a slot (backpressure, not unbounded tasks)
WRITE_TIMEOUT_S = 30.0  # a client that does not read its response is dropped
IDLE_TIMEOUT_S = 60.0
READ_TIMEOUT_S = 30.0  # a request must arrive completely within this once started
_JSON_HEADERS = [("content-type", "application/json; charset=utf-8")]
MAX_HEADER = 16 * 1024  # h11's max_incomplete_event_size: larger request heads are refused (431)
# What h11 writes for a 200 JSON answer, up to the content-length value (the fast path answers with these bytes).
_PLAIN_HEAD = b"HTTP/1.1 200 \r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: "
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLAIN_HEADERS_SKIPPED = frozenset((b"content-type", b"accept", b"accept-encoding", b"user-agent", b"host"))


def _plain_head(buf: bytearray) -> tuple[int, int] | None | bool:
    """The head of a plain request at the start of `buf`: ``POST /`` (query allowed) ``HTTP/1.1``, CRLF line
    ends, a Host, one decimal Content-Length within MAX_BODY, well-formed header lines, nothing that changes the
    framing or the connection (Transfer-Encoding, Connection other than keep-alive, Expect, Upgrade, obsolete line
    folding): (where the body starts, where the request ends). None: plain so far but the head is incomplete.
    False: anything else, which h11 handles (and answers as before)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:  # incomplete, unless it is too long or uses bare LF line ends (h11 accepts those)
        return None if len(buf) <= MAX_HEADER and buf.count(b"\n") == buf.count(b"\r\n") else False
    if end > MAX_HEADER:
        return False
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1" or parts[1].split(b"?")[0] != b"/":
        return False
    length = None
    host = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value or b"\x00" in value:
            return False
        name = name.lower()
        if name in _PLAIN_HEADERS_SKIPPED:
            host = host or name == b"host"
            continue
        if name == b"content-length":
            value = value.strip(b" \t")
            if length is not None or not value.isdigit() or len(value) > 9:
                return False
            length = int(value)
        elif name in (b"transfer-encoding", b"connection", b"expect", b"upgrade", b"te", b"trailer") and (
                name != b"connection" or value.strip(b" \t").lower() != b"keep-alive"):
            return False
    if length is None or not host or length > MAX_BODY:
        return False
    return end + 4, end + 4 + length


def _envelope_ok(rid: Any, result_json: str) -> str:
    return '{"jsonrpc":"2.0","result":' + result_json + ',"id":' + json.dumps(rid) + "}"


def _envelope_err(rid: Any, err: RpcError) -> str:
    return '{"jsonrpc":"2.0","error":' + err.error_json() + ',"id":' + json.dumps(rid) + "}"


@dataclass
class LocalnetServer:
    """A running localnet: chain state, RPC methods, optional ledger, and the address it listens on."""

    host: str = "127.0.0.1"
    port: int = 8899
    ledger_dir: Path | None = None
    dev: bool = False
    slot_s: float = SLOT_S
    chain: LocalChain = field(init=False)
    methods: Methods = field(init=False)
    ledger: Ledger | None = field(init=False, default=None)
    bound_port: int = field(init=False, default=0)
    _wake: trio.Event = field(init=False)
    _listeners: list = field(init=False, default_factory=list)
    _conn_slots: trio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.chain = LocalChain(dev=self.dev)
        if self.ledger_dir is not None:
            self.ledger = Ledger(self.ledger_dir)
            accounts, meta = self.ledger.load()
            self.chain.restore(accounts, meta)
            self.chain.restore_index(self.ledger.address_index())
            self.chain.lookup_record = self.ledger.record
        self._wake = trio.Event()
        self._conn_slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.methods = Methods(self.chain, on_write=self._notify)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port}"

    def _notify(self) -> None:
        self._wake.set()

    # ---- background tasks ------------------------------------------------------------------------------------------
    async def _ticker(self) -> None:
        next_at = trio.current_time() + self.slot_s
        while True:
            await trio.sleep_until(next_at)
            self.chain.tick()
            self._wake.set()  # the slot must reach the ledger too
            next_at += self.slot_s
            now = trio.current_time()
            if next_at < now:  # we were stalled (suspended process): don't burst-catch-up
                next_at = now + self.slot_s

    async def flush(self) -> None:
        """Group commit: everything written since the last flush goes to disk in one fsynced transaction; only
        then are those transactions reported finalized."""
        snap = self.chain.take_snapshot(serialize=self.ledger is not None)
        if self.ledger is not None and (snap.accounts or snap.records or snap.meta or snap.addresses):
            try:
                await trio.to_thread.run_sync(self.ledger.write, snap)
            except (OSError, sqlite3.Error) as exc:
                # Durability is the promise: stop serving rather than confirm what is not on disk.
                raise LedgerError(f"{self.ledger.path}: cannot write the ledger ({exc}); free disk space or fix "
                                  "permissions, then restart (unconfirmed transactions must be resent)") from None
        self.chain.mark_durable(snap.signatures)

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()

    # ---- HTTP ----------------------------------------------------------------------------------------------------
    def handle_body(self, body: bytes) -> str | None:
        """A JSON-RPC request or batch in, the response text out (None when only notifications were sent)."""
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _envelope_err(None, RpcError(PARSE_ERROR, "Parse error"))
        if isinstance(req, list):
            if not req:
                return _envelope_err(None, RpcError(INVALID_REQUEST, "Invalid request"))
            if len(req) > MAX_BATCH:
                return _envelope_err(None, RpcError(INVALID_REQUEST, f"Batch larger than {MAX_BATCH} requests"))
            parts = [p for p in (self._one(r) for r in req) if p is not None]
            return "[" + ",".join(parts) + "]" if parts else None
        return self._one(req)

    def _one(self, req: Any) -> str | None:
        if not isinstance(req, dict):
            return _envelope_err(None, RpcError(INVALID_REQUEST, "Invalid request"))
        rid = req.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
            return _envelope_err(None, RpcError(INVALID_REQUEST, "Invalid request"))
        if req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
            return _envelope_err(rid, RpcError(INVALID_REQUEST, "Invalid request"))
        try:
            result = self.methods.call(req["method"], req.get("params"))
        except RpcError as err:
            out = _envelope_err(rid, err)
        except Exception as exc:  # a bug or an unexpected runtime error: answer, log, keep serving
            log.exception("localnet: %s failed", req.get("method"))
            out = _envelope_err(rid, RpcError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}"))
        else:
            out = _envelope_ok(rid, result)
        return out if "id" in req else None

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        async with self._conn_slots:
            await self._serve_conn_inner(stream)

    async def _serve_conn_inner(self, stream: trio.SocketStream) -> None:
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            conn = await self._serve_plain(stream)
            if conn is not None:
                await self._serve_h11(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return
        finally:
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await stream.aclose()

    async def _serve_plain(self, stream: trio.SocketStream) -> h11.Connection | None:
        """The fast path for what JSON-RPC clients send: complete, plain ``POST / HTTP/1.1`` requests with a
        Content-Length (see `_plain_head`), answered with the bytes h11 would produce. The first request that is
        anything else (or an error, a timeout, an early close) hands the connection, with the bytes read so far, to
        h11 for good: the returned connection. None: the client is gone."""
        buf = bytearray()
        head: tuple[int, int] | None = None  # (body start, end) of the request at the start of buf, once parsed
        while True:
            if head is None and buf:
                parsed = _plain_head(buf)
                if parsed is False:
                    return self._handover(buf)
                head = parsed  # type: ignore[assignment]
            if head is None or len(buf) < head[1]:
                data = None
                with trio.move_on_after(READ_TIMEOUT_S if buf else IDLE_TIMEOUT_S):
                    data = await stream.receive_some(65536)
                if not data:  # closed or timed out: h11 answers a partial request (400/408) like before
                    if not buf:
                        return None
                    conn = self._handover(buf)
                    if data is None:
                        await self._send_error(conn, stream, 408, "request timeout")
                        return None
                    conn.receive_data(b"")
                    return conn
                buf += data
                continue
            start, end = head
            body = bytes(buf[start:end])
            del buf[:end]
            head = None
            payload = (self.handle_body(body) or "").encode()
            with trio.move_on_after(WRITE_TIMEOUT_S) as cs:
                await stream.send_all(b"".join((_PLAIN_HEAD, str(len(payload)).encode(), b"\r\n\r\n", payload)))
            if cs.cancelled_caught:
                return None

    @staticmethod
    def _handover(buf: bytearray) -> h11.Connection:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
        conn.receive_data(bytes(buf))
        return conn

    async def _serve_h11(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            request, body = await self._read_request(conn, stream)
            if request is None:
                return
            status, text = self._route(request, body)
            payload = (text or "").encode()
            headers = [*_JSON_HEADERS, ("content-length", str(len(payload)))]
            if conn.their_state is h11.ERROR or status >= 400 and status != 405:
                headers.append(("connection", "close"))
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if payload:
                out += conn.send(h11.Data(data=payload))
            out += conn.send(h11.EndOfMessage())
            with trio.move_on_after(WRITE_TIMEOUT_S) as cs:
                await stream.send_all(out)
            if cs.cancelled_caught:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[Any, bytes]:
        """One request and its body; (None, b"") when the client went away or idled out."""
        request = None
        chunks: list[bytes] = []
        size = 0
        timeout = IDLE_TIMEOUT_S
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, stream, exc.error_status_hint, f"bad HTTP request: {exc}")
                return None, b""
            if event is h11.NEED_DATA:
                data = b""
                with trio.move_on_after(timeout):
                    data = await stream.receive_some(65536)
                    if not data:
                        return None, b""
                if not data:  # timed out
                    if request is not None:
                        await self._send_error(conn, stream, 408, "request timeout")
                    return None, b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                timeout = READ_TIMEOUT_S
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    await self._send_error(conn, stream, 413, "payload too large")
                    return None, b""
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await self._send_error(conn, stream, 413, "payload too large")
                    return None, b""
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _send_error(self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        payload = text.encode()
        try:
            out = conn.send(h11.Response(status_code=status, headers=[
                ("content-type", "text/plain"), ("content-length", str(len(payload))), ("connection", "close")]))
            out += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
            with trio.move_on_after(WRITE_TIMEOUT_S):
                await stream.send_all(out)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _route(self, request: h11.Request, body: bytes) -> tuple[int, str | None]:
        method = request.method.upper()
        target = request.target.split(b"?")[0]
        if method == b"GET" and target == b"/health":
            return 200, "ok"
        if method != b"POST":
            return 405, "Used HTTP Method is not allowed. POST or OPTIONS is required"
        if target not in (b"/", b""):
            return 404, "Not Found"
        return 200, self.handle_body(body)

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    async def bind(self) -> list[trio.SocketListener]:
        """Open the listening socket (raises OSError if the port is taken) before anything else starts."""
        self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = self._listeners[0].socket.getsockname()[1]
        return self._listeners

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, tick, flush; `task_status.started(self)` once listening. Cancel to stop (a last flush runs)."""
        listeners = self._listeners or await self.bind()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._flusher)
                await nursery.start(trio.serve_listeners, self._serve_conn, listeners)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                finally:
                    if self.ledger is not None:
                        self.ledger.close()


async def run_localnet(host: str = "127.0.0.1", port: int = 8899, ledger: Path | None = None, dev: bool = False,
                       announce: Any = print) -> None:
    """The `p2pnode localnet` body: serve until SIGINT/SIGTERM, then flush and close cleanly."""
    server = LocalnetServer(host=host, port=port, ledger_dir=ledger, dev=dev)
    await server.bind()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            announce(server)
            async for _sig in signals:
                nursery.cancel_scope.cancel()
                break


__all__ = ["LocalnetServer", "run_localnet"]
