"""The marketplace end to end across processes: negotiate, fund, upload, run, verify, pay — and every job paid once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import trio

from p2pnode.chain import escrow
from p2pnode.chain.rpc import ChainClient
from p2pnode.compute.jobs import JobSpec
from p2pnode.compute.jobs.matmul import MatmulSpec
from p2pnode.market.devnet import PROVIDER_PRICES, matmul_job
from p2pnode.market.negotiation import JobQuote
from p2pnode.market.reputation import Wanted
from p2pnode.wire import open_envelope

from .conftest import balances, new_renter, provider_address, provider_jobs, provider_peer, supply


def uploaded_matmul(n: int, rng: np.random.Generator) -> tuple[JobSpec, list[bytes], np.ndarray]:
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    inputs = [a.astype("<f4").tobytes(), b.astype("<f4").tobytes()]
    spec = JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=1, m=n, k=n, n=n, source="inputs"), inputs)
    return spec, inputs, a.astype(np.float64) @ b.astype(np.float64)


async def tx_count(url: str) -> int:
    async with ChainClient(url, timeout_s=10) as c:
        return (await c._client.get_transaction_count()).value


async def test_happy_path_uploaded_inputs_verified_and_paid(market_net):
    net = market_net
    renter = await new_renter(net, "renter-happy")
    spec, inputs, expected = uploaded_matmul(192, np.random.default_rng(1))
    want = Wanted(max_price=max(PROVIDER_PRICES), max_s=60)
    addrs = [provider_address(net, i) for i in (1, 2)]
    before = await balances(net, renter.address, *addrs)
    supply_before = await supply(net)
    async with renter.running(background_refunds=False):
        out = await renter.rent(spec, inputs, want)
        # the result is the renter's: C = A @ B, bit for bit what the provider computed, and checked
        got = np.frombuffer(out.outputs[0], dtype="<f4").reshape(192, 192)
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-3)
        i = 1 if out.provider == provider_peer(net, 1) else 2  # ranked by price per attested TFLOP
        p1 = provider_address(net, i)
        assert out.verified and out.provider == provider_peer(net, i)
        assert out.price == PROVIDER_PRICES[i - 1] and out.settle_sig and out.fund_sig

        # a second job with the same provider: the nonce account is reused, so exactly 2 transactions on chain
        n0 = await tx_count(net.rpc_url)
        out2 = await renter.rent(matmul_job(128), [], want, exclude={provider_peer(net, 3 - i)})
        n1 = await tx_count(net.rpc_url)
        assert out2.provider == out.provider and out2.verified and out2.settle_sig
        assert n1 - n0 == 2, f"{n1 - n0} transactions for one job"
        rows = {o.job_id: renter.agreements.get(o.job_id) for o in (out, out2)}
    after = await balances(net, renter.address, *addrs)
    paid = out.paid + out2.paid
    fees = out.fee + out2.fee
    assert paid > 0 and fees == escrow.fee_of(out.paid, net.params.fee_bps) + escrow.fee_of(out2.paid, net.params.fee_bps)
    assert after[p1] - before[p1] == paid  # the provider got exactly what was vouched
    assert before[renter.address] - after[renter.address] == paid + fees  # the rest of both deposits came back
    assert supply_before - await supply(net) == fees  # the network fee is burned

    # both escrows are closed on chain; both sides keep the job in their stores
    async with ChainClient(net.rpc_url, timeout_s=10) as c:
        for o in (out, out2):
            row = rows[o.job_id]
            assert row is not None and row.state == "settled" and row.settle_sig == o.settle_sig
            a = open_envelope(row.quote, JobQuote).message.agreement
            assert await c.get_account(a.escrow) is None
            assert await c.signature_succeeded(o.fund_sig) and await c.signature_succeeded(o.settle_sig)
    prow = {bytes(r["job_id"]): r for r in provider_jobs(net, i)}
    assert prow[out.job_id]["state"] == "settled" and prow[out.job_id]["cumulative"] == out.paid
    assert prow[out2.job_id]["settle_sig"] == out2.settle_sig

    # `p2pnode jobs` lists them from the renter's home
    res = subprocess.run([sys.executable, "-m", "p2pnode", "jobs", "--home", str(net.home("renter-happy")), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = {j["job_id"]: j for j in json.loads(res.stdout)}
    assert listed[out.job_id.hex()]["state"] == "settled" and listed[out.job_id.hex()]["paid"] == out.paid


async def test_three_renters_two_providers_every_job_paid_once(market_net):
    net = market_net
    renters = [await new_renter(net, f"renter-c{i}") for i in range(3)]
    p1, p2 = provider_address(net, 1), provider_address(net, 2)
    before = await balances(net, p1, p2, *(r.address for r in renters))
    jobs_before = {i: {bytes(r["job_id"]) for r in provider_jobs(net, i)} for i in (1, 2)}
    outcomes: dict[str, list] = {r.address: [] for r in renters}
    want = Wanted(max_price=max(PROVIDER_PRICES), max_s=60)

    async def one(renter, k: int) -> None:
        async with renter.running(background_refunds=False):
            for j in range(2):
                outcomes[renter.address].append(await renter.rent(matmul_job(384 + 32 * k), [], want,
                                                                  busy_wait_s=120))

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for k, r in enumerate(renters):
                nursery.start_soon(one, r, k)

    after = await balances(net, p1, p2, *(r.address for r in renters))
    all_out = [o for outs in outcomes.values() for o in outs]
    assert len(all_out) == 6 and all(o.verified and o.settle_sig for o in all_out)
    assert len({o.job_id for o in all_out}) == 6 and len({o.settle_sig for o in all_out}) == 6
    # both providers served (one device each, so the third renter had to wait for a free one)
    served = {o.provider for o in all_out}
    assert served == {provider_peer(net, 1), provider_peer(net, 2)}
    for i, addr in ((1, p1), (2, p2)):
        mine = [o for o in all_out if o.provider == provider_peer(net, i)]
        assert after[addr] - before[addr] == sum(o.paid for o in mine)  # each job paid exactly once
        new_rows = [r for r in provider_jobs(net, i) if bytes(r["job_id"]) not in jobs_before[i]]
        settled = [r for r in new_rows if r["state"] == "settled"]
        assert {bytes(r["job_id"]) for r in settled} == {o.job_id for o in mine}
    for r in renters:
        outs = outcomes[r.address]
        assert before[r.address] - after[r.address] == sum(o.paid + o.fee for o in outs)


async def test_rent_cli_live_progress_and_summary(market_net):
    net = market_net
    renter = await new_renter(net, "renter-cli")  # funds the key in its home; the CLI runs from that home
    renter.store.close()
    home = net.home("renter-cli")
    cmd = [sys.executable, "-m", "p2pnode", "rent", "--home", str(home), "--n", "160", "--max-s", "60"]
    res = await trio.to_thread.run_sync(lambda: subprocess.run(cmd + ["--json"], capture_output=True, text=True,
                                                                timeout=180))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout)
    assert s["verified"] and s["settle_tx"] and s["paid"] > 0 and s["deposit"] == s["paid"] + s["fee_burned"] + \
        s["refunded"]
    phases = {line.split("]")[0].strip("[ ") for line in res.stderr.splitlines() if line.startswith("[")}
    assert {"discovery", "negotiation", "upload", "run", "verify", "payment"} <= phases, res.stderr

    # a price nobody offers: a one-line error naming what to check, exit 2
    res = await trio.to_thread.run_sync(lambda: subprocess.run(cmd + ["--max-price", "1", "--wait", "3"],
                                                                capture_output=True,
                                                                text=True, timeout=120))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("p2pnode: error: no live offer fits")


async def test_a_large_output_comes_in_parts_while_the_job_runs(market_net):
    """4 MiB of C (two parts): the first part reaches the renter before the signed result, the bytes it holds are
    C (seed-derived int8/128 entries make every partial sum exact, so any correct order gives the same bits), and
    the job is verified and paid as any other."""
    from p2pnode.compute import jobs as J

    net = market_net
    renter = await new_renter(net, "renter-parts")
    job = matmul_job(1024)
    async with renter.running(background_refunds=False):
        out = await renter.rent(job, [], Wanted(max_price=max(PROVIDER_PRICES), max_s=60))
    assert out.verified and out.settle_sig and out.paid > 0
    assert 0 < out.timings["first_part"] <= out.timings["result"]
    (c,) = out.outputs
    assert np.array_equal(np.frombuffer(c, dtype="<f4"), np.frombuffer(J.run(job, [])[0], dtype="<f4"))
