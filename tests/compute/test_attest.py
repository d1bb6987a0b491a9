"""Capacity attestation: bit-identical derivation, honest pass, and each cheating strategy rejected."""

import time

import numpy as np
import pytest
import torch
import trio

from p2pnode.compute import attest as A
from p2pnode.wire import Device, FramedStream, seal, trio_stream_adapter

import trio.testing

from p2pnode.wire import FramedStream as _FS


def framed_pair():
    a, b = trio.testing.memory_stream_pair()
    return _FS(trio_stream_adapter(a)), _FS(trio_stream_adapter(b))

SMALL = A.ChallengeParams(n=256, b=64, steps=24, mats=2, opened=4)
DEV = Device(kind="cpu", name="test cpu", mem_bytes=1 << 30)


def test_matrices_bit_identical_torch_numpy():
    seed = bytes(range(32))
    for label, idx, rows, cols in [(b"W", 0, 300, 300), (b"W", 1, 64, 64), (b"X", 0, 300, 17)]:
        key = A.derive_key(seed, label, idx)
        th = A.torch_hash(key, rows * cols, "cpu").numpy().astype(np.uint32)
        assert np.array_equal(th, A.np_hash(key, rows * cols))
        tm = ((A.torch_hash(key, rows * cols, "cpu") & 15) - 8).reshape(rows, cols).to(torch.int8).numpy()
        nm = A.np_matrix(seed, label, idx, rows, cols)
        assert np.array_equal(tm, nm) and nm.min() >= -8 and nm.max() <= 7
    # the prover's whole chain step matches a numpy recomputation bit for bit
    ch = A.AttestChallenge(seed=seed, n=64, b=8, steps=3, mats=2, opened=1, claimed_tflops=1.0, device_index=0,
                           provider="p", issued_at=0, deadline_s=1.0)
    p = A.Prover("cpu")
    p.setup(ch)
    sb = np.array(A.sbox(seed), dtype=np.int64)
    x = A.np_matrix(seed, b"X", 0, 64, 8).astype(np.int64)
    coeffs = A.np_coeffs(seed, 64, 8)
    for t in range(3):
        y = A.np_matrix(seed, b"W", t % 2, 64, 64).astype(np.int64) @ x
        assert np.array_equal(p.y_at(t).numpy(), y)
        assert p.fingerprint(p.y_at(t)) == A.np_fingerprint(y, coeffs)
        x = sb[y & 255]


async def run_pair(prover, ids, *, claimed=0.05, params=SMALL, openings=None, rtt=0.0):
    verifier_id, provider_id = ids
    vfs, pfs = framed_pair()
    await trio.to_thread.run_sync(prover.warm)
    got = {}
    async with trio.open_nursery() as n:
        async def prove():
            got["prover"] = await A.serve_challenge(pfs, provider_id, prover)
        n.start_soon(prove)
        got["out"] = await A.verify_provider(vfs, verifier_id, provider=provider_id.peer_id, device=DEV,
                                             claimed_tflops=claimed, params=params, openings=openings, rtt_s=rtt)
    return got["out"], got["prover"]


async def test_honest_prover_passes_and_attestation_validates(ids):
    out, seen_by_prover = await run_pair(A.Prover("cpu"), ids)
    att = out.attestation
    assert att.passed, att.reason
    assert att.tflops > 0 and att.provider == ids[1].peer_id and att.verifier == ids[0].peer_id
    signed = A.validate_attestation(out.envelope, origin=ids[0].peer_id)
    assert signed.message == att and seen_by_prover.message == att


class SkippingProver(A.Prover):
    """Computes only the first half, then streams made-up fingerprints and garbage openings."""

    def run(self, emit):
        half = self.ch.steps // 2
        x = self.X0
        for t in range(self.ch.steps):
            if t < half:
                y, x = self.step(t, x)
                emit(t, self.fingerprint(y))
            else:
                emit(t, int.from_bytes(np.random.bytes(4), "big"))

    def y_bytes(self, t):
        return np.zeros((self.ch.n, self.ch.b), "<i4").tobytes()


class WrongFingerprintProver(A.Prover):
    def fingerprint(self, y):
        return (super().fingerprint(y) + 1) & A.M32


class Bf16Prover(A.Prover):
    """The lower-precision shortcut: bf16 products rounded to bf16 (faster on tensor cores, inexact here)."""

    def matmul(self, w, x):
        return (w.to(torch.bfloat16) @ x.to(torch.bfloat16)).float()


class SlowProver(A.Prover):
    def step(self, t, x):
        time.sleep(0.05)
        return super().step(t, x)


async def test_skipped_steps_rejected(ids):
    out, _ = await run_pair(SkippingProver("cpu"), ids)
    assert not out.attestation.passed and out.attestation.tflops == 0.0
    assert "step" in out.attestation.reason


async def test_wrong_fingerprints_rejected(ids):
    out, _ = await run_pair(WrongFingerprintProver("cpu"), ids, openings=[5])
    assert not out.attestation.passed and "fingerprint" in out.attestation.reason


async def test_lower_precision_shortcut_rejected(ids):
    out, _ = await run_pair(Bf16Prover("cpu"), ids)
    assert not out.attestation.passed, out.attestation.reason


async def test_too_slow_prover_rejected(ids):
    # claims 1 TFLOPS: 24 steps of 2 MFLOP would take ~0.05 ms; sleeping 50 ms a step misses the 0.5 s deadline
    out, _ = await run_pair(SlowProver("cpu"), ids, claimed=1.0)
    assert not out.attestation.passed and "too slow" in out.attestation.reason


def test_validator_rejects_forged_replayed_and_stale(ids):
    verifier, other = ids
    att = A.Attestation(provider="p", device=DEV, device_index=0, tflops=1.0, challenge=bytes(32), passed=True,
                        verifier=verifier.peer_id, time=int(time.time()))
    good = seal(att, verifier)
    assert A.validate_attestation(good).message == att
    with pytest.raises(A.AttestationRejected):  # signed by someone who is not the named verifier
        A.validate_attestation(seal(att, other))
    import dataclasses
    with pytest.raises(A.AttestationRejected):
        A.validate_attestation(seal(dataclasses.replace(att, time=int(time.time()) - 3 * 3600), verifier))
    with pytest.raises(A.AttestationRejected):
        A.validate_attestation(seal(dataclasses.replace(att, time=int(time.time()) + 3600), verifier))
    tampered = bytearray(good)
    tampered[-70] ^= 1
    from p2pnode.wire import WireError
    with pytest.raises(WireError):
        A.validate_attestation(bytes(tampered))
    from p2pnode.store import Store
    store = Store(":memory:")
    signed = A.validate_attestation(good)
    assert A.record_attestation(store, signed) is True
    assert A.record_attestation(store, signed) is False  # replay is recognised


async def test_attestation_over_tcp_loopback(ids):
    """The stream protocol over a real trio TCP socket on loopback."""
    verifier_id, provider_id = ids
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got = {}
    async with trio.open_nursery() as n:
        async def accept_one():
            stream = await listeners[0].accept()
            async with stream:
                p = A.Prover("cpu")
                await trio.to_thread.run_sync(p.warm)
                got["p"] = await A.serve_challenge(FramedStream(trio_stream_adapter(stream)), provider_id, p)
        n.start_soon(accept_one)
        await trio.sleep(0.5)
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            out = await A.verify_provider(FramedStream(trio_stream_adapter(s)), verifier_id,
                                          provider=provider_id.peer_id, device=DEV, claimed_tflops=0.05,
                                          params=SMALL, rtt_s=0.01)
    await listeners[0].aclose()
    assert out.attestation.passed and got["p"].message.passed


async def test_frames_not_signed_by_the_challenged_provider_are_refused(ids):
    """An impostor that answers for provider P (claims P's PeerID) but signs with its own key is refused: the
    fingerprints are the provider's signed commitment, so another machine cannot do P's attestation for it."""
    from p2pnode.identity import Identity

    verifier_id, provider_id = ids
    impostor = Identity.generate()
    impostor.__dict__["peer_id"] = provider_id.peer_id  # passes the prover's own "addressed to me" check
    vfs, pfs = framed_pair()
    prover = A.Prover("cpu")
    await trio.to_thread.run_sync(prover.warm)

    async def prove_quietly():
        try:
            await A.serve_challenge(pfs, impostor, prover)
        except Exception:
            pass  # the verifier hangs up on it

    async with trio.open_nursery() as n:
        n.start_soon(prove_quietly)
        with pytest.raises(A.AttestationError, match="not by the challenged provider"):
            await A.verify_provider(vfs, verifier_id, provider=provider_id.peer_id, device=DEV,
                                    claimed_tflops=0.05, params=SMALL)
        n.cancel_scope.cancel()


async def test_one_prover_answers_successive_challenges(ids):
    """A node keeps one warm Prover per device; the end of one challenge must not cancel the next."""
    prover = A.Prover("cpu")
    for _ in range(2):
        out, _ = await run_pair(prover, ids)
        assert out.attestation.passed, out.attestation.reason
