"""Failure paths across processes: a provider or a renter SIGKILLed mid-job, a provider restarted with vouchers
on disk, the chain's RPC going away while a job runs. Money is never lost and never paid twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2pnode.chain import escrow
from p2pnode.chain.rpc import ChainClient
from p2pnode.market.devnet import Devnet, wait_for_line
from p2pnode.market.renter_jobs import _quote_of
from p2pnode.market.reputation import Wanted

from .conftest import _LISTENING, balances, new_renter, provider_address, provider_jobs, provider_peer
from .renter_proc import attest_job

LONG_STEPS = 3_000  # ~1 s of attestation chain on an idle core here (vouchers every 0.25 s): time to die in
WANT = Wanted(max_s=120)


async def until(predicate, timeout: float, what: str, interval: float = 0.1):
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def paid_job(net: Devnet, i: int, exclude: set[bytes] = frozenset(), *, min_paid: int = 1):
    """A running job on provider i that already holds a voucher (stored, fsynced) of at least `min_paid`."""
    rows = [r for r in provider_jobs(net, i) if r["state"] == "running" and r["cumulative"] >= min_paid
            and bytes(r["job_id"]) not in exclude]
    return rows[0] if rows else None


async def ensure_provider(net: Devnet, i: int) -> None:
    if not any(c.name == f"provider-{i}" and c.alive() for c in net.children):
        child = net.restart_provider(i)
        await wait_for_line(child, _LISTENING, 90)


async def warp_past(net: Devnet, deadline: int) -> None:
    async with ChainClient(net.rpc_url, timeout_s=10) as c:
        await c.warp_clock(deadline - await c.unix_time() + 5)


@pytest.mark.timeout(300)
async def test_provider_killed_mid_job_renter_retries_and_refunds_with_arbiter(market_net):
    net = market_net
    renter = await new_renter(net, "renter-pk")
    p1, p2 = provider_address(net, 1), provider_address(net, 2)
    async with renter.running(background_refunds=False):
        async with trio.open_nursery() as nursery:
            async def kill_when_paid() -> None:
                await until(lambda: paid_job(net, 1), 60, "a voucher on provider-1")
                net.kill("provider-1")
            nursery.start_soon(kill_when_paid)
            out = await renter.rent(attest_job(LONG_STEPS), [], WANT)

        # the renter noticed, moved on and got its job done elsewhere
        assert out.provider == provider_peer(net, 2) and out.verified and out.settle_sig
        assert out.attempts[0].peer_id == provider_peer(net, 1) and out.attempts[0].outcome == "failed"
        [row] = renter.agreements.list(role="renter", states=("abandoned",))
        assert row.peer == provider_peer(net, 1) and row.cumulative > 0 and row.voucher
        a = _quote_of(row.quote).agreement

        # until the agreement's deadline the escrow stays locked (the provider may still settle)
        assert await renter.refund_due() == []
        before = await balances(net, renter.address, p1)
        await warp_past(net, a.deadline)
        done = await renter.refund_due()
        assert [job for job, _ in done] == [a.job_id]
        after = await balances(net, renter.address, p1)
        fee = escrow.fee_of(row.cumulative, a.fee_bps)
        assert after[p1] - before[p1] == row.cumulative  # the arbiter made the refund pay the latest voucher
        assert after[renter.address] - before[renter.address] == a.deposit - row.cumulative - fee  # the rest
        refunded = renter.agreements.get(a.job_id)
        assert refunded.state == "refunded" and refunded.refund_sig and refunded.refunded == after[
            renter.address] - before[renter.address]

    # the provider comes back with the voucher on disk: it sees the escrow closed and does not pay itself twice
    await ensure_provider(net, 1)
    await until(lambda: any(bytes(r["job_id"]) == a.job_id and r["state"] == "closed"
                            for r in provider_jobs(net, 1)), 30, "provider-1 to record the refund")
    assert (await balances(net, p1))[p1] == after[p1]
    del p2


@pytest.mark.timeout(300)
async def test_provider_restarted_settles_what_is_on_disk(market_net):
    net = market_net
    await ensure_provider(net, 1)
    renter = await new_renter(net, "renter-pr")  # no history: asks the cheapest (provider-1) first
    p1 = provider_address(net, 1)
    seen = {bytes(r["job_id"]) for r in provider_jobs(net, 1)}
    before = await balances(net, renter.address, p1)
    async with renter.running(background_refunds=False):
        await renter.wait_for_offers(WANT, count=2, timeout=30)
        killed: dict = {}
        async with trio.open_nursery() as nursery:
            async def kill_when_paid() -> None:
                killed["row"] = await until(lambda: paid_job(net, 1, seen), 60, "a voucher on provider-1")
                net.kill("provider-1")
            nursery.start_soon(kill_when_paid)
            out = await renter.rent(attest_job(LONG_STEPS), [], WANT)
        assert out.provider == provider_peer(net, 2)
        job_id = bytes(killed["row"]["job_id"])

        # restarted with the same home, the provider submits the latest voucher it stored before the crash
        await ensure_provider(net, 1)
        row = await until(lambda: next((r for r in provider_jobs(net, 1) if bytes(r["job_id"]) == job_id
                                        and r["state"] == "settled"), None), 30, "provider-1 to settle")
        # the renter's books close without the arbiter: the escrow is gone because the provider settled
        done = await renter.refund_due()
        assert (job_id, "closed") in done
        after = await balances(net, renter.address, p1)
    fee = escrow.fee_of(row["cumulative"], net.params.fee_bps)
    assert after[p1] - before[p1] == row["cumulative"] > 0  # exactly the stored voucher, once
    assert before[renter.address] - after[renter.address] == row["cumulative"] + fee + out.paid + out.fee


@pytest.mark.timeout(300)
async def test_renter_killed_mid_job_provider_settles_latest_voucher(market_net):
    net = market_net
    await ensure_provider(net, 1)
    await ensure_provider(net, 2)
    renter = await new_renter(net, "renter-rk")  # its home; the Renter object only seeds the funds
    p1 = provider_address(net, 1)
    seen = {bytes(r["job_id"]) for r in provider_jobs(net, 1)}
    before = await balances(net, renter.address, p1)
    home = net.home("renter-rk")
    log = open(Path(home) / "renter.log", "wb")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("renter_proc.py")), str(home),
                             str(LONG_STEPS)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        row = await until(lambda: paid_job(net, 1, seen), 90, "the renter's voucher on provider-1")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    job_id = bytes(row["job_id"])
    # the provider notices the dead stream and settles the latest voucher it holds
    settled = await until(lambda: next((r for r in provider_jobs(net, 1) if bytes(r["job_id"]) == job_id
                                        and r["state"] == "settled"), None), 60, "provider-1 to settle")
    after = await balances(net, renter.address, p1)
    fee = escrow.fee_of(settled["cumulative"], net.params.fee_bps)
    assert after[p1] - before[p1] == settled["cumulative"] >= row["cumulative"]
    assert before[renter.address] - after[renter.address] == settled["cumulative"] + fee

    # the renter restarts from its home: its store knew the job and closes it (no refund to ask for)
    async with renter.running(background_refunds=False):
        assert renter.agreements.get(job_id).cumulative >= settled["cumulative"]  # stored before it was sent
        done = await renter.refund_due()
        assert (job_id, "closed") in done
        assert renter.agreements.get(job_id).state == "closed"


@pytest.mark.timeout(300)
async def test_chain_rpc_outage_mid_job_loses_nothing(market_net):
    net = market_net
    await ensure_provider(net, 1)
    await ensure_provider(net, 2)
    renter = await new_renter(net, "renter-rpc")
    p1 = provider_address(net, 1)
    seen = {bytes(r["job_id"]) for r in provider_jobs(net, 1)}
    before = await balances(net, renter.address, p1)
    async with renter.running(background_refunds=False):
        async with trio.open_nursery() as nursery:
            async def outage() -> None:
                await until(lambda: paid_job(net, 1, seen, min_paid=0), 60, "the job to run")
                await trio.to_thread.run_sync(net.stop_chain)  # the job finishes while the chain is away
            nursery.start_soon(outage)
            out = await renter.rent(attest_job(3 * LONG_STEPS), [], WANT)
        # verified and fully vouched; the settlement could not land yet
        assert out.verified and out.provider == provider_peer(net, 1) and out.settle_sig == ""
        row = renter.agreements.get(out.job_id)
        assert row.state == "done" and row.cumulative == out.paid and row.voucher
        prow = next(r for r in provider_jobs(net, 1) if bytes(r["job_id"]) == out.job_id)
        assert prow["cumulative"] == out.paid and prow["state"] != "settled"

        await net.start_chain()  # same URL, same ledger
        await until(lambda: any(bytes(r["job_id"]) == out.job_id and r["state"] == "settled"
                                for r in provider_jobs(net, 1)), 60, "the provider's retried settlement")
        assert (out.job_id, "closed") in await renter.refund_due()
        after = await balances(net, renter.address, p1)
    assert after[p1] - before[p1] == out.paid
    assert before[renter.address] - after[renter.address] == out.paid + out.fee
