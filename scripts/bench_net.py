"""Network figures of issue 2, measured on loopback with the real stack (TCP + Noise + yamux, GossipSub).

    .venv/bin/python scripts/bench_net.py [--nodes 10] [--bulk-mib 64] [--json] [--only propagation|bulk]

* connect time (fresh host pair, dial → connection ready), p50 / max over 20;
* 32-byte request/response round trip on one open stream, p50 / p99 over 2000;
* one-stream bulk transfer MB/s (1 MiB writes, first write → the sink's ack), and the same bytes over raw trio TCP
  in the same run (ratio), twice: both hosts in this one process (one core does both ends' Noise + yamux), and
  the receiving host in its own process (as between two real nodes; raw TCP measured the same way);
  ``--only bulk [--profile PREFIX]`` runs just these (cProfile of sender and sink → PREFIX.{sender,sink}.prof);
* offer propagation over a seed + (nodes-1) providers: publish → in every other node's book, p50 / p99, twice:
  all nodes in this one process (one core serialises every node's work), and one process per provider (as in a
  real network; arrival times compared on the shared wall clock);
* idle RSS of a provider (real device detection, so torch is loaded) and of a light client, each in its own
  process after 3 s idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pnode.config import NetConfig, NodeConfig, OfferConfig  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402
from p2pnode.net.host import HostSettings, peer_info, running_host  # noqa: E402
from p2pnode.wire import STREAM_WRITE, Device  # noqa: E402

LOOP = "/ip4/127.0.0.1/tcp/0"
ECHO = "/bench/echo/1.0.0"
SINK = "/bench/sink/1.0.0"
CPU = [Device(kind="cpu", name="bench cpu", mem_bytes=8 << 30)]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


def sched_s() -> tuple[float, float]:
    """(CPU seconds, seconds runnable but waiting for a core) of this process's main thread, from the kernel."""
    try:
        run, wait = Path("/proc/thread-self/schedstat").read_text().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return float("nan"), float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_connect(n: int = 20) -> dict:
    times = []
    for _ in range(n):
        a, b = Identity.generate(), Identity.generate()
        async with running_host(a, HostSettings(listen=[LOOP])) as ha, \
                running_host(b, HostSettings(listen=[LOOP])) as hb:
            info = peer_info(str(ha.get_addrs()[0]))
            t = time.perf_counter()
            await hb.connect(info)
            times.append((time.perf_counter() - t) * 1e3)
    return {"connect_ms_p50": statistics.median(times), "connect_ms_max": max(times)}


async def bench_streams(bulk_mib: int, rounds: int = 2000, write_size: int = STREAM_WRITE) -> dict:
    a, b = Identity.generate(), Identity.generate()
    out: dict = {}
    async with running_host(a, HostSettings(listen=[LOOP])) as ha, \
            running_host(b, HostSettings(listen=[LOOP])) as hb:
        async def echo(stream):
            try:
                while True:
                    data = await stream.read(32)
                    if not data:
                        break
                    await stream.write(data)
            except Exception:
                pass

        received = trio.Event()
        total = {"n": 0}

        async def sink(stream):
            try:
                while True:
                    data = await stream.read(1 << 20)
                    if not data:
                        break
                    total["n"] += len(data)
                    if total["n"] >= bulk_mib << 20:
                        await stream.write(b"k")
                        received.set()
            except Exception:
                pass

        ha.set_stream_handler(ECHO, echo)
        ha.set_stream_handler(SINK, sink)
        await hb.connect(peer_info(str(ha.get_addrs()[0])))
        s = await hb.new_stream(ha.get_id(), [ECHO])
        msg = os.urandom(32)
        rtts = []
        for _ in range(rounds):
            t = time.perf_counter()
            await s.write(msg)
            got = b""
            while len(got) < 32:
                got += await s.read(32 - len(got))
            rtts.append((time.perf_counter() - t) * 1e3)
        await s.close()
        out["rtt32_ms_p50"] = statistics.median(rtts)
        out["rtt32_ms_p99"] = pct(rtts, 0.99)

        chunk = os.urandom(1 << 20)  # 1 MiB chunks (DESIGN.md), written as FramedStream writes them
        view = memoryview(chunk)
        s = await hb.new_stream(ha.get_id(), [SINK])
        t = time.perf_counter()
        for _ in range(bulk_mib):
            for i in range(0, len(chunk), write_size):
                await s.write(view[i:i + write_size])
        with trio.fail_after(120):
            await received.wait()
            await s.read(1)
        dt = time.perf_counter() - t
        await s.close()
        # both hosts in this one process: one core (the GIL) does the sender's AND the receiver's Noise + yamux
        out["bulk_1proc_libp2p_MBps"] = (bulk_mib << 20) / dt / 1e6
    out["bulk_1proc_raw_tcp_MBps"] = await bench_raw_tcp(bulk_mib)
    out["bulk_1proc_ratio_to_raw_tcp"] = out["bulk_1proc_libp2p_MBps"] / out["bulk_1proc_raw_tcp_MBps"]
    return out


async def bench_raw_tcp(bulk_mib: int) -> float:
    """Baseline: the same bytes over a plain trio TCP socket on loopback, same chunk size, same process."""
    done = trio.Event()
    result = {}

    async def handler(stream):
        n = 0
        while n < bulk_mib << 20:
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            n += len(data)
        await stream.send_all(b"k")
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0, )
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        chunk = os.urandom(1 << 20)
        t = time.perf_counter()
        for _ in range(bulk_mib):
            await client.send_all(chunk)
        await client.receive_some(1)
        result["dt"] = time.perf_counter() - t
        await client.aclose()
        nursery.cancel_scope.cancel()
    return (bulk_mib << 20) / result["dt"] / 1e6


# --- one-stream bulk with the receiving host in its own process (as in a real network) -------------------------

def _profiled(coro_fn, profile: str):
    """Run ``coro_fn`` under cProfile (this process only) and dump the stats to ``profile`` when it returns."""
    async def run(*a):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            return await coro_fn(*a)
        finally:
            prof.disable()
            prof.dump_stats(profile)
    return run


async def _bulk_sink_child(bulk_mib: int, read_size: int) -> None:
    """Receiving host: print its address, take ``bulk_mib`` MiB on one SINK stream, ack with one byte, exit."""
    done = trio.Event()
    got = {"n": 0, "reads": 0}

    async def sink(stream):
        try:
            while got["n"] < bulk_mib << 20:
                data = await stream.read(read_size)
                if not data:
                    break
                if not got["n"]:
                    got["sched0"], got["t0"] = sched_s(), time.perf_counter()
                got["n"] += len(data)
                got["reads"] += 1
            got["wall_s"] = time.perf_counter() - got["t0"]
            got["cpu_s"], got["wait_s"] = (a - b for a, b in zip(sched_s(), got["sched0"]))
            got["target_recv_window"] = getattr(getattr(stream, "muxed_stream", None), "target_recv_window", None)
            await stream.write(b"k")
            with trio.move_on_after(10):  # the sender closes after the ack; read its EOF before closing
                try:
                    await stream.read(1)
                except Exception:
                    pass
        except Exception:
            pass
        finally:
            done.set()

    async with running_host(Identity.generate(), HostSettings(listen=[LOOP])) as h:
        h.set_stream_handler(SINK, sink)
        print(json.dumps({"addr": str(h.get_addrs()[0])}), flush=True)
        with trio.fail_after(300):
            await done.wait()
    print(json.dumps({"received": got["n"], **{k: got.get(k) for k in ("reads", "cpu_s", "wait_s", "wall_s",
                                                                      "target_recv_window")}}), flush=True)


async def _tcp_sink_child(bulk_mib: int, read_size: int) -> None:
    """Raw-TCP baseline sink: same bytes, same ack, its own process."""
    done = trio.Event()
    got = {"n": 0}

    async def handler(stream):
        while got["n"] < bulk_mib << 20:
            data = await stream.receive_some(read_size)
            if not data:
                break
            got["n"] += len(data)
        await stream.send_all(b"k")
        with trio.move_on_after(10):
            await stream.receive_some(1)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
        with trio.fail_after(300):
            await done.wait()
        nursery.cancel_scope.cancel()
    print(json.dumps({"received": got["n"]}), flush=True)


async def _spawn_sink(kind: str, bulk_mib: int, read_size: int, profile: str | None):
    """Start a sink child; return (process, first JSON line, stdout receive stream)."""
    cmd = [sys.executable, __file__, "--child", kind, "--bulk-mib", str(bulk_mib), "--read-size", str(read_size)]
    if profile:
        cmd += ["--profile", profile]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    buf = b""
    with trio.fail_after(60):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"{kind} child exited before printing its address")
            buf += chunk
    return proc, json.loads(buf.split(b"\n", 1)[0]), buf.split(b"\n", 1)[1]


async def _finish_child(proc, rest: bytes) -> dict:
    with trio.fail_after(30):
        while True:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            rest += chunk
        await proc.wait()
    lines = [ln for ln in rest.decode().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


@asynccontextmanager
async def _sink(kind: str, bulk_mib: int, read_size: int, profile: str | None = None):
    """A sink child for the block: yields (its first JSON line, report) where ``await report()`` waits for it to
    exit and returns its last JSON line; the child is killed if the block leaves early."""
    proc, hello, rest = await _spawn_sink(kind, bulk_mib, read_size, profile)
    try:
        yield hello, lambda: _finish_child(proc, rest)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def bench_bulk_processes(bulk_mib: int, read_size: int = 1 << 20, profile_prefix: str | None = None,
                               write_size: int = STREAM_WRITE) -> dict:
    """Sender here, receiver in its own process; libp2p stream then raw TCP, the same 1 MiB chunks.

    The libp2p sender writes each chunk as FramedStream does (``write_size`` = wire.STREAM_WRITE bytes per write,
    one Noise message per yamux frame); ``--write-size 1048576`` shows what whole-chunk writes cost.

    Timed from the first write to the sink's one-byte ack (sent once it has counted every byte), so both sides'
    Noise + yamux work is inside the figure, each on its own core as between two real nodes.
    """
    chunk = os.urandom(1 << 20)  # 1 MiB writes, the DESIGN.md bulk chunk size
    out: dict = {}

    async with _sink("bulk-sink", bulk_mib, read_size,
                     profile_prefix + ".sink.prof" if profile_prefix else None) as (hello, report):
        async with running_host(Identity.generate(), HostSettings(listen=[LOOP])) as h:
            info = peer_info(hello["addr"])
            await h.connect(info)
            s = await h.new_stream(info.peer_id, [SINK])

            async def send() -> float:
                sched0, t = sched_s(), time.perf_counter()
                view = memoryview(chunk)
                for _ in range(bulk_mib):
                    for i in range(0, len(chunk), write_size):
                        await s.write(view[i:i + write_size])
                with trio.fail_after(120):
                    ack = await s.read(1)
                dt = time.perf_counter() - t
                cpu, wait = (a - b for a, b in zip(sched_s(), sched0))
                out["bulk_2proc_sender_cpu_share"] = cpu / dt
                out["bulk_2proc_sender_runq_share"] = wait / dt
                # yamux makes a writer with no send window poll every 10 ms (py-libp2p 0.8.1 YamuxStream.write)
                out["bulk_2proc_sender_zero_window_waits"] = getattr(s.muxed_stream, "_zero_window_waits", None)
                assert ack == b"k", ack
                return dt

            if profile_prefix:
                dt = await _profiled(send, profile_prefix + ".sender.prof")()
            else:
                dt = await send()
            await s.close()
        got = await report()
    assert got.get("received", 0) >= bulk_mib << 20, got
    out["bulk_2proc_libp2p_MBps"] = (bulk_mib << 20) / dt / 1e6
    # CPU seconds / wall seconds of each end while the bytes flow (an end near 1.0 is CPU-bound), and the share
    # of the time it was runnable but waited for a core (other load on the machine)
    out["bulk_2proc_sink_cpu_share"] = got["cpu_s"] / got["wall_s"]
    out["bulk_2proc_sink_runq_share"] = got["wait_s"] / got["wall_s"]
    # bytes per CPU-second of each end: what it would sustain with a core to itself (load-independent)
    out["bulk_2proc_sink_MB_per_cpu_s"] = (bulk_mib << 20) / got["cpu_s"] / 1e6
    out["bulk_2proc_sender_MB_per_cpu_s"] = out["bulk_2proc_libp2p_MBps"] / out["bulk_2proc_sender_cpu_share"]
    out["bulk_2proc_sink_recv_window_kib"] = (got.get("target_recv_window") or 0) / 1024
    out["bulk_2proc_sink_reads"] = got.get("reads")

    async with _sink("tcp-sink", bulk_mib, read_size) as (hello, report):
        client = await trio.open_tcp_stream("127.0.0.1", hello["port"])
        t = time.perf_counter()
        for _ in range(bulk_mib):
            await client.send_all(chunk)
        with trio.fail_after(120):
            ack = await client.receive_some(1)
        dt = time.perf_counter() - t
        assert ack == b"k", ack
        await client.aclose()
        await report()
    out["bulk_2proc_raw_tcp_MBps"] = (bulk_mib << 20) / dt / 1e6
    out["bulk_2proc_ratio_to_raw_tcp"] = out["bulk_2proc_libp2p_MBps"] / out["bulk_2proc_raw_tcp_MBps"]
    return out


async def bench_propagation(nodes: int, publishes: int = 20) -> dict:
    from p2pnode.operator import BootstrapNode
    from p2pnode.provider import ProviderNode

    tmp = Path(tempfile.mkdtemp(prefix="bench-net-"))

    def cfg(name: str, bootstrap: list[str]) -> tuple[NodeConfig, Identity]:
        ident = Identity.generate()
        c = NodeConfig(home=tmp / name)
        c.net = NetConfig(listen=[LOOP], bootstrap=bootstrap, heartbeat_s=1.0)
        c.offer = OfferConfig(price=1, republish_s=3600, ttl_s=600)
        ident.save(c.key_file)
        return c, ident

    latencies: list[float] = []
    per_publish_max: list[float] = []
    bc, bi = cfg("boot", [])
    async with BootstrapNode.start(bc, identity=bi) as boot, trio.open_nursery() as nursery:
        seed = boot.addrs()[0]
        provs = []
        for i in range(nodes - 1):
            c, ident = cfg(f"p{i}", [seed])
            node = ProviderNode(c, identity=ident, devices=CPU)
            started = trio.Event()

            async def run(node=node, started=started):
                async with node.running():
                    started.set()
                    await trio.sleep_forever()

            nursery.start_soon(run)
            await started.wait()
            provs.append(node)
        everyone = [boot] + provs
        # let the DHT introduce everyone and the meshes form
        with trio.move_on_after(30):
            while not all(len(p.book) == len(provs) for p in everyone):
                await trio.sleep(0.2)
        await trio.sleep(3)
        for k in range(publishes):
            src = provs[k % len(provs)]
            others = [n for n in everyone if n is not src]
            t0 = time.perf_counter()
            offer = await src.publisher.publish_now()
            arrived: dict[int, float] = {}
            with trio.move_on_after(10):
                while len(arrived) < len(others):
                    for i, n in enumerate(others):
                        if i not in arrived:
                            got = n.book.get(src.peer_id)
                            if got is not None and got.seq >= offer.seq:
                                arrived[i] = (time.perf_counter() - t0) * 1e3
                    await trio.sleep(0.001)
            latencies.extend(arrived.values())
            latencies.extend([float("inf")] * (len(others) - len(arrived)))
            per_publish_max.append(max(arrived.values(), default=float("inf")))
            await trio.sleep(0.3)
        peers = statistics.mean(len(n.net.connected_peers()) for n in everyone)
        nursery.cancel_scope.cancel()
    return {"nodes": nodes, "publishes": publishes, "deliveries": len(latencies),
            "propagation_ms_p50": statistics.median(latencies), "propagation_ms_p99": pct(latencies, 0.99),
            "propagation_all_nodes_ms_p50": statistics.median(per_publish_max),
            "missed": sum(1 for x in latencies if x == float("inf")), "mean_peers_per_node": peers}


# --- offer propagation with one process per node (what a real network looks like) ----------------------------

async def _prop_child(seed: str, start_at: float, slot: int, nodes: int, publishes: int, gap_s: float) -> None:
    """One provider: join, publish its offer at its wall-clock slots, log when every offer reached its book."""
    from p2pnode.provider import ProviderNode

    tmp = Path(tempfile.mkdtemp(prefix="bench-prop-"))
    c = NodeConfig(home=tmp)
    c.net = NetConfig(listen=[LOOP], bootstrap=[seed], heartbeat_s=1.0)
    c.offer = OfferConfig(price=1, republish_s=3600, ttl_s=600)
    ident = Identity.generate()
    ident.save(c.key_file)
    node = ProviderNode(c, identity=ident, devices=CPU)
    arrivals: list[tuple[str, int, float]] = []
    sent: list[tuple[int, float]] = []
    async with node.running():
        book_add = node.net.book.add

        def add(signed):  # the moment an offer enters this node's book, wall clock (shared by all processes)
            kept = book_add(signed)
            if kept:
                arrivals.append((signed.message.peer_id, signed.message.seq, time.time()))
            return kept

        node.net.book.add = add
        for k in range(publishes):
            when = start_at + (k * nodes + slot) * gap_s
            await trio.sleep(max(0.0, when - time.time()))
            t = time.time()
            offer = await node.publisher.publish_now()
            sent.append((offer.seq, t))
        await trio.sleep(max(0.0, start_at + (publishes * nodes + 2) * gap_s + 5 - time.time()))
        print(json.dumps({"peer_id": node.peer_id, "sent": sent, "arrivals": arrivals,
                          "peers": len(node.net.connected_peers())}), flush=True)


async def bench_propagation_processes(nodes: int, publishes: int = 3, gap_s: float = 0.4) -> dict:
    """Seed here, nodes-1 providers each in its own process; every provider publishes `publishes` times."""
    from p2pnode.operator import BootstrapNode

    tmp = Path(tempfile.mkdtemp(prefix="bench-prop-seed-"))
    c = NodeConfig(home=tmp)
    c.net = NetConfig(listen=[LOOP], heartbeat_s=1.0)
    ident = Identity.generate()
    ident.save(c.key_file)
    seed_arrivals: list[tuple[str, int, float]] = []
    results: list[dict] = []
    async with BootstrapNode.start(c, identity=ident) as boot:
        seed = boot.addrs()[0]
        book_add = boot.book.add

        def add(signed):
            kept = book_add(signed)
            if kept:
                seed_arrivals.append((signed.message.peer_id, signed.message.seq, time.time()))
            return kept

        boot.book.add = add
        n = nodes - 1
        start_at = time.time() + 20 + 1.5 * n  # imports, joins, DHT introductions and meshes first
        async with trio.open_nursery() as nursery:
            async def child(slot: int) -> None:
                proc = await trio.run_process(
                    [sys.executable, __file__, "--child", "prop", "--seed", seed, "--start-at", str(start_at),
                     "--slot", str(slot), "--nodes", str(n), "--publishes", str(publishes), "--gap", str(gap_s)],
                    capture_stdout=True, capture_stderr=True)
                results.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))

            for slot in range(n):
                nursery.start_soon(child, slot)
    books = {r["peer_id"]: {(p, s): t for p, s, t in r["arrivals"]} for r in results}
    books["seed"] = {(p, s): t for p, s, t in seed_arrivals}
    latencies, missed, per_publish_max = [], 0, []
    for r in results:
        for seq, t_sent in r["sent"]:
            worst = 0.0
            for owner, book in books.items():
                if owner == r["peer_id"]:
                    continue
                t = book.get((r["peer_id"], seq))
                if t is None:
                    missed += 1
                    continue
                latencies.append((t - t_sent) * 1e3)
                worst = max(worst, (t - t_sent) * 1e3)
            per_publish_max.append(worst)
    return {"proc_nodes": nodes, "proc_publishes": len(per_publish_max), "proc_deliveries": len(latencies),
            "proc_propagation_ms_p50": statistics.median(latencies), "proc_propagation_ms_p99": pct(latencies, 0.99),
            "proc_propagation_all_nodes_ms_p50": statistics.median(per_publish_max), "proc_missed": missed,
            "proc_mean_peers_per_node": statistics.mean(r["peers"] for r in results)}


# --- idle RSS, each role in its own process -------------------------------------------------------------------

async def _child(role: str, seed: str, settle_s: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    net = NetConfig(listen=[LOOP], bootstrap=[seed])
    if role == "light":
        from p2pnode.renter import LightClient

        async with LightClient(net).running() as c:
            await c.wait_joined(10)
            await trio.sleep(settle_s)
            print(json.dumps({"rss_mib": rss_mib(), "torch_loaded": "torch" in sys.modules}))
    else:
        from p2pnode.provider import ProviderNode

        c = NodeConfig(home=tmp)
        c.net = net
        Identity.generate().save(c.key_file)
        async with ProviderNode.start(c) as node:  # real device detection (torch)
            await trio.sleep(settle_s)
            print(json.dumps({"rss_mib": rss_mib(), "torch_loaded": "torch" in sys.modules,
                              "devices": [d.name for d in node.publisher.current.devices]}))


async def bench_rss(settle_s: float = 3.0) -> dict:
    from p2pnode.operator import BootstrapNode

    tmp = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    c = NodeConfig(home=tmp)
    c.net = NetConfig(listen=[LOOP])
    ident = Identity.generate()
    ident.save(c.key_file)
    out = {}
    async with BootstrapNode.start(c, identity=ident) as boot:
        seed = boot.addrs()[0]
        for role in ("provider", "light"):
            proc = await trio.run_process([sys.executable, __file__, "--child", role, "--seed", seed,
                                           "--settle", str(settle_s)], capture_stdout=True, capture_stderr=True)
            line = proc.stdout.decode().strip().splitlines()[-1]
            out[role] = json.loads(line)
    return {"idle_rss_provider_mib": out["provider"]["rss_mib"], "idle_rss_light_client_mib": out["light"]["rss_mib"],
            "provider_torch_loaded": out["provider"]["torch_loaded"],
            "light_client_torch_loaded": out["light"]["torch_loaded"]}


async def main(args) -> None:
    import logging

    import libp2p  # noqa: F401

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if args.child == "prop":
        await _prop_child(args.seed, args.start_at, args.slot, args.nodes, args.publishes, args.gap)
        return
    if args.child in ("bulk-sink", "tcp-sink"):
        fn = _bulk_sink_child if args.child == "bulk-sink" else _tcp_sink_child
        if args.profile:
            fn = _profiled(fn, args.profile)
        await fn(args.bulk_mib, args.read_size)
        return
    if args.child:
        await _child(args.child, args.seed, args.settle)
        return
    results: dict = {}
    if args.only == "bulk":
        results.update(await bench_streams(args.bulk_mib, write_size=args.write_size))
        results.update(await bench_bulk_processes(args.bulk_mib, args.read_size, args.profile, args.write_size))
    else:
        if args.only != "propagation":
            results.update(await bench_connect())
            results.update(await bench_streams(args.bulk_mib, write_size=args.write_size))
            results.update(await bench_bulk_processes(args.bulk_mib, args.read_size, write_size=args.write_size))
        results.update(await bench_propagation(args.nodes))
        results.update(await bench_propagation_processes(args.nodes))
        if args.only != "propagation":
            results.update(await bench_rss())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for k, v in results.items():
            print(f"{k:32} {v:.3f}" if isinstance(v, float) else f"{k:32} {v}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--bulk-mib", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=["provider", "light", "prop", "bulk-sink", "tcp-sink"])
    p.add_argument("--only", choices=["propagation", "bulk"], help="run only the propagation or the bulk figures")
    p.add_argument("--read-size", type=int, default=1 << 20, help="bytes per read in the two-process bulk sinks")
    p.add_argument("--write-size", type=int, default=STREAM_WRITE,
                   help="bytes per libp2p stream write in the bulk figures (default: as FramedStream writes)")
    p.add_argument("--profile", default="", help="--only bulk: cProfile the two-process sender and sink")
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--slot", type=int, default=0)
    p.add_argument("--publishes", type=int, default=3)
    p.add_argument("--gap", type=float, default=0.4)
    p.add_argument("--seed", default="")
    p.add_argument("--settle", type=float, default=3.0)
    trio.run(main, p.parse_args())
