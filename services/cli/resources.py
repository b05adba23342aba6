"""CPU and peak resident memory of the stack's processes, sampled from outside (psutil)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import psutil


class ResourceSampler:
    """Samples every process of a stack (by name) twice a second: peak RSS and CPU seconds.

    ``processes`` is called on every sample, so a restarted service is followed under its new
    pid; the peak of a name is the largest RSS any of its processes had.
    """

    def __init__(
        self,
        processes: Callable[[], dict[str, int]],
        every_s: float = 0.5,
        cpu_only: frozenset[str] = frozenset(),
    ) -> None:
        self.processes = processes
        self.every_s = every_s
        self.cpu_only = cpu_only  # CPU reported, memory not (e.g. the measuring process)
        self.peak_rss: dict[str, int] = {}
        self.rss: dict[str, list[int]] = {}  # every sample, for growth checks
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self._handles: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        for name, pid in self.processes().items():
            process = self._handles.get(pid)
            try:
                if process is None:
                    process = self._handles[pid] = psutil.Process(pid)
                with process.oneshot():
                    rss = process.memory_info().rss
                    times = process.cpu_times()
            except psutil.Error:  # exited between listing and sampling
                continue
            self._cpu[pid] = times.user + times.system
            if name not in self.cpu_only:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                self.rss.setdefault(name, []).append(rss)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each name's current process."""
        self.sample()
        return {name: self._cpu.get(pid, 0.0) for name, pid in self.processes().items()}

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: round(rss / 2**20, 1) for name, rss in sorted(self.peak_rss.items())}

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)


@contextlib.asynccontextmanager
async def sampling(sampler: ResourceSampler):  # noqa: ANN201 - an async context manager
    task = asyncio.create_task(sampler.run(), name="resource-sampler")
    try:
        yield sampler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
