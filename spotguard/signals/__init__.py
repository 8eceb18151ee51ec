"""Local idle signals: CPU idle, PSI, disk I/O, load; one module a source.

OWNER: host helper implements the sources and `HostSignals` (in host.py). `HostSample` is the
interface the planner reads and keeps its name and fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pressure:
    """PSI avg10 percentages; None where the kernel has no PSI."""

    cpu_some: float | None = None
    memory_some: float | None = None
    memory_full: float | None = None
    io_some: float | None = None
    io_full: float | None = None


@dataclass(frozen=True, slots=True)
class HostSample:
    """One reading of the host. Rates need two readings: the first sample has them as None."""

    cpu_min_idle_percent: float | None  # lowest per-CPU idle % since the previous sample
    pressure: Pressure
    io_bytes_per_s: float | None  # read + write over all whole disks since the previous sample
    load1: float | None
    workload_cpu_percent: float | None = None  # the workload cgroups' CPU, % of one CPU
