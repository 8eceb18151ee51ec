"""Staged v1 reclaim (idle steps, emergency steps) vs one-shot force_empty, on real cgroups this
script makes (root, v1).

(a) throughput: MB/s reclaiming the same clean page-cache load in a fresh cgroup each round,
and the emergency's throughput as a ratio of the one-shot's in the same run (goal >= 0.9);
(b) responsiveness: sleep overshoot (p50/p99/max ms) of a process in a protected cgroup while a
background cgroup is reclaimed, against a quiet baseline. Prints figures; asserts nothing.

    sudo .venv/bin/python -m bench.reclaim_bench [--rounds 3] [--load-mib 1024]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from spotguard.clock import SystemClock
from spotguard.config import ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.reclaim.backend import Phase
from spotguard.reclaim.cgroup import Cgroup
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.v1 import ForceEmptyBackend
from spotguard.reclaim.writer import LibcWriter
from tests.test_reclaim_support import MIB, Sandbox

# Joins the protected cgroup, then sleeps `interval` over and over, noting when it woke up and
# how late; writes the samples out when terminated.
_SLEEPER = """
import os, signal, sys, time
cgroup, out, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
samples = []
print("ready", flush=True)
try:
    while True:
        start = time.monotonic()
        time.sleep(interval)
        end = time.monotonic()
        samples.append(f"{end:.6f} {(end - start - interval) * 1000:.3f}")
finally:
    with open(out, "w") as f:
        f.write("\\n".join(samples))
"""

Window = tuple[float, float]


def staged(box: Sandbox, name: str, state: Path) -> tuple[int, float]:
    return _engine(box, name, state, Intensity.DEEP)


def emergency(box: Sandbox, name: str, state: Path) -> tuple[int, float]:
    """As the planner asks at a notice: a target (so limit steps, not force_empty), sized by
    the rate this run sees."""
    return _engine(box, name, state, Intensity.EMERGENCY, target=box.usage(name))


def _engine(
    box: Sandbox, name: str, state: Path, intensity: Intensity, target: int | None = None
) -> tuple[int, float]:
    config = ReclaimConfig(cgroup_root=str(box.root), idle_psi=100.0, emergency_psi=100.0)
    reclaimer = StagedReclaimer(HostFS(), config, SystemClock(), state)
    request = ReclaimRequest(intensity, budget_s=60.0, target_bytes=target, cgroups=(name,))
    result = reclaimer.reclaim(request, threading.Event())
    return result.reclaimed_bytes, result.duration_s


def one_shot(box: Sandbox, name: str, state: Path) -> tuple[int, float]:
    cgroup = Cgroup.under(HostFS(), str(box.root), name, LibcWriter())
    before, started = cgroup.current(), time.monotonic()
    ForceEmptyBackend().step(cgroup, 0, Phase.FILE)
    return before - cgroup.current(), time.monotonic() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def overshoot(samples: list[tuple[float, float]], windows: list[Window]) -> str:
    inside = [ms for at, ms in samples if any(lo <= at <= hi for lo, hi in windows)]
    if not inside:
        return "no samples"
    return (
        f"p50 {statistics.median(inside):6.3f}  p99 {percentile(inside, 99):6.3f}  "
        f"max {max(inside):6.3f} ms  ({len(inside)} samples)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-mib", type=int, default=1024)
    parser.add_argument("--sleep-ms", type=float, default=1.0, help="the sleeper's interval")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if reason := Sandbox.unavailable():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(dir="/var/tmp") as data:
        box = Sandbox(Path(data))
        try:
            run(box, Path(data), args)
        finally:
            box.close()
    return 0


def run(box: Sandbox, data: Path, args: argparse.Namespace) -> None:
    samples_file = data / "sleeper.txt"
    interval = str(args.sleep_ms / 1000)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER, str(box.group("prot")), str(samples_file), interval],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sleeper.stdout is not None
    sleeper.stdout.readline()
    methods: dict[str, Callable[[Sandbox, str, Path], tuple[int, float]]] = {
        "staged v1 (limit steps)": staged,
        "emergency v1 (rate-sized)": emergency,
        "one-shot force_empty": one_shot,
    }
    figures: dict[str, list[tuple[int, float]]] = {m: [] for m in methods}
    windows: dict[str, list[Window]] = {m: [] for m in methods}
    quiet: list[Window] = []
    for round_ in range(args.rounds):
        for method, reclaim in methods.items():
            name = f"bg-{round_}-{len(figures[method])}-{method.split()[0]}"
            box.workload(name, file_mib=args.load_mib)
            time.sleep(0.5)
            quiet.append((time.monotonic() - 0.4, time.monotonic()))
            started = time.monotonic()
            figures[method].append(reclaim(box, name, data))
            windows[method].append((started, time.monotonic()))
    sleeper.terminate()
    sleeper.communicate()
    samples = [
        (float(at), float(ms))
        for at, ms in (line.split() for line in samples_file.read_text().splitlines() if line)
    ]
    print(f"load: {args.load_mib} MiB clean page cache per round, {args.rounds} rounds")
    print(f"cpus: {os.cpu_count()}, kernel {os.uname().release}")
    print("\n(a) throughput")
    for method, runs in figures.items():
        rates = [got / MIB / max(s, 1e-9) for got, s in runs]
        taken = statistics.mean(got for got, _ in runs) / MIB
        print(
            f"  {method:<24} {statistics.median(rates):8.0f} MB/s median "
            f"(min {min(rates):.0f}, max {max(rates):.0f}); {taken:.0f} MiB reclaimed, "
            f"{statistics.mean(s for _, s in runs) * 1000:.1f} ms per round"
        )
    medians = {
        m: statistics.median(got / max(s, 1e-9) for got, s in runs) for m, runs in figures.items()
    }
    ratio = medians["emergency v1 (rate-sized)"] / medians["one-shot force_empty"]
    print(f"  emergency / one-shot throughput: {ratio:.2f} (goal >= 0.9)")
    print(f"\n(b) protected sleeper: overshoot of a {args.sleep_ms:g} ms sleep")
    print(f"  {'quiet baseline':<24} {overshoot(samples, quiet)}")
    for method, spans in windows.items():
        print(f"  {method:<24} {overshoot(samples, spans)}")


if __name__ == "__main__":
    raise SystemExit(main())
