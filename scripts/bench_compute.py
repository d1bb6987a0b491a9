"""Figures for issue 4 (verified compute), each as a ratio to a baseline measured in the same run.

1. attestation verifier time / prover time at the CPU challenge size, plus the cost model for GPU sizes;
2. Freivalds (matmul verifier) time / matmul time by n;
3. sandbox start-up per job: cold (spawn + torch import) and from the warm worker, back to back — goal <= 300 ms;
4. a job's time inside the node (warm pool, wall clock) / the same torch work run directly — goal <= 1.05 for
   jobs >= 1 s.

Usage: .venv/bin/python scripts/bench_compute.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import trio

from p2pnode.compute import attest as A
from p2pnode.compute import jobs as J
from p2pnode.compute import sandbox as S
from p2pnode.compute.jobs.matmul import MatmulSpec, seeded_inputs


def bench_attest() -> None:
    # Claim half the calibrated speed (the deadline then has room on a shared machine, as `attest --self` does)
    # but size the challenge for ~3 s at the calibrated speed: the verifier's cost is fixed by n, b and the
    # number of openings, so the ratio is quoted for a 3 s prover run.
    speed = A.calibrate("cpu")
    claim = speed / 2
    params = A.plan_challenge(speed, target_s=3.0)
    out = trio.run(lambda: A.attest_self("cpu", claimed_tflops=claim, params=params))
    # time the verifier alone on the same challenge, outside the protocol
    seed = bytes(32)
    ch = A.AttestChallenge(seed=seed, n=params.n, b=params.b, steps=params.steps, mats=params.mats,
                           opened=params.opened, claimed_tflops=claim, device_index=0, provider="", issued_at=0,
                           deadline_s=0)
    p = A.Prover("cpu")
    p.warm()
    t0 = time.perf_counter()
    p.setup(ch)
    fps: list[int] = []
    p.run(lambda t, fp: fps.append(fp))
    prover_s = time.perf_counter() - t0
    opened = A.choose_openings(ch.steps, ch.opened)
    openings = {t: p.opening(t) for t in opened}
    # The verifier is timed 5 times, fresh each time (W built again), and the best run kept: on a shared 2-core
    # machine single runs of this ~0.1 s task vary 10x with the neighbours' load; the 3 s prover varies far less.
    runs = []
    for _ in range(5):
        time.sleep(0.2)  # let torch's and BLAS's worker threads go idle before timing numpy
        t0 = time.perf_counter()
        v = A.ChainVerifier(ch, fps)
        gen_t0 = time.perf_counter()
        for l in sorted({t % ch.mats for t in opened}):
            v.w(l)
        gen_s = time.perf_counter() - gen_t0
        for t in opened:
            assert v.check_step(t, *openings[t]).passed
        runs.append((time.perf_counter() - t0, gen_s))
    verifier_s, gen_s = min(runs)
    per_open = (verifier_s - gen_s) / len(opened)
    print(f"[attest] self-attestation: passed={out.attestation.passed} {out.attestation.tflops:.4f} TFLOPS "
          f"(claim {claim:.4f}; {out.attestation.reason}), n={params.n} b={params.b} steps={params.steps} "
          f"opened={params.opened}")
    print(f"[attest] verifier runs (s): {', '.join(f'{r[0]:.3f}' for r in runs)} -> best {verifier_s:.3f}")
    print(f"[attest] prover {prover_s:.3f} s, verifier {verifier_s:.3f} s (W generation {gen_s:.3f} s, "
          f"{per_open * 1e3:.1f} ms per opened step) -> verifier/prover = {verifier_s / prover_s:.3f} (goal <= 0.10)")
    # cost model: V = L' * g * n^2 + s * (c * (n^2 + 10 n b)); P = steps * 2 n^2 b / F
    g = gen_s / max(1, len({t % ch.mats for t in opened})) / params.n**2
    c = per_open / (params.n**2 + 10 * params.n * params.b)
    for n, b, F in [(8192, 2048, 50.0), (8192, 2048, 400.0)]:
        gp = A.plan_challenge(F, n=n, b=b, target_s=3.0)
        vs = min(gp.mats, gp.opened) * g * n * n + gp.opened * c * (n * n + 10 * n * b)
        print(f"[attest] GPU model n={n} b={b} {F:g} TFLOPS: {gp.steps} steps, prover {gp.expected_s(F):.2f} s, "
              f"verifier ~{vs:.2f} s on this CPU -> ratio ~{vs / gp.expected_s(F):.2f} "
              f"(V = min(L,s)*{g * 1e9:.2f}ns*n^2 + s*{c * 1e9:.2f}ns*(n^2+10nb); P = steps*2n^2b/F)")


def bench_freivalds() -> None:
    rng = np.random.default_rng(0)
    for n in (256, 512, 1024, 2048):
        spec = MatmulSpec(dtype="fp32", batch=1, m=n, k=n, n=n, source="seed", seed=b"\2" * 32, rounds=2)
        a_raw, b_raw = seeded_inputs(spec)
        a = torch.frombuffer(bytearray(a_raw), dtype=torch.float32).reshape(1, n, n)
        b = torch.frombuffer(bytearray(b_raw), dtype=torch.float32).reshape(1, n, n)
        torch.bmm(a, b)
        t0 = time.perf_counter()
        c = torch.bmm(a, b)
        mm_s = time.perf_counter() - t0
        out = c.numpy().astype("<f4").tobytes()
        t0 = time.perf_counter()
        ok = J.KINDS["matmul"].verifier()(spec, [], [out], rng).ok  # the renter's check: regenerates A, B from the seed
        fv_s = time.perf_counter() - t0
        print(f"[freivalds] n={n}: matmul {mm_s * 1e3:.1f} ms, Freivalds 2 rounds {fv_s * 1e3:.1f} ms "
              f"(incl. regenerating A and B) -> ratio {fv_s / mm_s:.2f} ok={ok}")


async def bench_sandbox() -> None:
    small = J.JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=1, m=8, k=8, n=8, source="seed", seed=b"\3" * 32))
    colds = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = await S.run_job(small, [])
        colds.append(time.perf_counter() - t0)
        assert r.ok
    print(f"[sandbox] cold start-up (spawn{' + unshare' if S.isolation_available() else ''} + torch import + "
          f"job): median {sorted(colds)[1] * 1e3:.0f} ms")
    warms = []
    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        await pool.warm()
        for _ in range(20):  # back to back: each job forked from the one warm worker, no waiting for an import
            t0 = time.perf_counter()
            r = await pool.run_job(small, [])
            warms.append(time.perf_counter() - t0)
            assert r.ok
        print(f"[sandbox] start-up + tiny job, 20 back to back on one warm worker: median "
              f"{statistics.median(warms) * 1e3:.1f} ms, max {max(warms) * 1e3:.1f} ms (goal <= 300 ms)")
        # node vs direct for a >= 1 s job
        n, batch = 2048, 8
        spec = MatmulSpec(dtype="fp32", batch=batch, m=n, k=n, n=n, source="seed", seed=b"\4" * 32)
        a_raw, b_raw = seeded_inputs(spec)
        job = J.JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=batch, m=n, k=n, n=n), [a_raw, b_raw])
        directs, nodes, placed, inside = [], [], [], []
        for _ in range(4):
            t0 = time.perf_counter()
            J.run(job, [a_raw, b_raw])  # the same runner, in this process: hash check, bmm into a fresh buffer
            directs.append(time.perf_counter() - t0)
            # as the provider runs it: inputs were received from the network straight into the job's files
            with S.JobFiles(len(a_raw) + len(b_raw)) as files:
                files.add_input(a_raw)
                files.add_input(b_raw)
                await pool.warm()
                t0 = time.perf_counter()
                r = await pool.run_job(job, files, limits=S.Limits(wall_s=600))
                nodes.append(time.perf_counter() - t0)
            assert r.ok, r.message
            inside.append(r.seconds)
            del r
            # inputs handed over as bytes: the node copies them into the job's files first
            await pool.warm()
            t0 = time.perf_counter()
            r = await pool.run_job(job, [a_raw, b_raw], limits=S.Limits(wall_s=600))
            placed.append(time.perf_counter() - t0)
            assert r.ok, r.message
            del r
        d, nd, pl = min(directs), min(nodes), min(placed)
        print(f"[sandbox] {batch}x{n}^3 fp32 job (best of 4): direct {d:.2f} s, inside the node {nd:.2f} s -> ratio "
              f"{nd / d:.3f} (goal <= 1.05; inputs already received into the job's files, as the provider does); "
              f"runner time in the child {min(inside):.2f} s")
        print(f"[sandbox]   with the {2 * batch * n * n * 4 >> 20} MiB of inputs handed over as bytes (one copy into "
              f"the job's files): {pl:.2f} s -> ratio {pl / d:.3f}")


if __name__ == "__main__":
    import sys

    if "--sandbox-only" not in sys.argv:
        bench_attest()
        bench_freivalds()
    trio.run(bench_sandbox)
