"""`p2pnode localnet` as an operator runs it: Ctrl-C stops it cleanly, a taken port is a one-line error."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import trio
from solders.keypair import Keypair

from p2pnode.chain.rpc import ChainClient

REPO = Path(__file__).resolve().parents[2]


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "p2pnode", "localnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+)", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, m.group(1)


async def test_ctrl_c_stops_cleanly_and_flushes(tmp_path):
    ledger = tmp_path / "ledger"
    proc, url = await trio.to_thread.run_sync(_start, "--port", "0", "--ledger", str(ledger))
    kp = Keypair()
    try:
        async with ChainClient(url, timeout_s=10) as c:
            await c.airdrop(kp.pubkey(), 123_456_789)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await trio.to_thread.run_sync(proc.wait, 15)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert code == 0 and "Traceback" not in err, err
    proc2, url2 = await trio.to_thread.run_sync(_start, "--port", "0", "--ledger", str(ledger))
    try:
        async with ChainClient(url2, timeout_s=10) as c:
            assert await c.balance(kp.pubkey()) == 123_456_789
    finally:
        proc2.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(proc2.wait, 15)
        proc2.stdout.close()
        proc2.stderr.close()


async def test_port_in_use_is_a_user_error(localnet):
    port = localnet.url.rsplit(":", 1)[1]
    res = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "p2pnode", "localnet", "--port", port], capture_output=True, text=True, timeout=60,
        cwd=REPO))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--port" in lines[0] and "Traceback" not in res.stderr, res.stderr


async def test_unusable_ledger_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "p2pnode", "localnet", "--port", "0", "--ledger", str(blocker / "sub")],
        capture_output=True, text=True, timeout=60, cwd=REPO))
    assert res.returncode == 2 and "--ledger" in res.stderr and "Traceback" not in res.stderr, res.stderr
