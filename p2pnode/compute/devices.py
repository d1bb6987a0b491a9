"""What this machine can rent out: CUDA GPUs through torch, or one clearly labelled ``cpu`` device.

torch is imported inside :func:`detect_devices` only, so the renter and light client (which import ``p2pnode``
without torch) never pay for it. The CUDA branch is small and explicit; on a machine without CUDA the same
function returns exactly one ``cpu`` device whose memory is what the node allows jobs to use.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ..wire import Device


@dataclass(frozen=True)
class DeviceInfo:
    """One device as detected locally; more detail than the gossiped :class:`p2pnode.wire.Device`."""

    kind: str  # "cuda" | "cpu"
    index: int  # CUDA ordinal (what CUDA_VISIBLE_DEVICES selects); 0 for the cpu device
    name: str
    mem_bytes: int
    count: int = 1  # number of devices of this machine of the same kind (GPUs) or cores (cpu)
    compute_capability: str = ""  # "8.6" for CUDA devices, "" for cpu
    driver_version: str = ""  # NVIDIA driver version if known
    cuda_version: str = ""  # CUDA runtime torch was built against

    @property
    def torch_device(self) -> str:
        """The torch device string jobs use once CUDA_VISIBLE_DEVICES narrows the child to this GPU."""
        return "cuda:0" if self.kind == "cuda" else "cpu"

    def to_offer_device(self) -> Device:
        """The gossiped form; tflops/attested_* stay at their defaults until an attestation fills them."""
        return Device(kind=self.kind, name=self.name[:128], mem_bytes=int(self.mem_bytes))

    def describe(self) -> str:
        gib = self.mem_bytes / 2**30
        if self.kind == "cuda":
            return (f"cuda:{self.index} {self.name} {gib:.1f} GiB sm_{self.compute_capability} "
                    f"driver {self.driver_version or '?'} cuda {self.cuda_version or '?'}")
        return f"cpu {self.name} ({self.count} cores) {gib:.1f} GiB allowed"


def cpu_name() -> str:
    """The processor's marketing name from /proc/cpuinfo, falling back to platform data."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def total_memory_bytes() -> int:
    """Physical memory of the machine (or cgroup limit if lower)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
    except OSError:
        pass
    return int(total)


def _driver_version() -> str:
    """The NVIDIA kernel driver version, read from procfs so no NVML binding is needed."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return ""
    for token in text.split():
        parts = token.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return token
    return ""


def detect_devices(max_memory_bytes: int = 0) -> list[DeviceInfo]:
    """CUDA GPUs if torch sees any, else exactly one ``cpu`` device.

    `max_memory_bytes` caps the cpu device's memory (0 = the whole machine); GPUs report their full memory.
    """
    import torch  # lazy: only providers need torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        driver = _driver_version()
        cuda_version = torch.version.cuda or ""
        out = []
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            out.append(DeviceInfo(kind="cuda", index=i, name=props.name, mem_bytes=int(props.total_memory),
                                  count=count, compute_capability=f"{props.major}.{props.minor}",
                                  driver_version=driver, cuda_version=cuda_version))
        if out:
            return out
    mem = total_memory_bytes()
    if max_memory_bytes > 0:
        mem = min(mem, max_memory_bytes) if mem else max_memory_bytes
    return [DeviceInfo(kind="cpu", index=0, name=cpu_name(), mem_bytes=mem, count=os.cpu_count() or 1)]
