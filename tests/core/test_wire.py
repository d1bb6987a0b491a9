"""Wire format: envelope layout and domain-separated signature, schema checks, framing, and property tests."""

from __future__ import annotations

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pnode.errors import ProtocolError
from p2pnode.identity import Identity, verify_signature
from p2pnode.wire import (
    MAX_OFFER_SIZE, BadSignature, Device, FramedStream, FrameError, MalformedMessage, Offer, OversizeMessage,
    SchemaError, UnknownType, UnknownVersion, decode_varint, encode_varint, frame, open_envelope, pack, seal,
    trio_stream_adapter,
)

ID = Identity.generate()

devices = st.builds(Device, kind=st.sampled_from(["cuda", "cpu"]), name=st.text(max_size=128),
                    mem_bytes=st.integers(0, 2**50), tflops=st.floats(0, 1e6, allow_nan=False),
                    attested_at=st.integers(0, 2**40), attested_by=st.text(max_size=64),
                    attestation=st.binary(max_size=1024))
offers = st.builds(
    lambda devs, price, a, b, seq, exp, addrs: Offer(
        peer_id=ID.peer_id, payout=ID.address, devices=devs, price=price, min_s=min(a, b), max_s=max(a, b),
        stake="", addrs=addrs, seq=seq, expires_at=exp),
    st.lists(devices, min_size=1, max_size=8), st.integers(0, 2**63 - 1), st.integers(1, 2**31),
    st.integers(1, 2**31), st.integers(0, 2**63 - 1), st.integers(0, 2**40),
    st.lists(st.text(max_size=64), max_size=4))


def sample_offer(**kw) -> Offer:
    base = dict(peer_id=ID.peer_id, payout=ID.address, devices=[Device(kind="cpu", name="x", mem_bytes=1)],
                price=1, min_s=1, max_s=2, stake="", addrs=[], seq=1, expires_at=100)
    base.update(kw)
    return Offer(**base)


def test_envelope_layout_matches_design():
    data = seal(sample_offer(), ID)
    env = msgpack.unpackb(data, raw=False)
    assert set(env) == {"v", "t", "body", "signer", "sig"} and env["v"] == 1 and env["t"] == "offer"
    assert env["signer"] == ID.public_key
    # sig = Ed25519(signer, b"iog/1/" + t + b"\0" + body), checkable with nothing but nacl
    assert verify_signature(ID.public_key, b"iog/1/offer\x00" + env["body"], env["sig"])
    assert not verify_signature(ID.public_key, env["body"], env["sig"])  # domain separation
    assert msgpack.unpackb(env["body"], raw=False)["peer_id"] == ID.peer_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offers)
def test_offer_round_trip(offer):
    signed = open_envelope(seal(offer, ID), Offer)
    assert signed.message == offer and signed.signer == ID.public_key


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_bytes_only_raise_wire_errors(data):
    try:
        open_envelope(data, Offer)
    except ProtocolError:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_valid_msgpack_of_any_shape_only_raises_wire_errors(obj):
    try:
        open_envelope(pack(obj), Offer)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["peer_id", "payout", "devices", "price", "min_s", "max_s", "stake",
                                        "addrs", "seq", "expires_at", "extra"]), json_like, max_size=11))
def test_signed_bodies_of_any_shape_only_raise_schema_errors(body):
    body_bytes = pack(body)
    data = pack({"v": 1, "t": "offer", "body": body_bytes, "signer": ID.public_key,
                 "sig": ID.sign(b"iog/1/offer\x00" + body_bytes)})
    try:
        open_envelope(data, Offer)
    except ProtocolError:
        pass


def test_typed_errors():
    good = seal(sample_offer(), ID)
    env = msgpack.unpackb(good, raw=False)
    with pytest.raises(BadSignature):
        open_envelope(pack({**env, "sig": bytes(64)}), Offer)
    with pytest.raises(BadSignature):  # signed by someone else's key but claims ours
        open_envelope(pack({**env, "signer": Identity.generate().public_key}), Offer)
    with pytest.raises(UnknownVersion):
        open_envelope(pack({**env, "v": 2}), Offer)
    with pytest.raises(UnknownType):
        open_envelope(pack({**env, "t": "nope"}), Offer)
    with pytest.raises(MalformedMessage):
        open_envelope(b"\xc1", Offer)
    with pytest.raises(MalformedMessage):
        open_envelope(pack([1, 2]), Offer)
    with pytest.raises(OversizeMessage):
        open_envelope(b"\x00" * (MAX_OFFER_SIZE + 1), Offer)
    with pytest.raises(SchemaError):
        seal_bad = sample_offer(devices=[])
        open_envelope(seal(seal_bad, ID), Offer)
    with pytest.raises(SchemaError):
        open_envelope(seal(sample_offer(min_s=5, max_s=1), ID), Offer)
    with pytest.raises(OversizeMessage):  # 64 devices, each with the largest attestation, and long addresses
        seal(sample_offer(addrs=["x" * 250] * 16, devices=[Device(kind="cpu", name="n" * 128, mem_bytes=1,
                                                                 attested_by="a" * 64, attestation=b"s" * 1024)] * 64),
             ID)


@given(st.integers(0, 2**28 - 1))
def test_varint_round_trip(n):
    enc = encode_varint(n)
    assert decode_varint(enc + b"rest") == (n, len(enc))


def test_varint_errors():
    with pytest.raises(FrameError):
        decode_varint(b"\x80")  # incomplete
    with pytest.raises(FrameError):
        decode_varint(b"\x80\x80\x80\x80\x01")  # longer than any frame we accept
    with pytest.raises(FrameError):
        decode_varint(b"\x80\x00")  # non-minimal


async def test_framed_stream_over_trio_socket_pair():
    a, b = trio.testing.memory_stream_pair()
    fa, fb = FramedStream(trio_stream_adapter(a)), FramedStream(trio_stream_adapter(b))
    await fa.send(b"hello")
    await fa.send(b"")
    await fa.send_message(sample_offer(), ID)
    with trio.fail_after(5):
        assert await fb.receive() == b"hello"
        assert await fb.receive() == b""
        assert (await fb.receive_message(Offer)).message == sample_offer()
    # oversize frame announced: rejected before reading the payload
    await a.send_all(encode_varint(2**20 + 1))
    with pytest.raises(OversizeMessage), trio.fail_after(5):
        await fb.receive()
    # stream ends inside a frame
    c, d = trio.testing.memory_stream_pair()
    await c.send_all(frame(b"abcdef")[:4])
    await c.aclose()
    with pytest.raises(FrameError), trio.fail_after(5):
        await FramedStream(trio_stream_adapter(d)).receive()
