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


def paid_job_anywhere(net: Devnet, exclude: set[bytes] = frozenset(), *, min_paid: int = 1):
    """(provider index, row) of a running job holding a voucher, on whichever provider the renter chose (the
    ranking depends on attested speed, which the operators' challenges keep changing)."""
    for i in range(1, net.providers + 1):
        row = paid_job(net, i, exclude, min_paid=min_paid)
        if row is not None:
            return i, row
    return None


def all_jobs(net: Devnet) -> set[bytes]:
    return {bytes(r["job_id"]) for i in range(1, net.providers + 1) for r in provider_jobs(net, i)}


def settled_row(net: Devnet, i: int, job_id: bytes, state: str = "settled"):
    return next((r for r in provider_jobs(net, i) if bytes(r["job_id"]) == job_id and r["state"] == state), None)


async def ensure_provider(net: Devnet, i: int) -> None:
    if not any(c.name == f"provider-{i}" and c.alive() for c in net.children):
        child = net.restart_provider(i)
        await wait_for_line(child, _LISTENING, 90)


async def start_round(net: Devnet, renter_name: str):
    """Both providers up, a funded renter, the jobs already on the providers' books, everyone's IO before."""
    for i in range(1, net.providers + 1):
        await ensure_provider(net, i)
    renter = await new_renter(net, renter_name)
    before = await balances(net, renter.address, *(provider_address(net, i) for i in range(1, net.providers + 1)))
    return renter, all_jobs(net), before


async def warp_past(net: Devnet, deadline: int) -> None:
    async with ChainClient(net.rpc_url, timeout_s=10) as c:
        await c.warp_clock(deadline - await c.unix_time() + 5)


@pytest.mark.timeout(300)
async def test_provider_killed_mid_job_renter_retries_and_refunds_with_arbiter(market_net):
    net = market_net
    renter = await new_renter(net, "renter-pk")
    seen = all_jobs(net)
    killed: dict = {}
    async with renter.running(background_refunds=False):
        async with trio.open_nursery() as nursery:
            async def kill_when_paid() -> None:
                killed["i"], _ = await until(lambda: paid_job_anywhere(net, seen), 60, "a voucher on a provider")
                net.kill(f"provider-{killed['i']}")
            nursery.start_soon(kill_when_paid)
            out = await renter.rent(attest_job(LONG_STEPS), [], WANT)
        k = killed["i"]
        pk = provider_address(net, k)

        # the renter noticed, moved on and got its job done by the other provider
        assert out.provider == provider_peer(net, 3 - k) and out.verified and out.settle_sig
        assert out.attempts[0].peer_id == provider_peer(net, k) and out.attempts[0].outcome == "failed"
        [row] = renter.agreements.list(role="renter", states=("abandoned",))
        assert row.peer == provider_peer(net, k) and row.cumulative > 0 and row.voucher
        a = _quote_of(row.quote).agreement

        # until the agreement's deadline the escrow stays locked (the provider may still settle)
        assert await renter.refund_due() == []
        before = await balances(net, renter.address, pk)
        await warp_past(net, a.deadline)
        done = await renter.refund_due()
        assert [job for job, _ in done] == [a.job_id]
        after = await balances(net, renter.address, pk)
        fee = escrow.fee_of(row.cumulative, a.fee_bps)
        assert after[pk] - before[pk] == row.cumulative  # the arbiter made the refund pay the latest voucher
        assert after[renter.address] - before[renter.address] == a.deposit - row.cumulative - fee  # the rest
        refunded = renter.agreements.get(a.job_id)
        assert refunded.state == "refunded" and refunded.refund_sig and refunded.refunded == after[
            renter.address] - before[renter.address]

    # the provider comes back with the voucher on disk: it sees the escrow closed and does not pay itself twice
    await ensure_provider(net, k)
    await until(lambda: settled_row(net, k, a.job_id, "closed"), 30, "the restarted provider to record the refund")
    assert (await balances(net, pk))[pk] == after[pk]


@pytest.mark.timeout(300)
async def test_provider_restarted_settles_what_is_on_disk(market_net):
    net = market_net
    renter, seen, before = await start_round(net, "renter-pr")
    async with renter.running(background_refunds=False):
        await renter.wait_for_offers(WANT, count=2, timeout=30)
        killed: dict = {}
        async with trio.open_nursery() as nursery:
            async def kill_when_paid() -> None:
                killed["i"], killed["row"] = await until(lambda: paid_job_anywhere(net, seen), 60, "a voucher")
                net.kill(f"provider-{killed['i']}")
            nursery.start_soon(kill_when_paid)
            out = await renter.rent(attest_job(LONG_STEPS), [], WANT)
        k, job_id = killed["i"], bytes(killed["row"]["job_id"])
        pk = provider_address(net, k)
        assert out.provider == provider_peer(net, 3 - k)

        # restarted with the same home, the provider submits the latest voucher it stored before the crash
        await ensure_provider(net, k)
        row = await until(lambda: settled_row(net, k, job_id), 30, "the restarted provider to settle")
        # the renter's books close without the arbiter: the escrow is gone because the provider settled
        done = await renter.refund_due()
        assert (job_id, "closed") in done
        after = await balances(net, renter.address, pk)
    fee = escrow.fee_of(row["cumulative"], net.params.fee_bps)
    assert after[pk] - before[pk] == row["cumulative"] > 0  # exactly the stored voucher, once
    assert before[renter.address] - after[renter.address] == row["cumulative"] + fee + out.paid + out.fee


@pytest.mark.timeout(300)
async def test_renter_killed_mid_job_provider_settles_latest_voucher(market_net):
    net = market_net
    renter, seen, before = await start_round(net, "renter-rk")  # its home; the Renter object only seeds the funds
    home = net.home("renter-rk")
    log = open(Path(home) / "renter.log", "wb")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("renter_proc.py")), str(home),
                             str(LONG_STEPS)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        k, row = await until(lambda: paid_job_anywhere(net, seen), 90, "the renter's voucher on a provider")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    job_id, pk = bytes(row["job_id"]), provider_address(net, k)
    # the provider notices the dead stream and settles the latest voucher it holds
    settled = await until(lambda: settled_row(net, k, job_id), 60, "the provider to settle")
    after = await balances(net, renter.address, pk)
    fee = escrow.fee_of(settled["cumulative"], net.params.fee_bps)
    assert after[pk] - before[pk] == settled["cumulative"] >= row["cumulative"]
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
    renter, seen, before = await start_round(net, "renter-rpc")
    running: dict = {}
    async with renter.running(background_refunds=False):
        async with trio.open_nursery() as nursery:
            async def outage() -> None:
                running["i"], _ = await until(lambda: paid_job_anywhere(net, seen, min_paid=0), 60, "the job to run")
                await trio.to_thread.run_sync(net.stop_chain)  # the job finishes while the chain is away
            nursery.start_soon(outage)
            out = await renter.rent(attest_job(3 * LONG_STEPS), [], WANT)
        k = running["i"]
        pk = provider_address(net, k)
        # verified and fully vouched; the settlement could not land yet
        assert out.verified and out.provider == provider_peer(net, k) and out.settle_sig == ""
        row = renter.agreements.get(out.job_id)
        assert row.state == "done" and row.cumulative == out.paid and row.voucher
        prow = next(r for r in provider_jobs(net, k) if bytes(r["job_id"]) == out.job_id)
        assert prow["cumulative"] == out.paid and prow["state"] != "settled"

        await net.start_chain()  # same URL, same ledger
        await until(lambda: settled_row(net, k, out.job_id), 60, "the provider's retried settlement")
        assert (out.job_id, "closed") in await renter.refund_due()
        after = await balances(net, renter.address, pk)
    assert after[pk] - before[pk] == out.paid
    assert before[renter.address] - after[renter.address] == out.paid + out.fee
