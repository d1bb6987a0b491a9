"""Run one job per child process, isolated and limited, and always come back with a typed :class:`JobResult`.

Each job gets: an empty environment, a private 0700 temp directory as its working directory, rlimits (CPU time,
open files, file size, address space on CPU devices), a wall-clock timeout enforced by the node (kill), only its
assigned GPU (``CUDA_VISIBLE_DEVICES``), and no network: the worker starts inside ``unshare --net
--map-root-user`` when :func:`isolation_available` (probed once at start) says the kernel allows unprivileged
user namespaces; otherwise jobs run with network access and ``p2pnode devices`` says so.

Start-up cost is torch's import (~2 s here), so :class:`WorkerPool` keeps a warm worker per device that has
imported torch once and forks a fresh process for each job (~27 ms from task to result for a tiny job); a worker
is replaced only when a timeout or cancel kills it. Inputs and outputs move as files in the job's private
directory (:class:`JobFiles`, on /dev/shm when it has room) that both sides map, so a blob is never copied between
node and job; progress, output parts (so the node can send a large output while the rest is computed) and the
result come as msgpack frames on the worker's stdout. Any failure — crash, OOM,
timeout, bad input — is a :class:`JobResult`, so the node keeps serving.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..wire import FrameError, FramedStream, MalformedMessage, pack, unpack
from .jobs import Data, JobSpec
from .mapped import map_file, new_mapped_file

STATUSES = ("ok", "timeout", "oom", "cpu_exceeded", "crashed", "bad_input")
READY_TIMEOUT_S = 120.0
MAX_RESULT_FRAME = 1 << 20


@functools.lru_cache(maxsize=1)
def isolation_available() -> bool:
    """Whether `unshare --net --map-root-user` works for this user on this kernel (probed once)."""
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "--net", "--map-root-user", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass(frozen=True)
class Limits:
    """What one job may use; 0 means no limit for that resource."""

    wall_s: float = 3600.0
    cpu_s: int = 0
    mem_bytes: int = 0  # address-space growth allowed during the job (CPU devices only)
    nofile: int = 256
    fsize_bytes: int = 4 << 30
    threads: int = 0  # torch intra-op threads; 0 = torch's default


@dataclass(frozen=True)
class OutputPart:
    """The job says bytes [0, upto) of its output `index` (a file of `size` bytes at `path`) are final: the node
    may read and send them while the job computes the rest. The job's later result names the same file."""

    index: int
    path: Path
    size: int
    upto: int


PartCallback = Callable[[OutputPart], Any]


@dataclass
class JobResult:
    status: str  # one of STATUSES
    outputs: list[Data] = field(default_factory=list)  # read-only views of the files the job wrote
    message: str = ""
    seconds: float = 0.0  # time inside the job's runner (ok only)
    wall_s: float = 0.0  # from submission to result, as the node saw it
    isolated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def child_device(device: str) -> tuple[str, str]:
    """(CUDA_VISIBLE_DEVICES, torch device inside the child) for a node-side device name.

    The child sees only its assigned GPU, which CUDA then renumbers as ``cuda:0``: passing ``cuda:1`` through
    unchanged would name a device the child cannot see. ``cpu`` hides every GPU (an empty list).
    """
    if device == "cpu":
        return "", "cpu"
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise ValueError(f"device {device!r} is not cpu or cuda[:N]")
    return str(int(index or "0")), "cuda:0"


class _pipe_adapter:
    """The read/write shape FramedStream wants, over trio's process pipes."""

    def __init__(self, recv: Any, send: Any = None) -> None:
        self._r, self._w = recv, send

    async def read(self, n: int) -> bytes:
        return await self._r.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self._w.send_all(data)


class Worker:
    """One child process, ready for exactly one task."""

    def __init__(self, proc: trio.Process, isolated: bool, device: str) -> None:
        self.proc = proc
        self.isolated = isolated
        self.device = device
        self.frames = FramedStream(_pipe_adapter(proc.stdout, proc.stdin))
        self.stderr = bytearray()
        self.child = 0  # the running job's process (the worker forks one per task)
        self.reusable = False  # the last task ended with the worker ready for another
        self.last_exit: int | None = None  # how the last job's process (or the worker itself) ended

    @classmethod
    async def start(cls, nursery: trio.Nursery, device: str = "cpu", *, warm: bool = True,
                    isolate: bool | None = None) -> "Worker":
        isolate = isolation_available() if isolate is None else isolate
        cmd = [sys.executable, "-m", "p2pnode.compute.worker"] + (["--warm"] if warm else [])
        if isolate:
            cmd = [shutil.which("unshare") or "unshare", "--net", "--map-root-user"] + cmd
        visible, _ = child_device(device)
        env = {"CUDA_VISIBLE_DEVICES": visible}
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, env=env, cwd="/",
                                                start_new_session=True)
        w = cls(proc, isolate, device)
        nursery.start_soon(w._drain_stderr)
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                hello = unpack(await w.frames.receive(), max_size=1024)
            if not isinstance(hello, dict) or not hello.get("ready"):
                raise MalformedMessage("worker did not say ready")
        except BaseException:
            await w.kill()
            raise
        return w

    async def _drain_stderr(self) -> None:
        """Keep the child from blocking on a full stderr pipe; remember the tail for crash reports."""
        try:
            while chunk := await self.proc.stderr.receive_some(65536):
                self.stderr = (self.stderr + chunk)[-4096:]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def kill(self) -> None:
        """The job's process group and the worker's, then reap the worker."""
        self.reusable = False
        with trio.CancelScope(shield=True):
            for group in (self.child, self.proc.pid if self.proc.returncode is None else 0):
                if group:
                    try:
                        os.killpg(group, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            with trio.move_on_after(10):
                await self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    await pipe.aclose()

    async def execute(self, task: dict[str, Any], wall_s: float, progress: Callable[[float], Any] | None,
                      on_part: Callable[[Any], Any] | None = None) -> tuple[str, dict[str, Any] | None]:
        """Send the task, pump progress and part frames until the worker reports the job's process gone: ('done',
        result), (failure status, None) or ('timeout', None). Afterwards :attr:`reusable` says if it can take
        another. `on_part` gets each part frame's raw list (checked by the caller, which knows the directory)."""
        self.reusable, self.child, self.stderr = False, 0, bytearray()
        await self.proc.stdin.send_all(_frame(pack(task)))
        result: dict[str, Any] | None = None
        with trio.move_on_after(wall_s):
            while True:
                try:
                    msg = unpack(await self.frames.receive(MAX_RESULT_FRAME), max_size=MAX_RESULT_FRAME)
                except (FrameError, MalformedMessage, trio.BrokenResourceError, trio.ClosedResourceError):
                    self.last_exit = await self._wait_exit()
                    return ("done", result) if result is not None else (self._exit_status(self.last_exit), None)
                if not isinstance(msg, dict):
                    return "crashed", {"message": "worker sent a malformed frame"}
                if "progress" in msg:
                    if progress is not None:
                        progress(float(msg["progress"]))
                elif "part" in msg:
                    if on_part is not None:
                        on_part(msg["part"])
                elif "child" in msg:
                    self.child = int(msg["child"])
                elif "exited" in msg:
                    self.child, self.last_exit = 0, int(msg["exited"])
                    self.reusable = bool(msg.get("ready"))
                    return ("done", result) if result is not None else (self._exit_status(self.last_exit), None)
                else:
                    result = msg
        return "timeout", None

    async def _wait_exit(self) -> int:
        with trio.move_on_after(5):
            return await self.proc.wait()
        await self.kill()
        return self.proc.returncode or -signal.SIGKILL

    @staticmethod
    def _exit_status(code: int) -> str:
        if code == -signal.SIGXCPU:
            return "cpu_exceeded"
        return "crashed"


def _frame(payload: bytes) -> bytes:
    from ..wire import frame

    return frame(payload)


SCRATCH_PREFIX = "p2pnode-job-"
SHM = Path("/dev/shm")


def scratch_root(expected_bytes: int) -> Path:
    """Where job directories go: /dev/shm (memory: writing a blob there is one copy, mapping it none) when it can
    hold the inputs and as much again for outputs, else the system temp directory (a container's /dev/shm is
    often 64 MiB)."""
    try:
        st = os.statvfs(SHM)
        if os.access(SHM, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= 2 * expected_bytes + (256 << 20):
            return SHM
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def sweep_stale_job_dirs() -> int:
    """Remove job directories left by node processes that no longer exist (a SIGKILLed node cannot clean up, and
    /dev/shm is memory until reboot); returns how many were removed."""
    removed = 0
    for root in {SHM, Path(tempfile.gettempdir())}:
        try:
            entries = list(root.glob(SCRATCH_PREFIX + "*"))
        except OSError:
            continue
        for d in entries:
            pid = d.name[len(SCRATCH_PREFIX):].partition("-")[0]
            try:
                mine = d.is_dir() and d.stat().st_uid == os.getuid()
            except OSError:
                continue
            if not pid.isdigit() or int(pid) == os.getpid() or not mine:
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            except PermissionError:
                pass  # alive, someone else's
    return removed


class JobFiles:
    """A job's private directory (0700): the node puts inputs here — receiving a blob straight into
    :meth:`new_input` — the child maps them and writes its outputs here, and the node maps those back. No blob is
    copied between the node and the child. Removed by :meth:`close`; views already taken stay valid."""

    def __init__(self, expected_bytes: int = 0) -> None:
        root = scratch_root(expected_bytes)
        self.path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))  # 0700
        self.names: list[str] = []
        self.inputs: list[memoryview] = []

    def new_input(self, size: int) -> memoryview:
        """A writable buffer of `size` bytes that becomes the next input."""
        name = f"in_{len(self.names)}"
        view = new_mapped_file(self.path / name, size)
        self.names.append(name)
        self.inputs.append(view)
        return view

    def add_input(self, data: Data) -> None:
        view = memoryview(data).cast("B")
        self.new_input(len(view))[:] = view

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "JobFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _job_files(inputs: list[Data] | JobFiles) -> tuple[JobFiles, bool]:
    """(the job's files, whether this call made them and so removes them)."""
    if isinstance(inputs, JobFiles):
        return inputs, False
    files = JobFiles(sum(len(memoryview(d).cast("B")) for d in inputs))
    try:
        for data in inputs:
            files.add_input(data)
    except BaseException:
        files.close()
        raise
    return files, True


class _Parts:
    """Checks the job's part frames before the node acts on them: a file in the job's directory, an index and
    sizes that only move forward; remembers them so the result can be held to them."""

    def __init__(self, workdir: Path, on_part: PartCallback | None) -> None:
        self.workdir = workdir
        self.on_part = on_part
        self.seen: dict[int, OutputPart] = {}
        self.error = ""

    def __call__(self, raw: Any) -> None:
        if self.error:
            return
        try:
            index, name, size, upto = raw
            if not (isinstance(index, int) and isinstance(size, int) and isinstance(upto, int)
                    and isinstance(name, str)):
                raise ValueError("types")
        except (TypeError, ValueError):
            self.error = "worker sent a malformed part frame"
            return
        before = self.seen.get(index)
        if not _safe_name(name) or not 0 <= index < 16 or not 0 < upto <= size or (
                before is not None and (before.path.name != name or before.size != size or upto < before.upto)):
            self.error = f"worker sent an inconsistent part frame for output {index}"
            return
        part = OutputPart(index, self.workdir / name, size, upto)
        self.seen[index] = part
        if self.on_part is not None:
            self.on_part(part)

    def check(self, names: list[Any]) -> str:
        """Why the result contradicts the parts sent, or ''."""
        if self.error:
            return self.error
        for index, part in self.seen.items():
            if index >= len(names) or names[index] != part.path.name:
                return f"the job reported part of output {index} but returned another file"
        return ""


def _safe_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".")


async def _run_on(worker: Worker, task: dict[str, Any], inputs: list[Data] | JobFiles, limits: Limits,
                  progress: Callable[[float], Any] | None, *, keep: bool = False,
                  on_part: PartCallback | None = None) -> JobResult:
    """One task on `worker`; the worker is killed afterwards unless `keep` and it is ready for another."""
    t0 = time.perf_counter()
    files, own = None, False
    try:
        try:
            files, own = _job_files(inputs)
        except OSError as exc:
            return JobResult("crashed", message=f"cannot place the inputs: {exc}", isolated=worker.isolated)
        workdir = files.path
        task = dict(task, dir=str(workdir), inputs=files.names, device=child_device(worker.device)[1],
                    limits={"cpu_s": limits.cpu_s, "nofile": limits.nofile, "fsize": limits.fsize_bytes,
                            "mem": limits.mem_bytes}, threads=limits.threads)
        parts = _Parts(workdir, on_part)
        status, msg = await worker.execute(task, limits.wall_s, progress, parts)
        wall = time.perf_counter() - t0
        if status == "timeout":
            return JobResult("timeout", message=f"killed after the {limits.wall_s:g} s wall-clock limit",
                             wall_s=wall, isolated=worker.isolated)
        if status != "done" or msg is None:
            code = worker.last_exit
            detail = bytes(worker.stderr[-300:]).decode(errors="replace").strip().splitlines()
            tail = f": {detail[-1]}" if detail else ""
            return JobResult(status, message=f"job process exited with {code}{tail}",
                             wall_s=wall, isolated=worker.isolated)
        if not msg.get("ok"):
            err = msg.get("error")
            return JobResult(err if err in STATUSES else "crashed", message=str(msg.get("message", ""))[:500],
                             wall_s=wall, isolated=worker.isolated)
        if "connected" in msg:  # the isolation probe
            return JobResult("ok", outputs=[b"1" if msg["connected"] else b"0"], message=msg.get("message", ""),
                             wall_s=wall, isolated=worker.isolated)
        names = msg.get("outputs", [])
        if not isinstance(names, list) or not all(map(_safe_name, names)):
            return JobResult("crashed", message="worker named an output outside its directory", wall_s=wall)
        if why := parts.check(names):
            return JobResult("crashed", message=why, wall_s=wall, isolated=worker.isolated)
        outputs = [map_file(workdir / name) for name in names]
        return JobResult("ok", outputs=outputs, seconds=float(msg.get("seconds", 0.0)), wall_s=wall,
                         isolated=worker.isolated)
    finally:
        if not (keep and worker.reusable):
            await worker.kill()
        if own and files is not None:
            files.close()  # a caller's JobFiles is the caller's to close


async def run_job(spec: JobSpec, inputs: list[Data] | JobFiles, device: str = "cpu", limits: Limits = Limits(),
                  progress: Callable[[float], Any] | None = None, *, isolate: bool | None = None,
                  on_part: PartCallback | None = None) -> JobResult:
    """One job in a freshly started (cold) worker; the node uses :class:`WorkerPool` for warm start-up."""
    try:
        child_device(device)
    except ValueError as exc:
        return JobResult("bad_input", message=str(exc))
    async with trio.open_nursery() as nursery:
        try:
            worker = await Worker.start(nursery, device, isolate=isolate)
        except (OSError, trio.TooSlowError, FrameError, MalformedMessage) as exc:
            return JobResult("crashed", message=f"worker did not start: {exc}")
        return await _run_on(worker, {"task": "job", "spec": spec.encode()}, inputs, limits, progress,
                             on_part=on_part)


async def probe_network(host: str, port: int, *, isolate: bool | None = None) -> JobResult:
    """Start a (cold, torch-free) worker and let it try to connect to host:port; outputs [b"1"] if it could."""
    async with trio.open_nursery() as nursery:
        worker = await Worker.start(nursery, "cpu", warm=False, isolate=isolate)
        return await _run_on(worker, {"task": "netprobe", "host": host, "port": port}, [], Limits(wall_s=10), None)


class WorkerPool:
    """Warm workers per device: `async with WorkerPool(["cpu"]) as pool: await pool.run_job(...)`.

    The pool's nursery owns every worker and spawner task, so leaving the block kills them all.
    """

    def __init__(self, devices: list[str] = ("cpu",), *, per_device: int = 1, isolate: bool | None = None) -> None:
        self.devices = list(devices)
        for d in self.devices:
            child_device(d)  # ValueError now, not a worker that can never start
        self.per_device = per_device
        self.isolate = isolation_available() if isolate is None else isolate
        self._ready: dict[str, tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]] = {}
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> "WorkerPool":
        sweep_stale_job_dirs()
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        for d in self.devices:
            self._ready[d] = trio.open_memory_channel(math.inf)
            for _ in range(self.per_device):
                self._nursery.start_soon(self._spawn, d)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        for send, recv in self._ready.values():
            while True:
                try:
                    w = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await w.kill()
        return await self._cm.__aexit__(*exc)

    async def _spawn(self, device: str) -> None:
        assert self._nursery is not None
        try:
            w = await Worker.start(self._nursery, device, isolate=self.isolate)
        except (OSError, trio.TooSlowError, FrameError, MalformedMessage):
            await trio.sleep(1.0)  # retry later; run_job falls back to waiting for the next spawn
            self._nursery.start_soon(self._spawn, device)
            return
        self._ready[device][0].send_nowait(w)

    def idle(self, device: str) -> int:
        """Workers of `device` waiting for a job (torch imported): a job given now starts in milliseconds."""
        return self._ready[device][1].statistics().current_buffer_used if device in self._ready else 0

    async def warm(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until every device has a ready worker (benchmarks and start-up)."""
        with trio.fail_after(timeout_s):
            for d in self.devices:
                w = await self._ready[d][1].receive()
                self._ready[d][0].send_nowait(w)

    async def run_job(self, spec: JobSpec, inputs: list[Data] | JobFiles, device: str = "cpu",
                      limits: Limits = Limits(), progress: Callable[[float], Any] | None = None, *,
                      on_part: PartCallback | None = None) -> JobResult:
        """Run in a fresh process forked from a warm worker for `device`, which then takes the next job;
        `on_part` hears of each output part the job finishes (see :class:`OutputPart`)."""
        if device not in self._ready or self._nursery is None:
            return JobResult("bad_input", message=f"device {device!r} is not served by this node")
        with trio.move_on_after(READY_TIMEOUT_S) as scope:
            worker = await self._ready[device][1].receive()
        if scope.cancelled_caught:
            return JobResult("crashed", message="no worker became ready")
        try:
            return await _run_on(worker, {"task": "job", "spec": spec.encode()}, inputs, limits, progress, keep=True,
                                 on_part=on_part)
        finally:
            if worker.reusable:  # the usual case: the job's process is gone, the worker waits for the next task
                self._ready[device][0].send_nowait(worker)
            else:  # killed (timeout, cancelled) or died: a new one imports torch, seconds of a core
                self._nursery.start_soon(self._spawn, device)
