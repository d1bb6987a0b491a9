"""Money survives failures: the RPC going away during settle, and a provider killed right after accepting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
from solders.keypair import Keypair

from p2pnode.chain import escrow as E
from p2pnode.chain.rpc import ChainClient, RpcUnreachable
from p2pnode.config import IO
from p2pnode.identity import Identity
from p2pnode.store import Store

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the sibling helpers importable
from economy_helpers import give_io, io_balance, make_network  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parents[1]


async def _job(client, tmp_path, store_path):
    params, ops = await make_network(client, tmp_path)
    renter, provider = Keypair(), Keypair()
    await client.airdrop(renter.pubkey(), 10**9)
    await client.airdrop(provider.pubkey(), 10**9)
    await give_io(client, params, ops, renter, 500 * IO)
    store = Store(store_path)
    job_id = os.urandom(16)
    addr, nonce = await E.lease_nonce(client, store, provider, renter.pubkey(), job_id)
    a = E.Agreement(job_id=job_id, renter=str(renter.pubkey()), provider=str(provider.pubkey()),
                    arbiter=str(ops[0].pubkey()), mint=params.mint, deposit=100 * IO, fee_bps=25,
                    nonce_account=str(addr), nonce=str(nonce), deadline=await client.unix_time() + 3600)
    await E.fund(client, renter, a)
    await E.verify_funding(client, a)
    return a, renter, provider, store


async def test_rpc_goes_away_during_settle(fresh_localnet, tmp_path):
    async with ChainClient(fresh_localnet.url, timeout_s=20) as client:
        a, renter, provider, store = await _job(client, tmp_path, tmp_path / "p.db")
        E.record_agreement(store, a, "provider")
        E.accept_voucher(store, E.make_voucher(a, 42 * IO, renter))

    # 1) the RPC is down for longer than the retries: settle fails with a typed error, the voucher stays on disk
    fresh_localnet.stop()
    async with ChainClient(fresh_localnet.url, timeout_s=5, retries=1, backoff_s=0.1) as impatient:
        try:
            await E.settle(impatient, store, provider, a.job_id)
            raise AssertionError("settle cannot succeed with the RPC down")
        except RpcUnreachable:
            pass
    ch = E.channel(store, a.job_id)
    assert ch.state == E.SETTLING and ch.voucher is not None and ch.cumulative == 42 * IO

    # 2) it comes back while settle is retrying: the same call finishes
    async with ChainClient(fresh_localnet.url, timeout_s=20, retries=12, backoff_s=0.2) as patient:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def settle_it() -> None:
                await E.settle(patient, store, provider, a.job_id)
                done.set()

            nursery.start_soon(settle_it)
            await trio.sleep(0.5)
            assert not done.is_set()
            await trio.to_thread.run_sync(fresh_localnet.start)
            with trio.fail_after(60):
                await done.wait()
        assert E.channel(store, a.job_id).state == E.SETTLED
        assert await io_balance(patient, provider.pubkey(), a.mint) == 42 * IO
        assert await patient.get_account(a.escrow) is None


async def test_provider_killed_after_accepting_settles_on_restart(localnet, client, tmp_path):
    db = tmp_path / "provider.db"
    a, renter, provider, store = await _job(client, tmp_path, db)
    store.close()
    (tmp_path / "agreement").write_bytes(a.encode())
    (tmp_path / "voucher").write_bytes(E.make_voucher(a, 77 * IO, renter).encode_body())
    key = tmp_path / "provider.json"
    Identity(bytes(provider)[:32]).save(key)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen([sys.executable, str(HERE / "provider_proc.py"), "accept", str(db),
                             str(tmp_path / "agreement"), str(tmp_path / "voucher")],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        with trio.fail_after(60):
            line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == f"ACCEPTED {77 * IO}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # the restarted provider (a new process) settles what is on disk
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, str(HERE / "provider_proc.py"), "settle", str(db), str(key), localnet.url],
        capture_output=True, text=True, env=env, timeout=120))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"SETTLED {a.job_id.hex()}" in out.stdout
    assert await io_balance(client, provider.pubkey(), a.mint) == 77 * IO
    assert await client.get_account(a.escrow) is None
    st = Store(db)
    assert E.channel(st, a.job_id).state == E.SETTLED
