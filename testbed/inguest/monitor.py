"""The foreground probe (in the protected cgroup) and the once-a-second memory sampler.

Responsiveness is the overshoot of a 10 ms sleep: what a latency-sensitive foreground task
feels while reclaim runs beside it. At the trigger (SIGUSR1 from hibernate-now) it reports
the overshoot percentiles over the idle window, from the workload's ``loaded`` to the trigger.
"""

from __future__ import annotations

import os
import signal
import time
from array import array
from pathlib import Path
from types import FrameType

from testbed.inguest.common import CGROUP_ROOT, LOAD_CGROUP, meminfo, recall, record, say

INTERVAL = 0.01
REPORT_EVERY = 1.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cgroup_bytes(name: str) -> int:
    try:
        return int((CGROUP_ROOT / LOAD_CGROUP / name).read_text().split()[0])
    except (OSError, ValueError):
        return -1


def cpu_times() -> list[tuple[int, int]]:
    """(idle, total) jiffies per CPU, from /proc/stat."""
    found = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields]
            found.append((ticks[3] + ticks[4], sum(ticks)))
    return found


def least_idle_percent(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> float:
    """The agent's idle signal: the least idle CPU's idle share between two readings."""
    shares = [
        100.0 * (i1 - i0) / (t1 - t0)
        for (i0, t0), (i1, t1) in zip(before, after, strict=True)
        if t1 > t0
    ]
    return min(shares, default=100.0)


def pressure_some(resource: str) -> str:
    """`some avg10` of /proc/pressure/RESOURCE, as the agent's PSI gate reads it."""
    try:
        first = Path(f"/proc/pressure/{resource}").read_text().split()
    except OSError:
        return "-"
    return first[1].removeprefix("avg10=")


def sample_memory(window: list[float], cpu_idle: float) -> None:
    mem = meminfo()
    say(
        "mem",
        load=cgroup_bytes("memory.current"),
        load_swap=cgroup_bytes("memory.swap.current"),
        free=mem["MemFree"],
        cached=mem["Cached"],
        anon=mem["AnonPages"],
        swapcached=mem["SwapCached"],
        slab=mem["Slab"],
        swap_used=mem["SwapTotal"] - mem["SwapFree"],
        fg_p99_ms=f"{percentile(window, 0.99) * 1000:.2f}",
        fg_max_ms=f"{max(window, default=0.0) * 1000:.2f}",
        cpu_idle_min=f"{cpu_idle:.1f}",
        psi_mem=pressure_some("memory"),
        psi_io=pressure_some("io"),
    )


def summarize(times: array[float], overshoots: array[float]) -> None:
    loaded = float(recall("loaded") or 0)
    trigger = float(recall("trigger") or time.monotonic())
    window = [o for t, o in zip(times, overshoots, strict=True) if loaded <= t < trigger]
    say(
        "fg",
        n=len(window),
        p50_ms=f"{percentile(window, 0.50) * 1000:.2f}",
        p99_ms=f"{percentile(window, 0.99) * 1000:.2f}",
        max_ms=f"{max(window, default=0.0) * 1000:.2f}",
    )


def main() -> None:
    asked: list[bool] = []

    def on_trigger(_signum: int, _frame: FrameType | None) -> None:
        asked.append(True)

    signal.signal(signal.SIGUSR1, on_trigger)
    record("monitor.pid", str(os.getpid()))
    times: array[float] = array("d")
    overshoots: array[float] = array("d")
    window: list[float] = []
    cpu = cpu_times()
    next_report = time.monotonic() + REPORT_EVERY
    while True:
        before = time.monotonic()
        time.sleep(INTERVAL)
        now = time.monotonic()
        times.append(now)
        overshoots.append(max(0.0, now - before - INTERVAL))
        window.append(overshoots[-1])
        if asked:
            asked.clear()
            summarize(times, overshoots)
        if now >= next_report:
            now_cpu = cpu_times()
            sample_memory(window, least_idle_percent(cpu, now_cpu))
            cpu, window = now_cpu, []
            next_report = now + REPORT_EVERY


if __name__ == "__main__":
    main()
