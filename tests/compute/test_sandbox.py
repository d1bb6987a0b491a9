"""Sandbox: real child processes. Jobs over their time or memory are killed and reported; bad input is a typed
result; with network isolation a job cannot reach a listener on the host's loopback."""

import pytest
import trio

from p2pnode.compute import sandbox as S
from p2pnode.compute.jobs import JobSpec
from p2pnode.compute.jobs.matmul import MatmulSpec

pytestmark = pytest.mark.timeout(120)


def seeded(n, batch=1):
    return JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=batch, m=n, k=n, n=n, source="seed", seed=b"\1" * 32))


async def test_pool_runs_jobs_and_reports_each_failure_typed():
    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        ok = await pool.run_job(seeded(32), [])
        assert ok.status == "ok" and len(ok.outputs[0]) == 32 * 32 * 4
        from p2pnode.compute import jobs as J
        assert J.verify(seeded(32), [], ok.outputs).ok
        # time exceeded: a big seeded GEMM batch under a 0.3 s wall clock
        slow = await pool.run_job(seeded(1024, batch=64), [], limits=S.Limits(wall_s=0.3))
        assert slow.status == "timeout" and "wall-clock" in slow.message
        # memory exceeded: 3 x 64 MiB of matrices under a 32 MiB address-space allowance
        big = await pool.run_job(seeded(4096), [], limits=S.Limits(mem_bytes=32 << 20))
        assert big.status == "oom", (big.status, big.message)
        # bad input: blobs that do not match the spec's hashes
        bad = await pool.run_job(JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=1, m=2, k=2, n=2),
                                              [b"x" * 16, b"y" * 16]), [b"z" * 16, b"y" * 16])
        assert bad.status == "bad_input"
        # ...and the pool still serves afterwards
        again = await pool.run_job(seeded(16), [])
        assert again.ok


async def test_cpu_time_limit_kills():
    res = await S.run_job(seeded(1024, batch=64), [], limits=S.Limits(cpu_s=1, wall_s=60, threads=1))
    assert res.status == "cpu_exceeded", (res.status, res.message)


async def test_no_network_when_isolated():
    if not S.isolation_available():
        pytest.skip("unshare --net --map-root-user is not permitted on this kernel")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as n:
        async def accept_forever():
            while True:
                s = await listeners[0].accept()
                await s.aclose()
        n.start_soon(accept_forever)
        isolated = await S.probe_network("127.0.0.1", port)
        control = await S.probe_network("127.0.0.1", port, isolate=False)  # proves the probe can connect
        n.cancel_scope.cancel()
    await listeners[0].aclose()
    assert isolated.isolated and isolated.outputs == [b"0"]
    assert control.outputs == [b"1"]


def test_child_sees_only_its_gpu_as_cuda0():
    # No GPU here: this checks the mapping the worker is started with, not CUDA itself.
    assert S.child_device("cpu") == ("", "cpu")
    assert S.child_device("cuda:1") == ("1", "cuda:0")  # CUDA renumbers the one visible GPU as 0
    assert S.child_device("cuda") == ("0", "cuda:0")
    for bad in ("cuda:x", "mps", "cuda:-1"):
        with pytest.raises(ValueError):
            S.child_device(bad)


async def test_unknown_device_is_a_typed_result():
    res = await S.run_job(seeded(8), [], device="tpu:0")
    assert res.status == "bad_input" and "tpu:0" in res.message
