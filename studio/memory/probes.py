"""Memory probes: NVML for the GPU, the torch allocator for this process, psutil for host RAM.

Every probe returns one `MemorySnapshot`. A probe never imports torch: allocator figures are read only when
torch is already loaded (by a model), so the UI and `--help` stay light.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class ProcessMemory:
    """Device memory one process holds."""

    pid: int
    name: str
    used_bytes: int


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory at one moment: the device models run on, this process, and the host."""

    time: float  # time.time() when taken
    device_kind: str  # "cuda" or "cpu"
    device_name: str  # e.g. "NVIDIA GeForce RTX 4070 Ti" or "CPU (host RAM)"
    total: int  # device bytes (host RAM total on CPU)
    used: int  # device bytes in use by everyone
    free: int  # device bytes free
    this_process: int  # bytes this process holds on the device (NVML per-process, or RSS on CPU)
    processes: tuple[ProcessMemory, ...] = ()  # every process NVML reports on the device
    utilization: int | None = None  # GPU utilisation, percent
    temperature: int | None = None  # GPU temperature, degrees C
    torch_allocated: int | None = None  # torch.cuda.memory_allocated() for this process
    torch_reserved: int | None = None  # torch.cuda.memory_reserved()
    torch_peak: int | None = None  # torch.cuda.max_memory_allocated()
    host_total: int = 0  # host RAM
    host_available: int = 0
    host_rss: int = 0  # this process's resident set
    note: str = ""  # a one-time explanation, e.g. why the studio runs on the CPU
    extra: dict = field(default_factory=dict, compare=False)  # anything probe-specific

    @property
    def other_processes(self) -> int:
        """Device bytes held by processes other than this one (never negative)."""
        if self.device_kind != "cuda":
            return 0
        return max(0, self.used - self.this_process)


class MemoryProbe(Protocol):
    """What the studio needs from a probe; the NVML one, the host one and test fakes all fit."""

    device_kind: str

    def snapshot(self) -> MemorySnapshot: ...

    def process_used(self, pid: int) -> int | None:
        """Device bytes one process holds, if the probe can tell."""
        ...


def _host_figures() -> tuple[int, int, int]:
    vm = psutil.virtual_memory()
    return vm.total, vm.available, psutil.Process().memory_info().rss


def _torch_figures(index: int) -> tuple[int | None, int | None, int | None]:
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None, None
    try:
        if not torch.cuda.is_initialized():
            return None, None, None
        return (
            torch.cuda.memory_allocated(index),
            torch.cuda.memory_reserved(index),
            torch.cuda.max_memory_allocated(index),
        )
    except Exception:  # noqa: BLE001 - allocator stats are best-effort
        return None, None, None


class HostProbe:
    """The CPU fallback: host RAM seen as the device, so the same budget logic runs without a GPU."""

    device_kind = "cpu"

    def __init__(self, note: str = "") -> None:
        self.note = note

    def snapshot(self) -> MemorySnapshot:
        total, available, rss = _host_figures()
        return MemorySnapshot(
            time=time.time(),
            device_kind="cpu",
            device_name="CPU (host RAM)",
            total=total,
            used=total - available,
            free=available,
            this_process=rss,
            host_total=total,
            host_available=available,
            host_rss=rss,
            note=self.note,
        )

    def process_used(self, pid: int) -> int | None:
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.Error, OSError):
            return None


class NvmlProbe:
    """NVIDIA GPU memory through NVML (package nvidia-ml-py, module pynvml)."""

    device_kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        import pynvml

        self._nvml = pynvml
        self._lock = threading.Lock()  # NVML handles are thread-safe, but keep calls ordered and cheap
        pynvml.nvmlInit()
        self.index = index
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self._pid = os.getpid()

    def _processes(self) -> tuple[ProcessMemory, ...]:
        nv = self._nvml
        procs: dict[int, int] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                for p in getattr(nv, getter)(self._handle):
                    used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else 0
                    procs[p.pid] = max(procs.get(p.pid, 0), used or 0)
            except nv.NVMLError:
                continue
        out = []
        for pid, used in sorted(procs.items()):
            try:
                name = psutil.Process(pid).name()
            except (psutil.Error, OSError):
                name = "?"  # another container's process: NVML sees it, psutil does not
            out.append(ProcessMemory(pid, name, used))
        return tuple(out)

    def snapshot(self) -> MemorySnapshot:
        nv = self._nvml
        with self._lock:
            mem = nv.nvmlDeviceGetMemoryInfo(self._handle)
            procs = self._processes()
            try:
                util = int(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            except nv.NVMLError:
                util = None
            try:
                temp = int(nv.nvmlDeviceGetTemperature(self._handle, nv.NVML_TEMPERATURE_GPU))
            except nv.NVMLError:
                temp = None
        total, available, rss = _host_figures()
        allocated, reserved, peak = _torch_figures(self.index)
        mine = sum(p.used_bytes for p in procs if p.pid == self._pid)
        if not mine and reserved:
            mine = reserved  # NVML cannot see our pid inside some containers; the allocator can
        return MemorySnapshot(
            time=time.time(),
            device_kind="cuda",
            device_name=self.name,
            total=int(mem.total),
            used=int(mem.used),
            free=int(mem.free),
            this_process=mine,
            processes=procs,
            utilization=util,
            temperature=temp,
            torch_allocated=allocated,
            torch_reserved=reserved,
            torch_peak=peak,
            host_total=total,
            host_available=available,
            host_rss=rss,
        )

    def process_used(self, pid: int) -> int | None:
        with self._lock:
            for p in self._processes():
                if p.pid == pid:
                    return p.used_bytes
        return None


class PeakMeter:
    """Peak memory of one run above where it started: torch's allocator peak on CUDA, VmHWM on Linux CPUs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._base: int | None = None

    @staticmethod
    def _status_kb(field_name: str) -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def start(self) -> None:
        torch = sys.modules.get("torch")
        if self.device == "cuda" and torch is not None and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        except OSError:
            self._base = None
            return
        self._base = self._status_kb("VmRSS")

    def stop(self) -> int | None:
        """Bytes above the starting point at the peak, or None when this platform cannot tell."""
        if self._base is None:
            return None
        torch = sys.modules.get("torch")
        if self.device == "cuda" and torch is not None and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            return max(0, torch.cuda.max_memory_allocated() - self._base)
        peak = self._status_kb("VmHWM")
        return None if peak is None else max(0, peak - self._base)


def detect_probe(device: str = "auto", index: int = 0) -> MemoryProbe:
    """The right probe for the device setting: NVML when a driver answers, else host RAM with a note.

    `device="cuda"` without a working driver is a ConfigError; `device="cpu"` never touches NVML.
    """
    from studio.errors import ConfigError

    if device == "cpu":
        return HostProbe(note="Running on the CPU (--device cpu): the budget applies to host RAM.")
    try:
        return NvmlProbe(index)
    except Exception as exc:  # noqa: BLE001 - pynvml raises many kinds (library not found, driver not loaded)
        reason = str(exc) or type(exc).__name__
        if device == "cuda":
            raise ConfigError(
                f"--device cuda: no NVIDIA GPU answered ({reason}).", "Install the NVIDIA driver, or use --device cpu."
            ) from None
        return HostProbe(note=f"No NVIDIA GPU found ({reason}): ML Studio runs on the CPU and budgets host RAM.")
