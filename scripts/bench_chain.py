"""Settlement figures (issue 3): localnet tx/s through RPC, vouchers verified/s, transactions and lamports per job,
time to compute the 20-year emission schedule. Each figure with its same-run baseline where one exists.

    .venv/bin/python scripts/bench_chain.py [--n 2000] [--concurrency 64] [--vouchers 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio
from solders.keypair import Keypair

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "chain"))
from bench_localnet import baseline, measure, start_localnet  # noqa: E402
from economy_helpers import give_io, make_network  # noqa: E402

from p2pnode.chain import emission as em  # noqa: E402
from p2pnode.chain import escrow as E  # noqa: E402
from p2pnode.chain.rpc import ChainClient  # noqa: E402
from p2pnode.config import IO  # noqa: E402
from p2pnode.store import Store  # noqa: E402


def bench_emission() -> dict:
    t = time.perf_counter()
    months = em._compute_months()
    months_s = time.perf_counter() - t
    t = time.perf_counter()
    total = sum(em.hour_emission(h) for h in range(em.TOTAL_HOURS))
    hours_s = time.perf_counter() - t
    assert total == em.POOL and sum(months) == em.POOL
    return {"schedule_240_months_ms": round(months_s * 1e3, 3), "all_175200_hours_ms": round(hours_s * 1e3, 1)}


def _agreement(r: Keypair, p: Keypair) -> E.Agreement:
    from solders.hash import Hash

    return E.Agreement(job_id=os.urandom(16), renter=str(r.pubkey()), provider=str(p.pubkey()),
                       arbiter=str(Keypair().pubkey()), mint=str(Keypair().pubkey()), deposit=10**12, fee_bps=25,
                       nonce_account=str(Keypair().pubkey()), nonce=str(Hash.new_unique()), deadline=0)


def bench_vouchers(n: int, tmp: Path) -> dict:
    r, p = Keypair(), Keypair()
    a = _agreement(r, p)
    vs = [E.make_voucher(a, (i + 1) * 1000, r) for i in range(n)]
    # baseline: a bare Ed25519 verification of the same message size (the floor of any check)
    sk = nacl.signing.SigningKey.generate()
    msg = bytes(E.voucher_message(a, 1000))
    sm = sk.sign(msg)
    t = time.perf_counter()
    for _ in range(n):
        sk.verify_key.verify(sm)
    ed_s = time.perf_counter() - t
    t = time.perf_counter()
    for v in vs:
        E.check_voucher(a, v, -1)
    check_s = time.perf_counter() - t
    store = Store(tmp / "bench.db")
    E.record_agreement(store, a, "provider")
    t = time.perf_counter()
    for v in vs:
        E.accept_voucher(store, v)  # check + fsynced commit, as the provider acknowledges
    accept_s = time.perf_counter() - t
    return {"vouchers": n, "verified_per_s": round(n / check_s), "accepted_fsynced_per_s": round(n / accept_s),
            "ed25519_verify_per_s": round(n / ed_s), "ratio_verify_to_ed25519": round(ed_s / check_s, 3),
            "voucher_tx_bytes": len(vs[-1].tx)}


class CountingClient(ChainClient):
    sent = 0

    async def send(self, tx, **kw):  # type: ignore[override]
        CountingClient.sent += 1
        return await super().send(tx, **kw)


async def bench_job(url: str, tmp: Path) -> dict:
    async with CountingClient(url) as client:
        params, ops = await make_network(client, tmp)
        renter, provider = Keypair(), Keypair()
        for k in (renter, provider):
            await client.airdrop(k.pubkey(), 10 * 10**9)
        await give_io(client, params, ops, renter, 10_000 * IO)
        store = Store(tmp / "provider.db")
        out = []
        for job in range(3):
            sol0 = (await client.balance(renter.pubkey()), await client.balance(provider.pubkey()))
            n0 = CountingClient.sent
            job_id = os.urandom(16)
            addr, nonce = await E.lease_nonce(client, store, provider, renter.pubkey(), job_id)
            n_setup = CountingClient.sent - n0
            a = E.Agreement(job_id=job_id, renter=str(renter.pubkey()), provider=str(provider.pubkey()),
                            arbiter=str(ops[0].pubkey()), mint=params.mint, deposit=100 * IO, fee_bps=25,
                            nonce_account=str(addr), nonce=str(nonce), deadline=await client.unix_time() + 3600)
            await E.fund(client, renter, a)
            await E.verify_funding(client, a)
            E.record_agreement(store, a, "provider")
            for cum in range(1, 101):  # 100 vouchers: one per "second" of a job
                E.accept_voucher(store, E.make_voucher(a, cum * IO // 2, renter))
            await E.settle(client, store, provider, job_id)
            sol1 = (await client.balance(renter.pubkey()), await client.balance(provider.pubkey()))
            spent = (sol0[0] - sol1[0]) + (sol0[1] - sol1[1])
            out.append({"job": job, "setup_txs": n_setup, "job_txs": CountingClient.sent - n0 - n_setup,
                        "lamports_total": spent, "sol_total": spent / 1e9})
        return {"jobs": out, "steady_state_lamports_per_job": out[-1]["lamports_total"],
                "steady_state_txs_per_job": out[-1]["job_txs"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--vouchers", type=int, default=3000)
    args = ap.parse_args()
    res: dict = {"loadavg_1min_start": round(os.getloadavg()[0], 2), "emission": bench_emission()}
    with tempfile.TemporaryDirectory() as tmp:
        res["vouchers"] = bench_vouchers(args.vouchers, Path(tmp))
        base = baseline(args.n)
        proc, url = start_localnet(None)
        try:
            # the honest default of bench_localnet (shared AsyncClients, batched getSignatureStatuses, preflight on,
            # pre-signed, counted once finalized); its flags give the comparison modes
            rpc = trio.run(lambda: measure(url, args.n, args.concurrency, server_pid=proc.pid))
            rpc["litesvm_direct_per_s"] = round(base)
            rpc["ratio_rpc_to_direct"] = round(rpc["finalized_per_s"] / base, 3)
            res["localnet_rpc"] = rpc
            res["per_job"] = trio.run(bench_job, url, Path(tmp))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    res["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
