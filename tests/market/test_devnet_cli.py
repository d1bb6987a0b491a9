"""`p2pnode devnet` — the README's first command — as a user runs it: a verified, paid job and a clean exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def processes_under(path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.timeout(300)
def test_devnet_runs_a_verified_paid_job_and_cleans_up(tmp_path):
    where = tmp_path / "dn"
    res = subprocess.run([sys.executable, "-m", "p2pnode", "devnet", "--providers", "2", "--n", "256", "--json",
                          "--dir", str(where)], capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout)
    assert s["verified"] is True and s["fund_tx"] and s["settle_tx"]
    assert s["paid"] > 0 and s["deposit"] == s["paid"] + s["fee_burned"] + s["refunded"]
    assert s["renter_io_before"] - s["renter_io_after"] == s["paid"] + s["fee_burned"]
    assert s["provider_io_after"] - s["provider_io_before"] == s["paid"]
    assert s["io_burned"] == s["fee_burned"] > 0
    # every process it started is gone; the homes, ledger and logs stay where --dir put them
    assert processes_under(where) == []
    assert (where / "ledger").is_dir() and (where / "provider-1.log").exists()


def test_devnet_bad_flags_one_line_error():
    res = subprocess.run([sys.executable, "-m", "p2pnode", "devnet", "--providers", "0"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["p2pnode: error: --providers 0: give 1..16"]
