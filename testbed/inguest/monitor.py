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


def sample_memory(window: list[float]) -> None:
    mem = meminfo()
    say(
        "mem",
        load=cgroup_bytes("memory.current"),
        load_swap=cgroup_bytes("memory.swap.current"),
        free=mem["MemFree"],
        cached=mem["Cached"],
        anon=mem["AnonPages"],
        swap_used=mem["SwapTotal"] - mem["SwapFree"],
        fg_p99_ms=f"{percentile(window, 0.99) * 1000:.2f}",
        fg_max_ms=f"{max(window, default=0.0) * 1000:.2f}",
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
            sample_memory(window)
            window = []
            next_report = now + REPORT_EVERY


if __name__ == "__main__":
    main()
