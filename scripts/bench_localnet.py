"""Localnet throughput: signed SOL transfers per second through JSON-RPC with solana-py's AsyncClient, counted once
finalized.

Starts `p2pnode localnet` as a subprocess (optionally with --ledger, i.e. fsynced group commits), funds S senders,
then keeps C sendTransaction calls in flight (AsyncClient.send_raw_transaction, with preflight unless
--skip-preflight) and counts a transaction only when getSignatureStatuses reports it finalized without error (durable).
Baseline in the same run: the same transfers straight into an in-process LiteSVM (no RPC), so the report is also a
ratio; CPU per transaction is reported for the localnet process and the client process over the timed window.

Default (the honest figure): one AsyncClient (one httpx connection pool of C keep-alive connections) shared by the C
senders; a confirmer task polls getSignatureStatuses for up to 256 outstanding signatures per call while sending
goes on, as a high-throughput client does; transactions pre-signed before the timed loop (--sign-in-loop builds and
signs each one inside it). The comparison modes: --confirm per-tx (each sender polls its own signature after
sending, like a one-at-a-time client) and --client-per-worker (one AsyncClient per sender, the layout of the
first version of this script, which also paid an SSL context per client inside the timed loop).

    .venv/bin/python scripts/bench_localnet.py [--n 2000] [--concurrency 64] [--ledger] [--sign-in-loop]
        [--skip-preflight] [--confirm batch|per-tx] [--client-per-worker] [--clients 8] [--procs 1]

--skip-preflight and --procs N (N client processes from a common start) are separately labelled figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from solders.transaction_status import TransactionConfirmationStatus

SOL = 10**9
MAX_STATUSES = 256  # getSignatureStatuses' limit per call
FINALIZED = TransactionConfirmationStatus.Finalized


def _transfer(senders: list[tuple[Keypair, Pubkey]], dest: Pubkey, i: int, blockhash) -> Transaction:
    """Transfer i, signed (the sender's public key is cached, as a wallet does: deriving it costs ~30 µs)."""
    k, pub = senders[i % len(senders)]
    return Transaction.new_signed_with_payer(
        [transfer(TransferParams(from_pubkey=pub, to_pubkey=dest, lamports=1_000_000 + i))], pub, [k], blockhash)


def _transfers(senders: list[Keypair], n: int, blockhash) -> list[Transaction]:
    dest = Keypair().pubkey()
    keyed = [(k, k.pubkey()) for k in senders]
    return [_transfer(keyed, dest, i, blockhash) for i in range(n)]


def baseline(n: int) -> float:
    """Transfers/s into LiteSVM directly (no RPC, no HTTP): the ceiling of this machine."""
    svm = LiteSVM()
    senders = [Keypair() for _ in range(16)]
    for s in senders:
        svm.airdrop(s.pubkey(), 1000 * SOL)
    txs = _transfers(senders, n, svm.latest_blockhash())
    t = time.perf_counter()
    for tx in txs:
        svm.send_transaction(tx)
    return n / (time.perf_counter() - t)


def _client(url: str, concurrency: int) -> AsyncClient:
    # one pool with a keep-alive connection per sender (httpx keeps only 20 by default and would reconnect)
    return AsyncClient(url, timeout=30, http2=False, max_connections=concurrency + 2,
                       max_keepalive_connections=concurrency + 2)


async def measure(url: str, n: int = 2000, concurrency: int = 64, senders: int = 16, *, confirm: str = "batch",
                  presign: bool = True, skip_preflight: bool = False, clients: int = 8,
                  client_per_worker: bool = False, server_pid: int | None = None,
                  start_at: float | None = None) -> dict:
    """Send n transfers with `concurrency` in flight; the figure counts only transactions reported finalized with no
    error. CPU (this process and, given `server_pid`, the localnet) is measured over the timed window only."""
    if confirm not in ("batch", "per-tx"):
        raise ValueError("confirm must be 'batch' or 'per-tx'")
    async with AsyncExitStack() as stack:
        # `clients` AsyncClients made before the timed loop and shared round-robin by the senders: httpcore's pool
        # scans all its connections on every request, so one pool of 64 connections costs more CPU than 8 of 8
        pool = [await stack.enter_async_context(_client(url, -(-concurrency // clients))) for _ in range(clients)]
        c = pool[0]
        # keys from os.urandom: forked client processes (--procs) must not share a random generator's state
        keys = [Keypair.from_seed(os.urandom(32)) for _ in range(senders)]
        for k in keys:
            await c.request_airdrop(k.pubkey(), 1000 * SOL)
        await trio.sleep(0.5)
        bh = (await c.get_latest_blockhash()).value.blockhash
        dest = Keypair.from_seed(os.urandom(32)).pubkey()
        keyed = [(k, k.pubkey()) for k in keys]
        txs = [_transfer(keyed, dest, i, bh) for i in range(n)] if presign else None
        opts = TxOpts(skip_confirmation=True, skip_preflight=skip_preflight)
        queue = iter(range(n))
        errors: list[str] = []
        failed: list[str] = []  # landed with an error status: not counted
        outstanding: list = []  # sent, not yet finalized (batch mode)
        done = {"finalized": 0, "sent": 0, "status_calls": 0, "t_sent": 0.0, "t_last": 0.0}
        all_sent = trio.Event()

        async def send_one(client: AsyncClient, i: int):
            tx = txs[i] if txs is not None else _transfer(keyed, dest, i, bh)
            try:
                sig = (await client.send_raw_transaction(bytes(tx), opts)).value
            except Exception as exc:  # counted and reported, never hidden
                errors.append(repr(exc))
                return None
            done["sent"] += 1
            return sig

        def settle(status) -> bool:
            """True once final; counts it as finalized (no error) or failed."""
            if status is None or status.confirmation_status != FINALIZED:
                return False
            if status.err is None:
                done["finalized"] += 1
                done["t_last"] = time.perf_counter()
            else:
                failed.append(str(status.err))
            return True

        async def worker(client: AsyncClient):
            for i in queue:
                sig = await send_one(client, i)
                if sig is None:
                    continue
                if confirm == "batch":
                    outstanding.append(sig)
                    continue
                while True:  # per-tx: poll this one signature until final, then send the next
                    done["status_calls"] += 1
                    if settle((await client.get_signature_statuses([sig])).value[0]):
                        break
                    await trio.sleep(0.02)

        async def own_client_worker(_shared: AsyncClient):
            async with _client(url, 1) as wc:
                await worker(wc)

        async def confirmer():
            while True:
                if not outstanding:
                    if all_sent.is_set():
                        return
                    await trio.sleep(0.02)
                    continue
                chunk = outstanding[:MAX_STATUSES]
                done["status_calls"] += 1
                st = (await c.get_signature_statuses(chunk)).value
                final = {s for s, x in zip(chunk, st) if settle(x)}
                outstanding[:] = [s for s in outstanding if s not in final]
                if len(final) < len(chunk) // 2:  # mostly not final yet: give the ledger flush a moment
                    await trio.sleep(0.02)

        if start_at is not None:  # several client processes start their timed loops together
            await trio.sleep(max(0.0, start_at - time.time()))
        cpu0 = (time.process_time(), cpu_seconds(server_pid) if server_pid else 0.0)
        t0 = time.perf_counter()
        t0_wall = time.time()
        with trio.fail_after(300):
            async with trio.open_nursery() as outer:
                if confirm == "batch":
                    outer.start_soon(confirmer)
                async with trio.open_nursery() as nursery:
                    for w in range(concurrency):
                        nursery.start_soon(own_client_worker if client_per_worker else worker, pool[w % clients])
                done["t_sent"] = time.perf_counter()
                all_sent.set()
        total_s = (done["t_last"] or time.perf_counter()) - t0
        end_wall = t0_wall + total_s
        cli_cpu = time.process_time() - cpu0[0]
        srv_cpu = cpu_seconds(server_pid) - cpu0[1] if server_pid else None
        # the transfers really moved the money: the destination holds the sum of every finalized one
        landed = (await c.get_balance(dest)).value
        expected = sum(1_000_000 + i for i in range(n)) if done["finalized"] == n else None
    ok = done["finalized"]
    res = {"n": n, "concurrency": concurrency, "confirm": confirm, "presigned": presign,
           "preflight": not skip_preflight, "clients": "one per sender, made in the loop" if client_per_worker
           else clients,
           "send_errors": len(errors), "first_error": errors[:1], "failed_status": len(failed),
           "finalized": ok, "destination_balance_ok": landed == expected if expected is not None else None,
           "status_calls": done["status_calls"],
           "sent_per_s": round(done["sent"] / (done["t_sent"] - t0)),
           "finalized_per_s": round(ok / total_s), "elapsed_s": round(total_s, 3),
           "client_cpu_ms_per_tx": round(1000 * cli_cpu / n, 3)}
    if srv_cpu is not None:
        res["localnet_cpu_ms_per_tx"] = round(1000 * srv_cpu / n, 3)
        res["localnet_cpu_bound_per_s"] = round(n / srv_cpu) if srv_cpu else None
        res["cpu_busy_of_2_cores"] = round((srv_cpu + cli_cpu) / total_s / 2, 2)
    res["_wall"] = [t0_wall, end_wall, cli_cpu]  # for measure_procs; main() drops it
    return res


def _child(url: str, n: int, concurrency: int, kwargs: dict, start_at: float, out) -> None:
    out.put(trio.run(lambda: measure(url, n, concurrency, start_at=start_at, **kwargs)))


def measure_procs(url: str, n: int, concurrency: int, procs: int, server_pid: int, **kwargs) -> dict:
    """The same measurement from `procs` client processes at once (each with its own senders, n/procs transfers
    and concurrency/procs in flight), timed from their common start to the last finalized transaction."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 4.0 + procs  # after every child has funded its senders and signed
    kids = [ctx.Process(target=_child, args=(url, n // procs, max(1, concurrency // procs), kwargs, start_at, out))
            for _ in range(procs)]
    for k in kids:
        k.start()
    time.sleep(max(0.0, start_at - time.time()))
    srv0 = cpu_seconds(server_pid)
    parts = [out.get(timeout=600) for _ in kids]
    srv_cpu = cpu_seconds(server_pid) - srv0
    srv_wall = time.time() - start_at
    for k in kids:
        k.join(10)
    elapsed = max(r["_wall"][1] for r in parts) - start_at
    cli_cpu = sum(r["_wall"][2] for r in parts)
    total = sum(r["n"] for r in parts)
    ok = sum(r["finalized"] for r in parts)
    res = {k: parts[0][k] for k in ("confirm", "presigned", "preflight", "clients")}
    res.update({"n": total, "concurrency": concurrency, "client_processes": procs,
                "send_errors": sum(r["send_errors"] for r in parts),
                "failed_status": sum(r["failed_status"] for r in parts),
                "finalized": ok, "destination_balance_ok": all(r["destination_balance_ok"] for r in parts),
                "status_calls": sum(r["status_calls"] for r in parts),
                "finalized_per_s": round(ok / elapsed), "elapsed_s": round(elapsed, 3),
                "client_cpu_ms_per_tx": round(1000 * cli_cpu / total, 3),
                "localnet_cpu_ms_per_tx": round(1000 * srv_cpu / total, 3),
                "localnet_cpu_bound_per_s": round(total / srv_cpu) if srv_cpu else None,
                "cpu_busy_of_2_cores": round((srv_cpu + cli_cpu) / max(elapsed, srv_wall) / 2, 2)})
    return res


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), to split the time between the localnet and its clients."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_localnet(ledger: Path | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "p2pnode", "localnet", "--port", "0"]
    if ledger:
        cmd += ["--ledger", str(ledger)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"localnet did not start: {line!r}")
    return proc, m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--ledger", action="store_true", help="with --ledger (fsynced group commit)")
    ap.add_argument("--confirm", choices=("batch", "per-tx"), default="batch",
                    help="batch: getSignatureStatuses for up to 256 outstanding signatures per call (default); "
                         "per-tx: each sender polls its own signature before sending the next")
    ap.add_argument("--sign-in-loop", action="store_true", help="build and sign each transfer inside the timed loop")
    ap.add_argument("--skip-preflight", action="store_true", help="sendTransaction with skipPreflight (labelled)")
    ap.add_argument("--procs", type=int, default=1, help="client processes (labelled figure; default one)")
    ap.add_argument("--clients", type=int, default=8, help="AsyncClients (connection pools) shared by the senders")
    ap.add_argument("--client-per-worker", action="store_true",
                    help="one AsyncClient per sender (the first version of this script) instead of one shared pool")
    args = ap.parse_args()
    base = baseline(args.n)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_localnet(Path(tmp) / "ledger" if args.ledger else None)
        try:
            kw = {"confirm": args.confirm, "presign": not args.sign_in_loop, "skip_preflight": args.skip_preflight,
                  "clients": args.clients, "client_per_worker": args.client_per_worker}
            if args.procs > 1:
                res = measure_procs(url, args.n, args.concurrency, args.procs, proc.pid, **kw)
            else:
                res = trio.run(lambda: measure(url, args.n, args.concurrency, server_pid=proc.pid, **kw))
                res.pop("_wall")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    res["ledger"] = args.ledger
    res["litesvm_direct_per_s"] = round(base)
    res["ratio_rpc_to_direct"] = round(res["finalized_per_s"] / base, 3)
    res["loadavg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
