"""The sandbox worker: ``python -m p2pnode.compute.worker [--warm]``. Never imported by the node itself.

Started by :mod:`p2pnode.compute.sandbox` with an empty environment (and inside ``unshare --net
--map-root-user`` where the kernel allows), it imports torch first when ``--warm`` (the seconds-long part of
start-up) and then serves tasks from stdin one at a time, each in a **forked child**: the child applies the job's
limits to itself (working directory, rlimits, environment), runs one registered job kind, writes msgpack frames
(progress, then one result) to stdout and exits; the worker reports the child's exit and is ready for the next.
A job never runs in the worker itself, so nothing a job does survives it, and each job starts in milliseconds
from a copy of a process that has torch loaded and has run no job code.

Frames from the job: ``{"progress": f}``, ``{"part": [index, file, size, upto]}`` (the first `upto` bytes of
output `index`, in its file of `size` bytes, are final), then the result. Frames from the worker itself:
``{"ready": True}`` at start; ``{"child": pid}`` when a job's process exists;
``{"exited": code, "ready": True}`` when it is gone (code as ``subprocess`` reports it: -N for signal N).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import sys
import time
import traceback

import msgpack

from p2pnode.compute.mapped import map_file, new_mapped_file

MAX_TASK = 16 << 20


def write_frame(obj: dict) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    n, prefix = len(data), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        prefix.append(b | 0x80 if n else b)
        if not n:
            break
    os.write(1, bytes(prefix) + data) if len(data) < 65536 else _write_all(bytes(prefix) + data)


def _write_all(buf: bytes) -> None:
    view = memoryview(buf)
    while view:
        view = view[os.write(1, view):]


def _read_exact(n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(0, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def read_frame() -> dict:
    value, shift = 0, 0
    for _ in range(5):
        b = _read_exact(1)[0]
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if value > MAX_TASK:
        raise ValueError("task frame too large")
    return msgpack.unpackb(_read_exact(value), raw=False)


def vm_size() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def apply_limits(task: dict) -> None:
    lim = task["limits"]
    os.chdir(task["dir"])
    keep = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}
    os.environ.clear()
    os.environ.update(keep, TMPDIR=task["dir"], HOME=task["dir"])
    used = resource.getrusage(resource.RUSAGE_SELF)
    if lim.get("cpu_s"):
        cpu = int(used.ru_utime + used.ru_stime + lim["cpu_s"]) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if lim.get("nofile"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    if lim.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize"], lim["fsize"]))
    if lim.get("mem") and not task["device"].startswith("cuda"):  # an address-space cap breaks CUDA's mappings
        cap = vm_size() + lim["mem"]
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


class OutputFiles:
    """The allocator a runner writes large outputs into (``jobs.Outputs``): each buffer is a new file in the job's
    directory, mapped shared, which the node maps in turn, so the result is never copied on its way out; and
    :meth:`ready` tells the node which leading bytes of one are final, so it can send them during the job."""

    def __init__(self) -> None:
        self.files: list[tuple[str, memoryview]] = []
        self.reported: dict[int, int] = {}  # output index -> bytes reported final

    def __call__(self, nbytes: int) -> memoryview:
        name = f"out_{len(self.files)}"
        view = new_mapped_file(name, nbytes)
        self.files.append((name, view))
        return view

    def ready(self, index: int, upto: int) -> None:
        """Bytes [0, upto) of the index-th buffer are final, and that buffer is the runner's output `index`."""
        name, view = self.files[index]
        if not self.reported.get(index, 0) <= upto <= len(view):
            raise ValueError(f"output {index}: {upto} bytes final after {self.reported.get(index, 0)} of {len(view)}")
        self.reported[index] = upto
        write_frame({"part": [index, name, len(view), upto]})

    def name_of(self, out) -> str:
        """The file holding `out`: its own if the runner allocated it here, else a new one it is copied into."""
        for name, view in self.files:
            if out is view:
                return name
        data = memoryview(out).cast("B")
        self(len(data))[:] = data
        return self.files[-1][0]

    def names(self, outputs: list) -> list[str]:
        names = [self.name_of(o) for o in outputs]
        for index in self.reported:
            if index >= len(names) or names[index] != self.files[index][0]:
                raise RuntimeError(f"the runner reported part of output {index} but returned another buffer")
        return names


def run_job(task: dict) -> dict:
    from p2pnode.compute import jobs
    from p2pnode.errors import ProtocolError
    from p2pnode.wire import unpack

    if task.get("threads"):
        import torch

        torch.set_num_threads(task["threads"])
    try:
        spec = jobs.JobSpec.from_wire(unpack(task["spec"], max_size=MAX_TASK))
        inputs = [map_file(name, private=True) for name in task["inputs"]]  # no copy
        t0 = time.perf_counter()
        out = OutputFiles()
        outputs = jobs.run(spec, inputs, task["device"], lambda f: write_frame({"progress": float(f)}), alloc=out)
        names = out.names(outputs)
        seconds = time.perf_counter() - t0
    except ProtocolError as exc:
        return {"ok": False, "error": "bad_input", "message": f"{type(exc).__name__}: {exc}"[:500]}
    except MemoryError:
        return {"ok": False, "error": "oom", "message": "out of memory (limit reached)"}
    except OSError as exc:  # mapping an input or an output under the address-space cap, or a full scratch disk
        if exc.errno in (errno.ENOMEM, errno.ENOSPC):
            return {"ok": False, "error": "oom", "message": f"out of memory or scratch space: {exc}"[:500]}
        raise
    except RuntimeError as exc:
        text = str(exc)
        kind = "oom" if any(w in text.lower() for w in ("alloc", "out of memory", "memory")) else "crashed"
        return {"ok": False, "error": kind, "message": text[:500]}
    return {"ok": True, "outputs": names, "seconds": seconds}


def netprobe(task: dict) -> dict:
    """Self-check of isolation: can this child reach a listener on the host's loopback?"""
    try:
        with socket.create_connection((task["host"], task["port"]), timeout=2):
            return {"ok": True, "connected": True}
    except OSError as exc:
        return {"ok": True, "connected": False, "message": str(exc)[:200]}


def die_with_parent(interval_s: float = 0.5) -> None:
    """A job must not outlive its node: a SIGKILLed provider would otherwise leave its busy worker computing (it
    reads its pipe only between jobs). PR_SET_PDEATHSIG cannot be used: trio starts processes from a cached
    thread and that signal fires when the *thread* exits. So a daemon thread in this child (the node itself stays
    thread-free) exits the process once it is re-parented."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(task: dict) -> None:
    """In the job's own process: limits, the task, one result frame."""
    try:
        apply_limits(task)
        result = netprobe(task) if task.get("task") == "netprobe" else run_job(task)
    except Exception as exc:  # anything else is reported, typed as a crash, never left silent
        result = {"ok": False, "error": "crashed", "message": f"{type(exc).__name__}: {exc}"[:500],
                  "trace": traceback.format_exc()[-2000:]}
    write_frame(result)


def main() -> int:
    die_with_parent()
    if "--warm" in sys.argv:
        import torch  # noqa: F401  (the expensive part of start-up, done before a job is waiting)

        import p2pnode.compute.jobs  # noqa: F401
    write_frame({"ready": True})
    while True:
        try:
            task = read_frame()
        except EOFError:
            return 0
        go_r, go_w = os.pipe()  # the child writes nothing before the worker's {"child"} frame is out
        pid = os.fork()
        if pid == 0:  # the job's process: never returns into this loop
            code = 1
            try:
                os.close(go_w)
                os.setpgid(0, 0)  # its own group, so whatever it leaves behind can be killed with it
                os.read(go_r, 1)
                os.close(go_r)
                die_with_parent()  # this worker, which exits with the node
                serve(task)
                code = 0
            finally:
                os._exit(code)
        os.close(go_r)
        write_frame({"child": pid})
        os.write(go_w, b"1")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # anything the job started
        except (ProcessLookupError, PermissionError):
            pass
        write_frame({"exited": os.waitstatus_to_exitcode(status), "ready": True})


if __name__ == "__main__":
    sys.exit(main())
