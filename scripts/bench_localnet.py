"""Localnet throughput: simple SOL transfers per second through JSON-RPC with solana-py's AsyncClient.

Starts `p2pnode localnet` as a subprocess (optionally with --ledger, i.e. fsynced group commits), funds S senders,
then keeps C sends in flight (AsyncClient.send_raw_transaction with preflight, as a node does) and finally waits
until every signature is finalized (durable). Baseline in the same run: the same transfers straight into an
in-process LiteSVM (no RPC), so the report is also a ratio. Importable: `await measure(url, n, concurrency)`.

    .venv/bin/python scripts/bench_localnet.py [--n 2000] [--concurrency 64] [--ledger]
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
from pathlib import Path

import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

SOL = 10**9


def _transfers(senders: list[Keypair], n: int, blockhash) -> list[Transaction]:
    dest = Keypair().pubkey()
    return [Transaction.new_signed_with_payer(
        [transfer(TransferParams(from_pubkey=senders[i % len(senders)].pubkey(), to_pubkey=dest,
                                 lamports=1_000_000 + i))],
        senders[i % len(senders)].pubkey(), [senders[i % len(senders)]], blockhash) for i in range(n)]


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


async def measure(url: str, n: int = 2000, concurrency: int = 64, senders: int = 16) -> dict:
    async with AsyncClient(url, timeout=30, http2=False) as c:
        keys = [Keypair() for _ in range(senders)]
        for k in keys:
            await c.request_airdrop(k.pubkey(), 1000 * SOL)
        await trio.sleep(0.5)
        bh = (await c.get_latest_blockhash()).value.blockhash
        txs = _transfers(keys, n, bh)
        raws = [bytes(tx) for tx in txs]
        sigs = [tx.signatures[0] for tx in txs]
        opts = TxOpts(skip_confirmation=True)
        queue = iter(raws)
        errors = []

        async def worker():
            async with AsyncClient(url, timeout=30, http2=False) as wc:
                for raw in queue:
                    try:
                        await wc.send_raw_transaction(raw, opts)
                    except Exception as exc:  # counted and reported, never hidden
                        errors.append(repr(exc))

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        sent_s = time.perf_counter() - t0
        pending = list(sigs)
        with trio.fail_after(120):
            while pending:
                left = []
                for i in range(0, len(pending), 256):
                    chunk = pending[i:i + 256]
                    st = (await c.get_signature_statuses(chunk)).value
                    left += [s for s, x in zip(chunk, st) if x is None or str(x.confirmation_status) !=
                             "TransactionConfirmationStatus.Finalized"]
                pending = left
                if pending:
                    await trio.sleep(0.02)
        total_s = time.perf_counter() - t0
    return {"n": n, "concurrency": concurrency, "errors": len(errors), "first_error": errors[:1],
            "sent_per_s": round(n / sent_s), "finalized_per_s": round(n / total_s)}


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
    args = ap.parse_args()
    base = baseline(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_localnet(Path(tmp) / "ledger" if args.ledger else None)
        try:
            srv0, cli0, wall0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
            res = trio.run(measure, url, args.n, args.concurrency)
            srv_s, cli_s = cpu_seconds(proc.pid) - srv0, time.process_time() - cli0
            wall_s = time.perf_counter() - wall0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    res["ledger"] = args.ledger
    res["litesvm_direct_per_s"] = round(base)
    res["ratio_rpc_to_direct"] = round(res["finalized_per_s"] / base, 3)
    # where the time goes (incl. funding): the server's CPU per transaction bounds what one core of localnet
    # serves; the AsyncClient side runs in this process and competes for the same (shared) cores
    res["localnet_cpu_ms_per_tx"] = round(1000 * srv_s / args.n, 3)
    res["client_cpu_ms_per_tx"] = round(1000 * cli_s / args.n, 3)
    res["localnet_cpu_bound_per_s"] = round(args.n / srv_s) if srv_s else None
    res["cpu_busy_of_2_cores"] = round((srv_s + cli_s) / wall_s / 2, 2)
    res["loadavg_1min"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
