"""The wire contract: msgpack, signed envelopes, typed message schemas, size limits and stream framing.

Everything here is specified in DESIGN.md precisely enough that a js- or go-libp2p peer can speak it:

* an **envelope** is the msgpack map ``{"v": 1, "t": type, "body": bytes, "signer": 32 bytes, "sig": 64 bytes}``
  with ``sig = Ed25519(signer, b"iog/1/" + t + b"\\x00" + body)`` — the domain prefix stops a signature made
  for one message type (or another protocol) from being replayed as another;
* a **body** is the msgpack map of one registered :class:`Message` dataclass; decoding checks every field's
  type and bounds, so code past this module only ever sees well-formed values;
* a **frame** on a stream is an unsigned LEB128 varint length followed by that many bytes.

Every failure is a :class:`WireError` subclass; nothing malformed escapes as a bare ``KeyError`` or
``msgpack`` exception. Message classes of other capabilities (attestation, negotiation, rewards) are declared
in their own modules with :func:`message` and register here, so there is one registry and one codec.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

from .errors import ProtocolError
from .identity import Identity, verify_signature

WIRE_VERSION = 1
DOMAIN = b"iog/1/"

KiB = 1024
MiB = 1024 * KiB
MAX_CONTROL_FRAME = 1 * MiB  # DESIGN: control frames <= 1 MiB
MAX_CHUNK = 1 * MiB  # DESIGN: bulk data in chunks <= 1 MiB
MAX_ENVELOPE = MAX_CONTROL_FRAME
_ENVELOPE_OVERHEAD = 256  # map keys, type string, signer, signature
_MAX_VARINT_BYTES = 4  # 4 LEB128 bytes reach 256 MiB, far above any frame we accept
# Bytes per stream write: a yamux frame (12-byte header) of this much data fills one Noise message (65535 bytes
# less its 16-byte tag) exactly. A bigger write makes yamux cut 64 KiB frames that each spill 17 bytes into a
# second Noise message, doubling the receiver's per-message work (DESIGN.md, measured facts).
STREAM_WRITE = 65535 - 16 - 12

# --- errors -------------------------------------------------------------------------------------------------


class WireError(ProtocolError):
    """Input that does not follow the wire contract."""


class MalformedMessage(WireError):
    """Not decodable msgpack, or not the shape of an envelope."""


class OversizeMessage(WireError):
    """Larger than the limit for its kind; rejected before decoding."""


class UnknownVersion(WireError):
    """Envelope version other than the one we speak."""


class UnknownType(WireError):
    """Envelope type not registered, or not the type expected in this context."""


class BadSignature(WireError):
    """The envelope signature does not verify against its signer."""


class SchemaError(WireError):
    """The body decodes but a field is missing, of the wrong type or out of bounds."""


class FrameError(WireError):
    """A stream frame is malformed, too large, or the stream ended inside one."""


# --- msgpack ------------------------------------------------------------------------------------------------


def _no_ext(code: int, data: bytes) -> Any:
    raise MalformedMessage(f"msgpack extension type {code} is not allowed")


def pack(obj: Any) -> bytes:
    """Encode with the settings every implementation must use: bin for bytes, str for text."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, *, max_size: int) -> Any:
    """Decode untrusted msgpack with a size bound; any failure is a :class:`MalformedMessage`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage("expected bytes")
    if len(data) > max_size:
        raise OversizeMessage(f"{len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises a zoo: ExtraData, FormatError, StackError, ValueError, TypeError...
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}") from None


# --- message schemas ----------------------------------------------------------------------------------------


def bounded(*, max_len: int | None = None, exact_len: int | None = None, min: float | None = None,
            max: float | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with bounds checked on decode (lengths of str/bytes/list, range of numbers)."""
    meta = {"max_len": max_len, "exact_len": exact_len, "min": min, "max": max}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_REGISTRY: dict[str, type["Message"]] = {}

M = TypeVar("M", bound="Message")


def message(type_name: str, *, max_size: int = MAX_ENVELOPE):
    """Register a dataclass as the body of envelopes of type `type_name` (unique across the project)."""

    def wrap(cls: type[M]) -> type[M]:
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise RuntimeError(f"message type {type_name!r} registered twice")
        cls.TYPE = type_name
        cls.MAX_SIZE = max_size
        _REGISTRY[type_name] = cls
        return cls

    return wrap


def registered_types() -> dict[str, type["Message"]]:
    return dict(_REGISTRY)


class Record:
    """A dataclass that converts to and from a msgpack map with strict type and bound checks."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_wire(getattr(self, f.name))
        return out

    @classmethod
    def from_wire(cls: type[M], obj: Any, *, where: str = "") -> M:
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise SchemaError(f"{where}: expected a map, got {type(obj).__name__}")
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in obj:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise SchemaError(f"{where}: missing field {f.name!r}")
            kwargs[f.name] = _check(obj[f.name], hints[f.name], f.metadata, f"{where}.{f.name}")
        record = cls(**kwargs)
        record.check(where)
        return record

    def check(self, where: str) -> None:
        """Cross-field rules beyond per-field types; raise :class:`SchemaError`. Override where needed."""


class Message(Record):
    """A body that travels inside a signed envelope; subclasses are registered with :func:`message`."""

    TYPE: ClassVar[str]
    MAX_SIZE: ClassVar[int]

    def encode_body(self) -> bytes:
        return pack(self.to_wire())

    @classmethod
    def decode_body(cls: type[M], body: bytes) -> M:
        return cls.from_wire(unpack(body, max_size=cls.MAX_SIZE), where=cls.TYPE)


_HINT_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINT_CACHE.get(cls)
    if hints is None:
        hints = _HINT_CACHE[cls] = typing.get_type_hints(cls)
    return hints


def _to_wire(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _check(value: Any, hint: Any, meta: typing.Mapping[str, Any], where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        non_none = [o for o in options if o is not type(None)]
        if len(non_none) != 1:
            raise TypeError(f"{where}: only Optional[...] unions are supported in schemas")
        return _check(value, non_none[0], meta, where)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        _check_len(value, meta, where)
        (item,) = typing.get_args(hint)
        return [_check(v, item, {}, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a map, got {type(value).__name__}")
        _check_len(value, meta, where)
        key_t, val_t = typing.get_args(hint)
        return {_check(k, key_t, {}, f"{where}<key>"): _check(v, val_t, {}, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_wire(value, where=where)
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected a bool, got {type(value).__name__}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"{where}: expected an integer, got {type(value).__name__}")
        _check_range(value, meta, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise SchemaError(f"{where}: must be finite")
        _check_range(value, meta, where)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, got {type(value).__name__}")
        _check_len(value, meta, where)
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise SchemaError(f"{where}: expected bytes, got {type(value).__name__}")
        _check_len(value, meta, where)
        return value
    if hint is Any:
        return value
    raise TypeError(f"{where}: unsupported schema type {hint!r}")


def _check_len(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    exact = meta.get("exact_len")
    if exact is not None and len(value) != exact:
        raise SchemaError(f"{where}: length {len(value)}, expected {exact}")
    limit = meta.get("max_len")
    if limit is not None and len(value) > limit:
        raise SchemaError(f"{where}: length {len(value)} exceeds {limit}")


def _check_range(value: float, meta: typing.Mapping[str, Any], where: str) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise SchemaError(f"{where}: {value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise SchemaError(f"{where}: {value} is above the maximum {hi}")


# --- signed envelopes ---------------------------------------------------------------------------------------


def signing_payload(type_name: str, body: bytes) -> bytes:
    """The bytes an envelope signature covers: domain prefix, type, NUL, body."""
    return DOMAIN + type_name.encode() + b"\x00" + body


@dataclass(frozen=True)
class Signed(typing.Generic[M]):
    """A verified envelope: the message, who signed it, and the exact bytes (kept for storage and evidence)."""

    message: M
    signer: bytes
    raw: bytes

    @property
    def signer_peer_id(self) -> str:
        from .identity import peer_id_from_public_key

        return peer_id_from_public_key(self.signer)


def seal(msg: Message, identity: Identity) -> bytes:
    """Sign `msg` with `identity` and return the envelope bytes."""
    body = msg.encode_body()
    if len(body) + _ENVELOPE_OVERHEAD > type(msg).MAX_SIZE:
        raise OversizeMessage(f"{msg.TYPE} body of {len(body)} bytes exceeds its {type(msg).MAX_SIZE}-byte limit")
    sig = identity.sign(signing_payload(msg.TYPE, body))
    return pack({"v": WIRE_VERSION, "t": msg.TYPE, "body": body, "signer": identity.public_key, "sig": sig})


def open_envelope(data: bytes, expect: type[M] | tuple[type[Message], ...] | None = None,
                  *, max_size: int | None = None) -> Signed[M]:
    """Decode, check the signature, then the schema — in that order, so nothing unsigned is interpreted.

    `expect` restricts the accepted message types (anything else is :class:`UnknownType`).
    """
    allowed: tuple[type[Message], ...] | None
    if expect is None:
        allowed = None
    elif isinstance(expect, tuple):
        allowed = expect
    else:
        allowed = (expect,)
    if max_size is None:
        max_size = max(c.MAX_SIZE for c in allowed) if allowed else MAX_ENVELOPE
    env = unpack(data, max_size=max_size)
    if not isinstance(env, dict):
        raise MalformedMessage("envelope is not a map")
    v = env.get("v")
    if v != WIRE_VERSION or isinstance(v, bool):
        raise UnknownVersion(f"envelope version {v!r}; this node speaks {WIRE_VERSION}")
    t, body, signer, sig = env.get("t"), env.get("body"), env.get("signer"), env.get("sig")
    if not isinstance(t, str) or not isinstance(body, bytes) or not isinstance(signer, bytes) or not isinstance(sig, bytes):
        raise MalformedMessage("envelope fields t/body/signer/sig missing or of the wrong type")
    if len(signer) != 32 or len(sig) != 64:
        raise MalformedMessage("envelope signer must be 32 bytes and sig 64 bytes")
    cls = _REGISTRY.get(t)
    if cls is None:
        raise UnknownType(f"unknown message type {t[:64]!r}")
    if allowed is not None and cls not in allowed:
        raise UnknownType(f"message type {t!r} not expected here")
    if len(data) > cls.MAX_SIZE:
        raise OversizeMessage(f"{t} envelope of {len(data)} bytes exceeds its {cls.MAX_SIZE}-byte limit")
    if not verify_signature(signer, signing_payload(t, body), sig):
        raise BadSignature(f"{t} envelope signature does not verify")
    return Signed(message=cls.decode_body(body), signer=signer, raw=bytes(data))


# --- stream framing -----------------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(data: bytes) -> tuple[int, int]:
    """Decode a varint at the start of `data`: (value, bytes used). Raises FrameError if incomplete or too long."""
    value = 0
    for i, b in enumerate(data[:_MAX_VARINT_BYTES]):
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i > 0 and b == 0:
                raise FrameError("non-minimal varint")
            return value, i + 1
    if len(data) >= _MAX_VARINT_BYTES:
        raise FrameError("varint length prefix too long")
    raise FrameError("incomplete varint")


def frame(payload: bytes) -> bytes:
    return encode_varint(len(payload)) + payload


class FramedStream:
    """Varint-length-prefixed frames over any byte stream with ``async read(n)`` and ``async write(b)``.

    Works on py-libp2p streams directly and on trio streams through :func:`trio_stream_adapter`. Callers put
    their own deadline around every receive (``trio.fail_after``); this class never waits unboundedly on its own
    behalf beyond the underlying read.
    """

    def __init__(self, stream: Any, *, read_size: int = 64 * KiB) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._read_size = read_size

    async def _fill(self, want: int = 0) -> None:
        """Read more: at least the usual amount, or what the frame being assembled still lacks (one read, not 16,
        for a 1 MiB chunk the muxer already holds)."""
        chunk = await self.stream.read(max(self._read_size, min(want, MAX_CHUNK)))
        if not chunk:
            raise FrameError("stream closed")
        self._buf += chunk

    async def receive(self, max_size: int = MAX_CONTROL_FRAME) -> bytes:
        while True:
            try:
                length, used = decode_varint(bytes(self._buf[:_MAX_VARINT_BYTES]))
                break
            except FrameError as exc:
                if "incomplete" not in str(exc):
                    raise
            await self._fill()
        if length > max_size:
            raise OversizeMessage(f"frame of {length} bytes exceeds the {max_size}-byte limit")
        while len(self._buf) < used + length:
            await self._fill(used + length - len(self._buf))
        with memoryview(self._buf) as view:  # one copy out of the buffer (a bytearray slice would be a second)
            payload = bytes(view[used:used + length])
        del self._buf[:used + length]
        return payload

    async def send(self, payload: bytes) -> None:
        if len(payload) > MAX_CONTROL_FRAME:
            raise OversizeMessage(f"refusing to send a {len(payload)}-byte frame (limit {MAX_CONTROL_FRAME})")
        data = frame(payload)
        if len(data) <= STREAM_WRITE:
            await self.stream.write(data)
            return
        view = memoryview(data)
        for i in range(0, len(data), STREAM_WRITE):
            await self.stream.write(view[i:i + STREAM_WRITE])

    async def send_message(self, msg: Message, identity: Identity) -> None:
        await self.send(seal(msg, identity))

    async def receive_message(self, expect: type[M] | tuple[type[Message], ...],
                              max_size: int = MAX_CONTROL_FRAME) -> Signed[M]:
        return open_envelope(await self.receive(max_size), expect)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Close the stream, bounded and quietly: the peer may be gone already and is owed nothing more."""
        import trio

        with trio.move_on_after(timeout_s):
            try:
                await self.stream.close()
            except Exception:
                pass


class trio_stream_adapter:
    """Gives a `trio.abc.Stream` the ``read``/``write`` shape :class:`FramedStream` expects."""

    def __init__(self, stream: Any) -> None:
        self._s = stream

    async def read(self, n: int) -> bytes:
        return await self._s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self._s.send_all(data)


# --- the offer (DESIGN.md "Offer body") ---------------------------------------------------------------------

MAX_OFFER_SIZE = 64 * KiB  # up to 64 devices, each with its signed attestation
OFFER_MAX_AHEAD_S = 600  # expires_at must be in (now, now + 10 min]


MAX_DEVICE_ATTESTATION = 1024  # a signed Attestation is ~400-600 bytes


@dataclass(frozen=True)
class Device(Record):
    """One device a provider rents out, as gossiped; `tflops`/`attested_*` come from the last attestation.

    `attestation` is that attestation's signed envelope (the verifier's signature over it): a renter checks it
    against the network's operators instead of taking `tflops` on the provider's word."""

    kind: str = bounded(max_len=8)  # "cuda" | "cpu"
    name: str = bounded(max_len=128)
    mem_bytes: int = bounded(min=0, max=2**50)
    tflops: float = bounded(min=0.0, max=1e6, default=0.0)
    attested_at: int = bounded(min=0, max=2**40, default=0)
    attested_by: str = bounded(max_len=64, default="")  # PeerID of the verifier, "" if never attested
    attestation: bytes = bounded(max_len=MAX_DEVICE_ATTESTATION, default=b"")
    # running a job right now: still listed, so device indices stay stable (attestation challenges name devices by
    # index), but renters skip it; the provider re-publishes when it frees up
    busy: bool = False

    def check(self, where: str) -> None:
        if self.kind not in DEVICE_KINDS:
            raise SchemaError(f"{where}.kind: {self.kind!r} is not one of {DEVICE_KINDS}")


DEVICE_KINDS = ("cuda", "cpu")


@message("offer", max_size=MAX_OFFER_SIZE)
@dataclass(frozen=True)
class Offer(Message):
    """A provider's capacity offer, gossiped on /iog/offers/1 and superseded by a higher `seq`."""

    peer_id: str = bounded(max_len=64)
    payout: str = bounded(max_len=44)  # Solana address (base58)
    devices: list[Device] = bounded(max_len=64)
    price: int = bounded(min=0, max=2**63 - 1)  # IO base units per device-hour
    min_s: int = bounded(min=1, max=2**31)
    max_s: int = bounded(min=1, max=2**31)
    stake: str = bounded(max_len=44)  # stake account address, "" if not staked yet
    addrs: list[str] = bounded(max_len=16)
    seq: int = bounded(min=0, max=2**63 - 1)
    expires_at: int = bounded(min=0, max=2**40)

    def check(self, where: str) -> None:
        if not self.devices:
            raise SchemaError(f"{where}.devices: an offer lists at least one device")
        if self.min_s > self.max_s:
            raise SchemaError(f"{where}: min_s {self.min_s} > max_s {self.max_s}")
        if any(len(a) > 256 for a in self.addrs):
            raise SchemaError(f"{where}.addrs: an address longer than 256 characters")
