"""A fake NVML probe behind the same interface as studio.memory.probes.NvmlProbe (no GPU exists here)."""

from __future__ import annotations

import time

from studio.memory.probes import GIB, MemorySnapshot, ProcessMemory


class FakeGpuProbe:
    """Pretends to be an RTX 4070 Ti: 12 GB, with other processes holding memory. Figures are settable."""

    device_kind = "cuda"

    def __init__(
        self,
        total: int = 12 * GIB,
        this_process: int = 0,
        others: tuple[ProcessMemory, ...] = (),
        name: str = "NVIDIA GeForce RTX 4070 Ti",
    ) -> None:
        self.total, self.this_process, self.others, self.name = total, this_process, others, name
        self.calls = 0

    def snapshot(self) -> MemorySnapshot:
        self.calls += 1
        used = self.this_process + sum(p.used_bytes for p in self.others)
        procs = (ProcessMemory(1, "python", self.this_process), *self.others)
        return MemorySnapshot(
            time=time.time(),
            device_kind="cuda",
            device_name=self.name,
            total=self.total,
            used=used,
            free=self.total - used,
            this_process=self.this_process,
            processes=procs,
            utilization=37,
            temperature=61,
            host_total=32 * GIB,
            host_available=20 * GIB,
            host_rss=2 * GIB,
        )

    def process_used(self, pid: int) -> int | None:
        for p in self.others:
            if p.pid == pid:
                return p.used_bytes
        return None
