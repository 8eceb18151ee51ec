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
from spotguard.hostlock import CLI, HostLock
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult, StageResult
from spotguard.reclaim.cgroup import CgroupPathError, resolve
from spotguard.reclaim.detect import BackendReport
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.exclusive import ExclusiveReclaimer, Wait, holder_text
from spotguard.table import print_table
from spotguard.units import human_bytes, parse_bytes, parse_duration

EXIT_DONE = 0  # ran to the end, or to --bytes
EXIT_UNUSABLE = 1  # no usable reclaim backend on this host
EXIT_USAGE = 2  # a bad argument, or a --cgroup that is missing or outside the memory root
EXIT_BUSY = 3  # another reclaim (the agent, or another `spotguard reclaim`) holds the host
EXIT_STOPPED = 4  # stopped before or between steps: pressure, --timeout, nothing to reclaim,
# or cancelled (Ctrl-C / SIGTERM; the agent sends SIGTERM when an interruption needs the host)

EXIT_CODES = """exit status:
  0  ran to the end (or reclaimed --bytes)
  1  no usable reclaim backend on this host
  2  bad arguments, or a --cgroup that is missing or outside the memory root
  3  another reclaim holds the host (the agent or another `spotguard reclaim`); see --wait
  4  stopped before or between steps: pressure (which signal, its value and the threshold
     are printed), the --timeout budget, nothing to reclaim, or cancelled (Ctrl-C, SIGTERM;
     the agent sends SIGTERM when an interruption needs the host); limits are always put back
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reclaim = subparsers.add_parser(
        "reclaim",
        help="reclaim memory now, in small staged steps",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reclaim.add_argument(
        "--cgroup",
        action="append",
        default=[],
        metavar="PATH",
        help="only this cgroup: NAME relative to the memory root, or its absolute path "
        "(/sys/fs/cgroup/memory/NAME on v1); repeatable",
    )
    reclaim.add_argument("--bytes", default="max", help="how much: 512M, 2G or max (default)")
    reclaim.add_argument("--timeout", default="30s", help="time budget (default 30s)")
    reclaim.add_argument(
        "--intensity", choices=[i.value for i in Intensity], default=Intensity.DEEP.value
    )
    reclaim.add_argument(
        "--ignore-pressure",
        action="store_true",
        help="do not stop when memory/io pressure is above reclaim.idle_psi/emergency_psi",
    )
    reclaim.add_argument(
        "--wait",
        action="store_true",
        help="if another reclaim holds the host, wait for it (the wait counts toward --timeout)",
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
        return EXIT_USAGE
    fs = HostFS(Path(config.agent.root))
    clock = SystemClock()
    state_dir = Path(config.agent.state_file).parent
    engine = StagedReclaimer(fs, config.reclaim, clock, state_dir)
    report = engine.report
    if not report.usable:
        print(f"spotguard: no reclaim backend: {report.describe()}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.cgroup and report.memory_root is None:
        print("spotguard: --cgroup needs a memory cgroup hierarchy", file=sys.stderr)
        return EXIT_USAGE
    try:
        names = tuple(cgroup_name(fs, report.memory_root or "/", n) for n in args.cgroup)
    except CgroupPathError as exc:
        print(f"spotguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    lock = HostLock(state_dir)
    wait = Wait.WAIT if args.wait else Wait.SKIP
    reclaimer = ExclusiveReclaimer(engine, lock, clock, role=CLI, policy=lambda _: wait)
    request = ReclaimRequest(
        Intensity(args.intensity), budget, target, names, ignore_pressure=args.ignore_pressure
    )
    if args.wait and (holder := lock.holder()) is not None:
        print(f"spotguard: waiting: {holder_text(lock, holder)}", file=sys.stderr)
    progress = ProgressLine(sys.stderr)
    with _cancel_on_signals() as cancel:
        result = reclaimer.reclaim(request, cancel, progress)
    progress.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_table(result_rows(result))
    code, message = verdict(result, request, config, report, waited=args.wait)
    if message:
        print(f"spotguard: {message}", file=sys.stderr)
    return code


def cgroup_name(fs: HostFS, root: str, name: str) -> str:
    """--cgroup as the planner takes it, relative to the memory root. NAME, the host path
    (/sys/fs/cgroup/memory/NAME) and, under a root prefix, that path inside the prefix all
    name one cgroup; anything else (outside the root, '..', a symlink out) is refused."""
    prefix = str(fs.root).rstrip("/")
    if prefix and name.startswith(f"{prefix}/") and not name.startswith(f"{root}/"):
        name = name[len(prefix) :]
    path = resolve(fs, root, name)
    relative = path[len(root.rstrip("/")) :].strip("/")
    if not relative:
        raise CgroupPathError(
            f"cgroup {name!r} is the memory root itself: name a cgroup under {root}, "
            "or leave --cgroup out for the whole plan"
        )
    if not fs.path(path).is_dir():
        raise CgroupPathError(f"no cgroup {name!r} under {root}")
    return relative


def verdict(
    result: ReclaimResult,
    request: ReclaimRequest,
    config: Config,
    report: BackendReport,
    *,
    waited: bool = False,
) -> tuple[int, str]:
    """The exit code, and for anything short of a full run, what stopped it, for people."""
    reason = result.stop_reason
    if reason == "busy":
        advice = (
            f"still held after {result.duration_s:.1f} s of waiting (--timeout "
            f"{request.budget_s:g} s, or a signal)"
            if waited
            else "try again later, or add --wait"
        )
        return EXIT_BUSY, f"{result.stop_detail}; {advice}"
    if reason == "unavailable":
        return EXIT_UNUSABLE, f"no reclaim backend: {report.describe()}"
    if reason == "pressure":
        pressured = [s for s in result.stages if s.stop_reason == "pressure"]
        where = "; ".join(f"{s.cgroup}: {s.stop_detail}" for s in pressured)
        return EXIT_STOPPED, f"stopped by pressure: {where or result.stop_detail}; {_IGNORE}"
    if reason == "budget":
        return EXIT_STOPPED, (
            f"stopped by the time budget: {result.duration_s:.1f} s of --timeout "
            f"{request.budget_s:g} s spent"
        )
    if reason == "cancelled":
        return EXIT_STOPPED, (
            "cancelled by a signal (Ctrl-C, or SIGTERM: the agent sends it when an interruption "
            "needs the host); every limit lowered was put back"
        )
    if reason == "no-targets":
        return EXIT_STOPPED, f"nothing to reclaim: {_no_targets(request, config, report)}"
    return EXIT_DONE, ""


_IGNORE = "add --ignore-pressure to reclaim anyway"


def _no_targets(request: ReclaimRequest, config: Config, report: BackendReport) -> str:
    protected = ", ".join(config.reclaim.protected) or "none"
    if report.chosen == "drop_caches":
        return "drop_caches is host-wide, and a light reclaim takes only background cgroups"
    if request.cgroups:
        return f"every cgroup asked for is protected (reclaim.protected: {protected})"
    if request.intensity is Intensity.LIGHT:
        background = ", ".join(config.reclaim.background) or "none"
        return (
            "a light reclaim takes only background cgroups, and none exists "
            f"(reclaim.background: {background})"
        )
    return f"no cgroup under {report.memory_root} outside reclaim.protected ({protected})"


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
