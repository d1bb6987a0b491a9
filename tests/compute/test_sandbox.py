"""Sandbox: real child processes. Jobs over their time or memory are killed and reported; bad input is a typed
result; with network isolation a job cannot reach a listener on the host's loopback."""

import mmap
import os
import subprocess
import sys

import pytest
import trio

from p2pnode.compute import jobs as J
from p2pnode.compute import sandbox as S
from p2pnode.compute.jobs import JobSpec
from p2pnode.compute.jobs.matmul import MatmulSpec, seeded_inputs
from p2pnode.compute.mapped import map_file, new_mapped_file

pytestmark = pytest.mark.timeout(120)


def seeded(n, batch=1):
    return JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=batch, m=n, k=n, n=n, source="seed", seed=b"\1" * 32))


async def test_pool_runs_jobs_and_reports_each_failure_typed():
    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        ok = await pool.run_job(seeded(32), [])
        assert ok.status == "ok" and len(ok.outputs[0]) == 32 * 32 * 4
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


async def test_inputs_and_outputs_cross_the_boundary_mapped_not_copied():
    spec = MatmulSpec(dtype="fp32", batch=2, m=64, k=48, n=32, source="seed", seed=b"\5" * 32)
    a, b = seeded_inputs(spec)
    job = JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=2, m=64, k=48, n=32), [a, b])
    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        with S.JobFiles(len(a) + len(b)) as files:
            for data in (a, b):  # as the provider does: received straight into the job's files
                files.new_input(len(data))[:] = data
            assert oct(files.path.stat().st_mode & 0o777) == "0o700"
            res = await pool.run_job(job, files)
            assert res.ok, res.message
            # the child's result is the file it wrote, mapped by the node: no copy was made on the way out
            (out,) = res.outputs
            assert isinstance(out, memoryview) and isinstance(out.obj, mmap.mmap) and out.readonly
            # the child's view of the inputs was private: they are unchanged, byte for byte
            assert bytes(files.inputs[0]) == a and bytes(files.inputs[1]) == b
            path = files.path
        assert not path.exists()  # the caller's close removed the directory...
        assert J.verify(job, [a, b], [out]).ok  # ...and the result is still readable and correct
    assert list(S.scratch_root(0).glob(f"{S.SCRATCH_PREFIX}{os.getpid()}-*")) == []  # nothing left behind


def test_private_mapping_does_not_write_through(tmp_path):
    view = new_mapped_file(tmp_path / "f", 4096)
    view[:4] = b"abcd"
    private = map_file(tmp_path / "f", private=True)
    private[:4] = b"WXYZ"
    assert bytes(map_file(tmp_path / "f")[:4]) == b"abcd" and bytes(private[:4]) == b"WXYZ"
    with pytest.raises(FileExistsError):  # never reuses (or follows) an existing name
        new_mapped_file(tmp_path / "f", 10)


def test_sweep_removes_only_dirs_of_dead_nodes(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "SHM", tmp_path / "shm")  # keep the sweep to this test's directories
    monkeypatch.setattr(S.tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"{S.SCRATCH_PREFIX}{dead_pid}-abc"
    alive = tmp_path / f"{S.SCRATCH_PREFIX}{os.getppid()}-def"
    mine = tmp_path / f"{S.SCRATCH_PREFIX}{os.getpid()}-ghi"
    other = tmp_path / "something-else"
    for d in (dead, alive, mine, other):
        d.mkdir()
        (d / "in_0").write_bytes(b"x")
    assert S.sweep_stale_job_dirs() == 1
    assert not dead.exists() and alive.exists() and mine.exists() and other.exists()


async def test_one_warm_worker_serves_job_after_job_each_in_its_own_process():
    import signal

    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        await pool.warm()
        ready = pool._ready["cpu"]
        worker = ready[1].receive_nowait()
        ready[0].send_nowait(worker)
        for _ in range(3):  # back to back, no torch import in between: the same worker forks each job
            with trio.fail_after(20):
                res = await pool.run_job(seeded(16), [])
            assert res.ok and worker.last_exit == 0 and worker.proc.returncode is None
        # a job's process killed from outside is that job's typed failure; the worker is unharmed and serves on
        seen = []

        async def kill_the_job():
            while not worker.child:
                await trio.sleep(0.01)
            seen.append(worker.child)
            os.kill(worker.child, signal.SIGKILL)

        async with trio.open_nursery() as n:
            n.start_soon(kill_the_job)
            res = await pool.run_job(seeded(1024, batch=64), [], limits=S.Limits(wall_s=60))
        assert res.status == "crashed" and "-9" in res.message, (res.status, res.message)
        assert seen and seen[0] != worker.proc.pid  # the job ran in a child, not in the worker
        again = await pool.run_job(seeded(16), [])
        assert again.ok and worker.proc.returncode is None and ready[1].receive_nowait() is worker


async def test_a_large_output_is_reported_final_part_by_part_while_the_job_runs():
    """The node hears of each finished leading part of C (so it can send it during the job): parts grow in order,
    the bytes it could read at that moment are the final ones, and a small output is one part sent with the result."""
    job = seeded(1024)  # 4 MiB of C: two parts of 512 rows
    seen: list[tuple[S.OutputPart, bytes]] = []

    def on_part(part: S.OutputPart) -> None:  # read what the part says is final, right then, as the node would
        seen.append((part, bytes(map_file(part.path)[:part.upto])))

    async with S.WorkerPool(["cpu"], per_device=1) as pool:
        res = await pool.run_job(job, [], on_part=on_part)
        assert res.ok, res.message
        (out,) = res.outputs
        assert [(p.index, p.size, p.upto) for p, _ in seen] == [(0, len(out), len(out) // 2)]
        assert seen[0][0].path.name == "out_0" and seen[0][1] == bytes(out[:len(out) // 2])
        assert J.verify(job, [], [out]).ok
        small: list = []
        assert (await pool.run_job(seeded(256), [], on_part=small.append)).ok and small == []


def test_part_frames_are_checked_before_the_node_reads_a_file(tmp_path):
    """What a job reports about its parts is held to: names inside its directory, sizes that only grow, and a
    result that returns the very files it reported."""
    heard: list = []
    parts = S._Parts(tmp_path, heard.append)
    parts([0, "out_0", 100, 40])
    parts([0, "out_0", 100, 90])
    assert [p.upto for p in heard] == [40, 90] and heard[0].path == tmp_path / "out_0" and parts.check(["out_0"]) == ""
    assert "another file" in parts.check(["out_1"]) and "another file" in parts.check([])
    for bad in ([0, "out_0", 100, 80],  # shrinks
                [0, "out_1", 100, 95],  # another file for the same output
                [0, "out_0", 200, 150]):  # another size
        p = S._Parts(tmp_path, heard.append)
        p([0, "out_0", 100, 90])
        p(bad)
        assert "inconsistent" in p.check(["out_0"])
    for bad in ([0, "../x", 10, 5], [0, ".hidden", 10, 5], [16, "out_0", 10, 5], [0, "out_0", 10, 11],
                [0, "out_0", 10, 0], ["0", "out_0", 10, 5], [0, "out_0", 10], "junk", None):
        p = S._Parts(tmp_path, heard.append)
        before = len(heard)
        p(bad)
        assert p.check(["out_0"]) and len(heard) == before  # refused, and the node was not told
