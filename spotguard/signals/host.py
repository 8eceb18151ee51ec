"""All local idle signals in one reading, for the planner."""

from __future__ import annotations

from spotguard.hostfs import HostFS
from spotguard.signals import HostSample
from spotguard.signals.cpu import CpuIdle
from spotguard.signals.diskstats import DiskThroughput
from spotguard.signals.loadavg import LoadAverage
from spotguard.signals.psi import HostPressure
from spotguard.signals.workload import PressureSource, WorkloadActivity


class HostSignals:
    """Keeps the previous reading of each source, so rates cover the time between samples."""

    def __init__(
        self,
        fs: HostFS,
        workload: WorkloadActivity | None = None,
        pressure: PressureSource | None = None,
    ) -> None:
        """`workload` and `pressure` (the workload cgroups' own, see signals.workload) where the
        agent knows its workload; the host's PSI otherwise."""
        self._cpu = CpuIdle(fs)
        self._pressure = pressure or HostPressure(fs)
        self._disks = DiskThroughput(fs)
        self._load = LoadAverage(fs)
        self._workload = workload

    def sample(self, monotonic_now: float) -> HostSample:
        return HostSample(
            cpu_min_idle_percent=self._cpu.read(),
            pressure=self._pressure.read(),
            io_bytes_per_s=self._disks.read(monotonic_now),
            load1=self._load.read(),
            workload_cpu_percent=self._workload.read(monotonic_now) if self._workload else None,
        )
