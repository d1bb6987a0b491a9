"""Issue 6 figure: end-to-end rewards epoch on a devnet with 3 providers.

    .venv/bin/python scripts/bench_epoch.py [--providers 3] [--epoch-s 10] [--epochs 3] [--json] [--keep DIR]

Starts ``p2pnode.market.devnet`` (local chain + 2 operators + N providers, each a child process), with network.json's
``epoch_s`` shortened, has the operators' quorum approve operator-1 as the rewards pool's delegate, and lets the
nodes run on their own: operators challenge providers over /iog/attest/1.0.0, close each epoch into a manifest,
gossip it and operator-1 pays it. This process only watches the chain: it polls every provider's IO balance every
0.1 s, and for each epoch that paid all N providers reports

    latency = (first poll at which every provider's balance includes that epoch's payout) - (epoch end)

where epoch end = genesis_time + (epoch + 1) * epoch_s (wall clock, as the nodes compute it). It includes the
deliberate grace wait for late attestations (``EpochService.grace_s`` = epoch_s / 4 on a devnet, 30 s at most),
which is also reported and subtracted. Baseline, same run and chain: one SPL transfer sent and confirmed by
polling (the distributor's unit of work), so ``(latency - grace) / baseline`` says how many transaction round trips
closing + signing + gossiping + paying an epoch costs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE_REPS = 5


def _own_manifests(db: Path) -> dict:
    from p2pnode.chain.rewards_manifest import RewardsManifest
    from p2pnode.wire import open_envelope

    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT r.epoch, r.envelope FROM reward_own_manifests r JOIN reward_epochs e "
                           "ON e.epoch = r.epoch WHERE e.status = 'paid'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()
    return {e: open_envelope(bytes(raw), RewardsManifest).message for e, raw in rows}


async def _transfer_baseline(client, params, ops, to: str, reps: int = 5) -> float:
    """Median seconds to send one SPL transfer (treasury -> a provider, quorum-signed) and see it confirmed."""
    from p2pnode.market.devnet import give_io

    times = []
    for i in range(reps):
        t = time.perf_counter()
        await give_io(client, params, ops, to, 1 + i)  # ChainClient.send confirms by polling; distinct amounts
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def bench(providers: int, epoch_s: int, epochs: int, root: Path, say) -> dict:
    from solana.rpc.async_api import AsyncClient

    from p2pnode.chain.emission import hour_emission
    from p2pnode.chain.rewards_distribute import Pool, approve_allowance
    from p2pnode.chain.rpc import ChainClient
    from p2pnode.chain.stake import required_stake
    from p2pnode.market.devnet import PROVIDER_IO, Devnet, io_balance

    net = Devnet(root, providers=providers, say=say)
    t_start = time.time()
    try:
        await net.start_chain()
        async with ChainClient(net.rpc_url, timeout_s=20) as client:
            await net.genesis(client)
            net.params.epoch_s = epoch_s
            net.params.save(net.root / "network.json")
            ops = [o.solana_keypair() for o in net.ops]
            rpc = AsyncClient(net.rpc_url, timeout=30)
            try:
                await approve_allowance(rpc, Pool.from_network(net.params), ops[0].pubkey(),
                                        10_000 * hour_emission(0), ops[: net.params.threshold], ops[0])
            finally:
                await rpc.close()
            await net.start_operators()
            net.start_providers()
            await net.fund_and_stake(client)
            addrs = [p.address for p in net.provider_ids]
            mint = net.params.mint
            baseline_s = await _transfer_baseline(client, net.params, ops, addrs[0], reps=BASELINE_REPS)
            # before any reward: what the devnet gave minus the stake (+ the baseline's test transfers)
            stake = required_stake(net.params, ["cpu"])
            start_bal = {a: PROVIDER_IO - stake for a in addrs}
            start_bal[addrs[0]] += sum(range(1, BASELINE_REPS + 1))
            say(f"bench      devnet up after {time.time() - t_start:.1f} s; one transfer confirms in "
                f"{baseline_s * 1000:.0f} ms; watching balances")
            samples: list[tuple[float, dict[str, int]]] = []
            op_db = net.home("operator-1") / "node.db"
            full: list[int] = []
            with trio.move_on_after(60 + (epochs + 3) * epoch_s * 2):
                while len(full) < epochs:
                    bal = {}
                    for a in addrs:
                        bal[a] = await io_balance(client, a, mint)
                    samples.append((time.time(), bal))
                    own = _own_manifests(op_db)
                    full = sorted(e for e, m in own.items() if {x.address for x in m.entries} >= set(addrs))
                    await trio.sleep(0.1)
            net.child("operator-1").stop()
            own = _own_manifests(op_db)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(net.stop)

    grace = min(30.0, epoch_s / 4)
    paid_epochs = sorted(own)
    rows = []
    for e in sorted(e for e in own if {x.address for x in own[e].entries} >= set(addrs)):
        # cumulative payouts of every paid epoch up to e, on top of the balances before any reward
        want = {a: start_bal[a] + sum(own[p].entry_for(a).amount if own[p].entry_for(a) else 0
                                      for p in paid_epochs if p <= e) for a in addrs}
        end = net.params.genesis_time + (e + 1) * epoch_s
        seen = next((t for t, bal in samples if all(bal[a] >= want[a] for a in addrs)), None)
        if seen is None:
            continue
        rows.append({"epoch": e, "latency_s": round(seen - end, 3), "after_grace_s": round(seen - end - grace, 3),
                     "amounts": {a[:8]: own[e].entry_for(a).amount for a in addrs}})
    lat = [r["latency_s"] for r in rows]
    net_lat = [r["after_grace_s"] for r in rows]
    return {
        "providers": providers, "epoch_s": epoch_s, "grace_s": grace, "epochs_measured": len(rows),
        "epoch_end_to_all_paid_s": {"median": statistics.median(lat), "max": max(lat)} if lat else None,
        "minus_grace_s": {"median": statistics.median(net_lat), "max": max(net_lat)} if net_lat else None,
        "baseline_one_transfer_s": round(baseline_s, 4),
        "ratio_minus_grace_to_one_transfer": round(statistics.median(net_lat) / baseline_s, 2) if net_lat else None,
        "per_epoch": rows,
        "wall_s": round(time.time() - t_start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", type=int, default=3)
    ap.add_argument("--epoch-s", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3, help="epochs that pay every provider to measure")
    ap.add_argument("--keep", type=Path, default=None, help="keep the devnet folder here (logs, homes)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="p2pnode-bench-epoch-"))
    root.mkdir(parents=True, exist_ok=True)
    say = (lambda s: None) if args.json else print
    res = trio.run(bench, args.providers, args.epoch_s, args.epochs, root, say)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print()
    print(f"== end-to-end epoch on devnet, {res['providers']} providers, {res['epoch_s']} s epochs ==")
    for r in res["per_epoch"]:
        print(f"epoch {r['epoch']:>4}: all paid {r['latency_s']:.2f} s after the epoch ended "
              f"({r['after_grace_s']:.2f} s after the {res['grace_s']:.1f} s grace)")
    if res["epoch_end_to_all_paid_s"]:
        m = res["epoch_end_to_all_paid_s"]
        g = res["minus_grace_s"]
        print(f"epoch end -> all payouts confirmed: median {m['median']:.2f} s, max {m['max']:.2f} s "
              f"(grace {res['grace_s']:.1f} s; without it median {g['median']:.2f} s = "
              f"{res['ratio_minus_grace_to_one_transfer']}x one SPL transfer's {res['baseline_one_transfer_s']*1000:.0f} ms)")
    else:
        print("no epoch paid every provider within the time limit; see the logs with --keep DIR")
    print(f"wall time {res['wall_s']} s")


if __name__ == "__main__":
    main()
