"""Pure parts of the market: prices in integer base units, the renter's choice policy, the torch-free renter."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.chain.escrow import fee_of
from p2pnode.identity import Identity
from p2pnode.market import pricing
from p2pnode.market.reputation import Reputation, Wanted, attested_tflops, rank
from p2pnode.store import Store
from p2pnode.wire import Device, Offer, seal


@given(price=st.integers(0, 10**15), max_s=st.integers(1, 7 * 24 * 3600), fee_bps=st.integers(0, 1000),
       seconds=st.floats(0, 10**7, allow_nan=False))
def test_deposit_always_covers_the_charge_and_its_fee(price, max_s, fee_bps, seconds):
    dep = pricing.deposit_for(price, max_s, fee_bps)
    for amount in (pricing.charge(price, seconds, 0, max_s), pricing.running_charge(price, seconds, max_s)):
        assert 0 <= amount and amount + fee_of(amount, fee_bps) <= dep


def test_charges_round_up_and_respect_the_quote_bounds():
    hourly = 3600 * 10**6  # 1e6 base units per second
    assert pricing.cost(hourly, 1.0) == 10**6
    assert pricing.cost(hourly, 0.0001) == 1000  # rounded up to whole milliseconds, never free
    assert pricing.charge(hourly, 0.2, 5, 60) == 5 * 10**6  # billed at least min_s
    assert pricing.charge(hourly, 600.0, 5, 60) == 60 * 10**6  # never above max_s
    assert pricing.running_charge(hourly, 0.2, 60) == 200 * 1000  # no minimum while it runs


OPERATOR = Identity.generate()
VERIFIERS = {OPERATOR.peer_id}


def attestation(provider: str, device: Device, tflops: float, *, index: int = 0, signer: Identity = OPERATOR,
                passed: bool = True, age_s: float = 60) -> bytes:
    """A verifier's signed attestation, as an offer carries it."""
    from p2pnode.compute.attest import Attestation

    a = Attestation(provider=provider, device=device, device_index=index, tflops=tflops, challenge=bytes(32),
                    passed=passed, verifier=signer.peer_id, time=int(time.time() - age_s))
    return seal(a, signer)


def offer(price: int, tflops: float = 0.0, name: str = "cpu", min_s: int = 1, max_s: int = 3600,
          claim: float | None = None, **attest_kw) -> Offer:
    """An offer whose one device carries an operator's attestation of `tflops` (none if 0); `claim` is what the
    provider writes into the offer itself (default: the attested figure)."""
    ident = Identity.generate()
    dev = Device(kind="cpu", name=name, mem_bytes=1 << 30)
    if tflops:
        dev = replace(dev, tflops=tflops if claim is None else claim,
                      attestation=attestation(ident.peer_id, dev, tflops, **attest_kw))
    elif claim:
        dev = replace(dev, tflops=claim)
    return Offer(peer_id=ident.peer_id, payout=ident.address, devices=[dev], price=price,
                 min_s=min_s, max_s=max_s, stake="", addrs=[], seq=1, expires_at=int(time.time()) + 300)


def test_choice_policy_price_capacity_history_and_filters(tmp_path):
    cheap, pricey, fast = offer(100), offer(150), offer(300, tflops=4.0)
    assert rank([pricey, cheap, fast], Wanted(), verifiers=VERIFIERS) == [fast, cheap, pricey]  # price per TFLOP
    assert rank([pricey, cheap, fast], Wanted(max_price=200), verifiers=VERIFIERS) == [cheap, pricey]
    assert rank([pricey, cheap, fast], Wanted(min_tflops=1.0), verifiers=VERIFIERS) == [fast]
    busy = offer(10)
    busy = Offer(**{**busy.__dict__, "devices": [Device(**{**busy.devices[0].__dict__, "busy": True})]})
    assert rank([busy, cheap], Wanted()) == [cheap]  # its only device is running a job
    gpu = offer(100, name="NVIDIA H100 80GB")
    assert rank([cheap, gpu], Wanted(gpu="h100")) == [gpu]
    assert rank([offer(100, min_s=600), cheap], Wanted(max_s=60)) == [cheap]  # the job is shorter than its minimum

    store = Store(tmp_path / "r.db")
    rep = Reputation(store)
    rep.record(cheap.peer_id, "failed")  # timed out once: asked after the others
    assert rank([cheap, pricey], Wanted(), rep) == [pricey, cheap]
    rep.record(pricey.peer_id, "bad_results")  # a wrong result weighs far more than a time-out
    assert rank([cheap, pricey], Wanted(), rep) == [cheap, pricey]
    with pytest.raises(ValueError):
        rep.record(cheap.peer_id, "great")
    store.close()


def test_capacity_counts_only_what_an_operator_signed_for_that_provider_and_device():
    def counted(o: Offer, verifiers=VERIFIERS) -> float:
        return attested_tflops(o, 0, verifiers)

    good = offer(100, tflops=4.0)
    assert counted(good) == 4.0
    assert counted(offer(100, claim=50.0)) == 0.0  # a claim with no attestation is no capacity
    assert counted(offer(100, tflops=4.0, claim=50.0)) == 4.0  # a claim above the attestation is capped
    assert counted(offer(100, tflops=4.0, signer=Identity.generate())) == 0.0  # not a network operator
    assert counted(good, verifiers=None) == 0.0  # no network file: nobody's attestation can be checked
    assert counted(offer(100, tflops=4.0, passed=False)) == 0.0
    assert counted(offer(100, tflops=4.0, age_s=2 * 86400)) == 0.0  # stale
    assert counted(offer(100, tflops=4.0, age_s=-3600)) == 0.0  # from the future
    assert counted(offer(100, tflops=4.0, index=1)) == 0.0  # attests another device of that provider
    # another provider's genuine attestation copied into an offer
    thief = offer(100, claim=4.0)
    stolen = Offer(**{**thief.__dict__, "devices": [replace(thief.devices[0], attestation=good.devices[0].attestation)]})
    assert counted(stolen) == 0.0
    # the attestation of a different device name, or bytes altered after signing
    renamed = Offer(**{**good.__dict__, "devices": [replace(good.devices[0], name="NVIDIA H100 80GB")]})
    assert counted(renamed) == 0.0
    raw = bytearray(good.devices[0].attestation)
    raw[-70] ^= 1
    forged = Offer(**{**good.__dict__, "devices": [replace(good.devices[0], attestation=bytes(raw))]})
    assert counted(forged) == 0.0
    garbage = Offer(**{**good.__dict__, "devices": [replace(good.devices[0], attestation=b"\x93\x01\x02")]})
    assert counted(garbage) == 0.0
    # and the ranking follows: the unattested big claim does not beat an honest attested device
    liar = offer(100, claim=1000.0)
    assert rank([liar, good], Wanted(), verifiers=VERIFIERS) == [good, liar]
    assert rank([liar, good], Wanted(min_tflops=1.0), verifiers=VERIFIERS) == [good]


def test_an_attested_device_cannot_nest_another_attestation():
    from p2pnode.compute.attest import Attestation
    from p2pnode.wire import SchemaError, open_envelope

    dev = Device(kind="cpu", name="cpu", mem_bytes=1)
    inner = attestation(OPERATOR.peer_id, dev, 1.0)
    with pytest.raises(SchemaError):
        open_envelope(attestation(OPERATOR.peer_id, replace(dev, attestation=inner), 1.0), Attestation)


def test_renter_side_never_imports_torch():
    code = ("import sys\n"
            "import p2pnode\n"
            "from p2pnode import Renter, Wanted, JobSpec\n"
            "from p2pnode.market import renter_jobs, evidence, devnet\n"
            "from p2pnode.compute.jobs import verify\n"
            "from p2pnode.cli import market\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_offer_lists_every_device_in_order_busy_marked_with_its_latest_passed_attestation(tmp_path):
    from p2pnode.compute.attest import Attestation, record_attestation
    from p2pnode.config import NodeConfig
    from p2pnode.market.provider_jobs import JobService
    from p2pnode.wire import open_envelope, seal

    provider, operator = Identity.generate(), Identity.generate()
    devices = [Device(kind="cpu", name=f"cpu {i}", mem_bytes=1 << 30) for i in range(2)]
    store = Store(tmp_path / "p.db")
    svc = JobService(provider, store, NodeConfig(home=tmp_path), params=None, client=None, devices=devices)

    def attest(index: int, tflops: float, when: int, passed: bool = True) -> None:
        a = Attestation(provider=provider.peer_id, device=devices[index], device_index=index, tflops=tflops,
                        challenge=bytes([index, int(when) % 256]) * 16, passed=passed, verifier=operator.peer_id,
                        time=when)
        record_attestation(store, open_envelope(seal(a, operator), Attestation))

    attest(1, 0.5, 1000)
    attest(1, 0.7, 2000)
    attest(1, 9.9, 3000, passed=False)  # a failed run does not count
    svc.slots[0].holder = b"job"
    got = svc.offer_devices()
    assert [d.name for d in got] == ["cpu 0", "cpu 1"]
    assert got[0].busy and not got[1].busy
    assert got[0].tflops == 0.0 and got[0].attested_by == ""
    assert (got[1].tflops, got[1].attested_at, got[1].attested_by) == (0.7, 2000, operator.peer_id)
    # ...and carries that attestation, signed by its verifier, for renters to check
    assert open_envelope(got[1].attestation, Attestation).message.tflops == 0.7 and got[0].attestation == b""
    store.close()


def test_cpu_jobs_get_the_operators_thread_count_else_a_share_of_the_cores():
    from p2pnode.market.provider_jobs import job_threads, slots_for

    cpu, gpu = Device(kind="cpu", name="cpu", mem_bytes=1 << 30), Device(kind="cuda", name="gpu", mem_bytes=1 << 30)
    one = slots_for([cpu, gpu])
    assert job_threads(0, one, one[0], cores=8) == 0  # one cpu device: torch's default, every core
    assert job_threads(3, one, one[0], cores=8) == 3  # the operator kept cores for the node
    assert job_threads(3, one, one[1], cores=8) == 0  # a GPU job's host threads are torch's business
    two = slots_for([cpu, cpu])
    assert [job_threads(0, two, s, cores=8) for s in two] == [4, 4] and job_threads(0, two, two[0], cores=1) == 1
