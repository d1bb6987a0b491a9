"""The net commands as an operator uses them: real `p2pnode` processes on loopback, stopped with SIGTERM.

init (new, refuse to overwrite, --key import, bad key files), bootstrap (prints its /p2p/ address; runs
without torch, as the Docker image installs it; stopped with Ctrl-C), run (a provider with real device detection), offers (light
client: table and --json), status (against the running provider's home), and clean exits: every failure is one
line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import select
import signal
import stat
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(180)

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# The seed peer's image installs p2pnode without torch: make `import torch` fail in that process.
NO_TORCH = "import sys; sys.modules['torch'] = None; from p2pnode.cli import entry; sys.argv[0] = 'p2pnode'; entry()"


def cli(*args: str, timeout: float = 60, no_torch: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", NO_TORCH, *args] if no_torch else [sys.executable, "-m", "p2pnode", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def spawn(*args: str, no_torch: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", NO_TORCH, *args] if no_torch else [sys.executable, "-m", "p2pnode", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen, stream: str, predicate, timeout: float = 60) -> str:
    pipe = getattr(proc, stream)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([pipe], [], [], 0.2)
        if ready:
            line = pipe.readline()
            if not line and proc.poll() is not None:
                break
            if predicate(line):
                return line.strip()
    raise AssertionError(f"no matching line on {stream} within {timeout} s (exit {proc.poll()})")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError("node did not stop within 20 s of SIGTERM")
    return proc.returncode, err


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnode: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_init_creates_refuses_imports_and_reports_bad_key_files(tmp_path):
    home = tmp_path / "node"
    res = cli("init", "--home", str(home))
    assert res.returncode == 0, res.stderr
    out = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.startswith(("peer", "address")))
    key = home / "identity.json"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    data = json.loads(key.read_text())
    assert isinstance(data, list) and len(data) == 64 and all(0 <= b <= 255 for b in data)  # Solana CLI format
    assert out["peer"].split()[-1].startswith("12D3KooW")

    one_line_error(cli("init", "--home", str(home)), str(key), "refusing to overwrite")

    again = cli("init", "--home", str(tmp_path / "imported"), "--key", str(key))  # import the same Solana key
    assert again.returncode == 0, again.stderr
    assert out["address"] in again.stdout and out["peer"].split()[-1] in again.stdout

    one_line_error(cli("init", "--home", str(tmp_path / "x"), "--key", str(tmp_path / "missing.json")),
                   "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    bad.chmod(0o600)
    one_line_error(cli("init", "--home", str(tmp_path / "y"), "--key", str(bad)), "bad.json", "64")
    key.chmod(0o644)
    one_line_error(cli("run", "--home", str(home), "--listen", LOOPBACK), "chmod 600")
    key.chmod(0o600)
    one_line_error(cli("run", "--home", str(tmp_path / "empty"), "--listen", LOOPBACK), "p2pnode init")
    one_line_error(cli("run", "--home", str(home), "--listen", "tcp://127.0.0.1:4001"), "not a multiaddr")
    one_line_error(cli("status", "--home", str(home)), "no node is running")


def test_bootstrap_run_offers_status_and_clean_stop(tmp_path):
    seed_home, prov_home = tmp_path / "seed", tmp_path / "prov"
    assert cli("init", "--home", str(prov_home)).returncode == 0
    seed = spawn("bootstrap", "--home", str(seed_home), "--listen", LOOPBACK, no_torch=True)
    prov = None
    try:
        addr = read_line(seed, "stdout", lambda l: "/p2p/" in l)
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/tcp/0/" not in addr
        seed_id = addr.rsplit("/", 1)[1]
        assert stat.S_IMODE((seed_home / "identity.json").stat().st_mode) == 0o600

        prov = spawn("run", "--home", str(prov_home), "--listen", LOOPBACK, "--bootstrap", addr, "--price", "4242")
        read_line(prov, "stderr", lambda l: "published offer" in l, timeout=90)

        res = cli("offers", "--bootstrap", addr, "--json", "--wait", "5", no_torch=True)  # a renter has no torch
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        mine = [r for r in rows if r["price"] == 4242]
        assert len(mine) == 1 and mine[0]["devices"][0]["kind"] in ("cpu", "cuda")
        prov_id = mine[0]["peer_id"]

        table = cli("offers", "--bootstrap", addr, "--wait", "3", no_torch=True)
        assert table.returncode == 0 and prov_id in table.stdout and "4242" in table.stdout

        st = cli("status", "--home", str(prov_home), "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["peer_id"] == prov_id and status["role"] == "provider"
        assert seed_id in status["peers"] and status["offers_in_book"] >= 1 and status["offer_seq"] >= 1

        human = cli("status", "--home", str(seed_home))
        assert human.returncode == 0 and seed_id in human.stdout and "offers in book 1" in human.stdout

        code, err = stop(prov)
        assert code == 0 and "Traceback" not in err, err
        assert not (prov_home / "node.json").exists()  # `status` no longer finds a running node
        one_line_error(cli("status", "--home", str(prov_home)), "no node is running")
    finally:
        if prov is not None and prov.poll() is None:
            stop(prov)
        code, err = stop(seed, signal.SIGINT)  # Ctrl-C
    assert code == 0 and "Traceback" not in err, err


def test_offers_with_unreachable_seed_is_one_line(tmp_path):
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWA7GFeycddccKFgQNeY5ma3xdGgTLHP3jNcFMY6YqPhW9"
    one_line_error(cli("offers", "--bootstrap", dead, "--wait", "2", no_torch=True), "could not reach any seed")
    one_line_error(cli("offers", "--bootstrap", "/ip4/127.0.0.1/tcp/9", "--wait", "1", no_torch=True), "/p2p/")
