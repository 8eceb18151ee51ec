"""`spotguard reclaim` (a staged reclaim now) and `spotguard estimate` (the hibernation image)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from spotguard.clock import SystemClock
from spotguard.config import Config
from spotguard.estimator import EstimateError, ImageEstimate, ImageEstimator
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult, StageResult
from spotguard.reclaim.cgroup import CgroupPathError, resolve
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.table import print_table
from spotguard.units import human_bytes, parse_bytes, parse_duration


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reclaim = subparsers.add_parser("reclaim", help="reclaim memory now, in small staged steps")
    reclaim.add_argument(
        "--cgroup",
        action="append",
        default=[],
        metavar="PATH",
        help="only this cgroup (relative to the memory root, or absolute); repeatable",
    )
    reclaim.add_argument("--bytes", default="max", help="how much: 512M, 2G or max (default)")
    reclaim.add_argument("--timeout", default="30s", help="time budget (default 30s)")
    reclaim.add_argument(
        "--intensity", choices=[i.value for i in Intensity], default=Intensity.DEEP.value
    )
    reclaim.add_argument("--json", action="store_true")
    reclaim.set_defaults(func=run_reclaim)

    estimate = subparsers.add_parser("estimate", help="how big the hibernation image is now")
    estimate.add_argument("--json", action="store_true")
    estimate.set_defaults(func=run_estimate)


def run_reclaim(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    try:
        target = None if args.bytes.strip().lower() == "max" else parse_bytes(args.bytes)
        budget = parse_duration(args.timeout)
    except ValueError as exc:
        print(f"spotguard: {exc}", file=sys.stderr)
        return 2
    fs = HostFS(Path(config.agent.root))
    reclaimer = StagedReclaimer(
        fs, config.reclaim, SystemClock(), Path(config.agent.state_file).parent
    )
    report = reclaimer.report
    if not report.usable:
        print(f"spotguard: no reclaim backend: {report.describe()}", file=sys.stderr)
        return 1
    if args.cgroup and report.memory_root is None:
        print("spotguard: --cgroup needs a memory cgroup hierarchy", file=sys.stderr)
        return 2
    for name in args.cgroup:
        try:
            found = fs.path(resolve(fs, report.memory_root or "/", name)).is_dir()
        except CgroupPathError as exc:
            print(f"spotguard: {exc}", file=sys.stderr)
            return 2
        if not found:
            print(f"spotguard: no cgroup {name!r} under {report.memory_root}", file=sys.stderr)
            return 2
    request = ReclaimRequest(Intensity(args.intensity), budget, target, tuple(args.cgroup))
    progress = ProgressLine(sys.stderr)
    with _cancel_on_signals() as cancel:
        result = reclaimer.reclaim(request, cancel, progress)
    progress.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_table(result_rows(result))
    return 0


def result_rows(result: ReclaimResult) -> list[tuple[str, str]]:
    rows = [(stage.cgroup, _stage_text(stage)) for stage in result.stages]
    rows.append(
        (
            "total",
            f"{human_bytes(result.reclaimed_bytes)} in {result.duration_s:.1f} s "
            f"({result.intensity.value}, {result.backend or 'no backend'}, {result.stop_reason})",
        )
    )
    if result.swapped_out_bytes:
        rows.append(("swapped out", human_bytes(result.swapped_out_bytes)))
    return rows


def _stage_text(stage: StageResult) -> str:
    return (
        f"{human_bytes(stage.reclaimed_bytes)} (file {human_bytes(stage.file_bytes)}, "
        f"anon {human_bytes(stage.anon_bytes)}) in {stage.steps} steps, "
        f"{stage.duration_s:.2f} s, {stage.stop_reason or 'running'}"
    )


class ProgressLine:
    """Reclaim progress on stderr: one line rewritten in place on a terminal, plain lines else."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._wrote = False

    def __call__(self, stage: StageResult) -> None:
        text = f"reclaim {stage.cgroup}: {_stage_text(stage)}"
        self._out.write(f"\r\x1b[K{text}" if self._tty else f"{text}\n")
        self._out.flush()
        self._wrote = True

    def close(self) -> None:
        if self._tty and self._wrote:
            self._out.write("\n")


@contextmanager
def _cancel_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM ends the reclaim cleanly (v1 limits are restored), then we report."""
    cancel = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda *_: cancel.set()) for s in signals}
    try:
        yield cancel
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_estimate(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    try:
        estimate = ImageEstimator(HostFS(Path(config.agent.root)), config.hibernate).estimate()
    except EstimateError as exc:
        print(f"spotguard: cannot estimate the image: {exc}", file=sys.stderr)
        return 1
    margin = config.hibernate.swap_margin
    hibernate_s = config.hibernate.fixed_overhead + estimate.predicted_write_s
    if args.json:
        data = {
            **dataclasses.asdict(estimate),
            "fits": estimate.fits(margin),
            "swap_margin": margin,
            "predicted_hibernate_s": hibernate_s,
        }
        print(json.dumps(data, indent=2))
    else:
        print_table(estimate_rows(estimate, margin, hibernate_s))
    return 0


def estimate_rows(
    estimate: ImageEstimate, margin: float, hibernate_s: float
) -> list[tuple[str, str]]:
    fits = "yes" if estimate.fits(margin) else "NO"
    return [
        ("saveable", human_bytes(estimate.saveable_bytes)),
        ("floor", f"{human_bytes(estimate.floor_bytes)} (cannot be reclaimed)"),
        ("image_size", human_bytes(estimate.image_size_limit)),
        ("expected image", human_bytes(estimate.expected_bytes)),
        (
            "swap free",
            f"{human_bytes(estimate.swap_free_bytes)} of {human_bytes(estimate.swap_total_bytes)}",
        ),
        ("fits", f"{fits} (margin {margin})"),
        (
            "predicted write",
            f"{estimate.predicted_write_s:.1f} s at "
            f"{human_bytes(estimate.bandwidth_bytes_per_s)}/s",
        ),
        ("predicted hibernate", f"{hibernate_s:.1f} s"),
    ]
