"""Interoperability: a js-libp2p peer (TCP + Noise + Yamux + GossipSub, nothing py-libp2p-specific) dials our seed,
subscribes to /iog/offers/1, receives a provider's offers and verifies their signatures from DESIGN.md alone.

The js side is tests/net/interop/offers_listener.mjs with exact versions in package.json, installed with npm into
tests/net/interop/node_modules on first run (the npm registry is reachable here and in CI). Skipped only when
node/npm are not installed at all.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode

from .conftest import CPU, node_config, start

pytestmark = pytest.mark.timeout(300)

JS_DIR = Path(__file__).parent / "interop"


def js_ready() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not installed: the js-libp2p interop peer cannot run")
    if not (JS_DIR / "node_modules" / "libp2p").exists():
        res = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save"], cwd=JS_DIR,
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, f"npm install failed: {res.stderr[-2000:]}"
    return Path(node)


async def test_js_libp2p_peer_receives_and_verifies_offers(homes):
    node = js_ready()
    boot_home, boot_id = homes("boot")
    home, ident = homes("prov")
    async with BootstrapNode.start(node_config(boot_home), identity=boot_id) as boot, \
            trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        # re-publish every second so an offer is gossiped after the js peer has joined the mesh
        await start(nursery, ProviderNode(node_config(home, [seed], price=777, republish_s=1.0), identity=ident,
                                          devices=CPU))
        proc = subprocess.Popen([str(node), "--import", "./polyfill.mjs", "offers_listener.mjs", seed], cwd=JS_DIR, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            lines = await trio.to_thread.run_sync(read_until_offer, proc, ident.peer_id, 60.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ready = [json.loads(l)["ready"] for l in lines if '"ready"' in l]
        offers = [json.loads(l)["offer"] for l in lines if '"offer"' in l]
        assert ready and ready[0].startswith("12D3KooW"), lines  # a js PeerID (Ed25519), dialled the seed
        mine = [o for o in offers if o["peer_id"] == ident.peer_id]
        assert mine, lines
        o = mine[-1]
        assert o["v"] == 1 and o["t"] == "offer" and o["price"] == 777 and o["devices"] == ["cpu"]
        assert o["sig_ok"] and not o["forged_sig_ok"]  # the signature checks out, a flipped bit does not
        assert o["signer_is_origin"] and o["from"] == ident.peer_id  # signer == gossip originator
        assert o["expires_at"] > time.time()
        assert not [l for l in lines if '"error"' in l]
        # the seed accepted the foreign peer like any other: nothing it sent was rejected
        assert boot.net.gossip.rejections.total() == 0
        nursery.cancel_scope.cancel()


def read_until_offer(proc: subprocess.Popen, peer_id: str, timeout: float) -> list[str]:
    """stdout lines of the js peer until it printed an offer from `peer_id` (or timeout / exit)."""
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if '"offer"' in line and peer_id in line:
            return lines
    err = proc.stderr.read() if proc.poll() is not None else ""
    raise AssertionError(f"no offer from {peer_id} within {timeout} s; stdout={lines} stderr={err[-2000:]}")
