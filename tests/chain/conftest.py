"""Fixtures for chain tests: a real localnet subprocess reached over real HTTP, a ChainClient, funded keypairs.

Fixture names are relied on by other chain test files: ``localnet`` (module scoped; ``.url``, ``.ledger``,
``.restart()``, ``.stop()``, ``.start()``, ``.kill()``), ``client`` (a ChainClient on it) and ``funded_keypair``
(an async factory: ``kp = await funded_keypair(lamports=...)``). ``fresh_localnet`` is a function-scoped one for
tests that stop or break the chain.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from solders.keypair import Keypair

from p2pnode.chain.rpc import ChainClient

REPO = Path(__file__).resolve().parents[2]
_URL_RE = re.compile(r"(http://\S+)")


class LocalnetProcess:
    """`python -m p2pnode localnet --port 0 --dev --ledger DIR` as a child process."""

    def __init__(self, ledger: Path, *, dev: bool = True, port: int = 0) -> None:
        self.ledger = ledger
        self.dev = dev
        self.port = port  # after the first start, restarts reuse the same port so clients keep their URL
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log = ledger.parent / (ledger.name + ".log")

    def start(self, timeout_s: float = 30.0) -> str:
        assert self.proc is None, "already running"
        cmd = [sys.executable, "-m", "p2pnode", "localnet", "--port", str(self.port), "--ledger", str(self.ledger)]
        if self.dev:
            cmd.append("--dev")
        err = open(self.log, "a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, env=env)
        err.close()
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = _URL_RE.search(line)
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return self.url
        self.kill()
        raise RuntimeError(f"localnet did not start: {line!r}; see {self.log}: {self.log.read_text()[-2000:]}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """Graceful stop (SIGTERM: final flush, clean exit); returns the exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if proc.stdout:
            proc.stdout.close()
        return code

    def kill(self) -> None:
        """Crash it (SIGKILL): only what was already fsynced survives."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def restart(self) -> str:
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def localnet() -> Iterator[LocalnetProcess]:
    with tempfile.TemporaryDirectory(prefix="p2pnode-localnet-") as tmp:
        net = LocalnetProcess(Path(tmp) / "ledger")
        net.start()
        try:
            yield net
        finally:
            net.stop()


@pytest.fixture
def fresh_localnet() -> Iterator[LocalnetProcess]:
    """A private localnet for tests that stop, kill or restart it."""
    with tempfile.TemporaryDirectory(prefix="p2pnode-localnet-") as tmp:
        net = LocalnetProcess(Path(tmp) / "ledger")
        net.start()
        try:
            yield net
        finally:
            net.stop()


@pytest.fixture
async def client(localnet: LocalnetProcess):
    async with ChainClient(localnet.url, timeout_s=20) as c:
        yield c


@pytest.fixture
def funded_keypair(client: ChainClient):
    """`await funded_keypair(lamports=10 SOL)` -> a new Keypair holding that much SOL (confirmed)."""

    async def make(lamports: int = 10 * 10**9) -> Keypair:
        kp = Keypair()
        await client.airdrop(kp.pubkey(), lamports)
        return kp

    return make
