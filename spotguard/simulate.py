"""`spotguard simulate`: the first thing a new user runs. No AWS account, no root, about 15 s.

It starts the metadata simulator on 127.0.0.1 and a simulated host (the RFC's 8 GiB VM, see
simhost.py), runs the real agent against both with hibernation in dry-run, serves a rebalance
recommendation and then a spot notice, and prints what the agent did as a timeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

from spotguard import logs
from spotguard.agent import Agent
from spotguard.assemble import build_agent
from spotguard.config import Config
from spotguard.hostfs import HostFS
from spotguard.planner import Phase
from spotguard.simhost import SimHost
from spotguard.simulator import MetadataSimulator
from spotguard.units import human_bytes, parse_duration

FINAL = (Phase.HIBERNATING, Phase.EC2_HIBERNATING, Phase.GRACEFUL)
SHOWN = {
    "agent.started": ("mode",),
    "facts.known": ("instance_id", "life_cycle", "hibernation_configured"),
    "notice.received": ("kind", "action", "seconds_left"),
    "notice.changed": ("kind", "what"),
    "notice.ec2_hibernating": ("cancelled", "hooks", "ours"),
    "reclaim.started": ("intensity", "budget_s"),
    "reclaim.stage": ("cgroup", "reclaimed_bytes", "file_bytes", "anon_bytes", "stop_reason"),
    "reclaim.done": ("intensity", "reclaimed_bytes", "duration_s", "stop_reason"),
    "reclaim.cancelled": ("reason",),
    "hibernate.at_risk": ("predicted_s", "seconds_left"),
    "hibernate.issued": ("why_now", "image_bytes", "seconds_left", "mode"),
    "hibernate.refused": ("reason",),
    "hibernate.unavailable": ("reason",),
    "imds.error": ("source", "error"),
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser(
        "simulate",
        help="run the agent against a local metadata simulator and a simulated host (dry run)",
    )
    sim.add_argument("--action", choices=("stop", "terminate", "hibernate"), default="stop")
    sim.add_argument(
        "--idle-after",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="idle time before the light reclaim (default 1s)",
    )
    sim.add_argument("--rebalance-after", type=parse_duration, default=4.0, metavar="DURATION")
    sim.add_argument("--no-rebalance", action="store_true", help="serve only the spot notice")
    sim.add_argument("--notice-after", type=parse_duration, default=8.0, metavar="DURATION")
    sim.add_argument(
        "--deadline",
        type=parse_duration,
        default=120.0,
        metavar="DURATION",
        help="from the notice to its time (EC2: 2 minutes)",
    )
    sim.add_argument("--timeout", type=parse_duration, default=30.0, metavar="DURATION")
    sim.add_argument(
        "--no-hibernation",
        action="store_true",
        help="an instance launched without hibernation configured",
    )
    sim.add_argument("--json", action="store_true", help="the agent's JSON events, not a timeline")
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    phase = run_simulation(args, args.config_obj, sys.stdout)
    return 0 if phase in FINAL else 1


def simulated_config(base: Config, imds_url: str, workdir: Path, idle_after: float) -> Config:
    """The user's config, pointed at the simulators, in dry run, with state in a temp dir."""
    r = dataclasses.replace
    return r(
        base,
        imds=r(base.imds, url=imds_url, connect_timeout=0.5, read_timeout=1.0),
        agent=r(
            base.agent,
            root=str(workdir / "host"),
            poll_interval=0.5,
            slow_poll_interval=0.5,
            state_file=str(workdir / "state.json"),
            hook_dir=str(workdir / "hooks"),
            metrics_port=0,
            webhook_url="",
        ),
        idle=r(base.idle, duration=idle_after),
        reclaim=r(
            base.reclaim,
            backend="v2",
            cgroup_root=SimHost.cgroup_root,
            background=("batch.slice",),
            protected=(),
        ),
        hibernate=r(base.hibernate, mode="none", swap_bandwidth=100 << 20),
    )


def run_simulation(args: argparse.Namespace, base: Config, out: TextIO) -> Phase:
    with (
        tempfile.TemporaryDirectory(prefix="spotguard-simulate-") as tmp,
        MetadataSimulator(hibernation_configured=not args.no_hibernation) as imds,
    ):
        workdir = Path(tmp)
        host = SimHost(workdir / "host")
        config = simulated_config(base, imds.url, workdir, args.idle_after)
        timeline = Timeline(out, raw=args.json)
        logs.configure(stream=out if args.json else io.StringIO(), sink=timeline.event)
        agent = build_agent(config, fs=HostFS(host.root), kernel=host)
        timeline.say(
            f"metadata simulator at {imds.url}; simulated host: "
            f"{human_bytes(host.ram)} RAM, 85 % in use, {human_bytes(host.swap)} swap"
        )
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop,), name="agent")
        host.start()
        worker.start()
        try:
            _script(args, imds, agent, timeline)
        finally:
            stop.set()
            worker.join()
            host.stop()
        timeline.summary(agent)
        return agent.state.phase


def _script(args: argparse.Namespace, imds: MetadataSimulator, agent: Agent, tl: Timeline) -> None:
    rebalance_at = None if args.no_rebalance else args.rebalance_after
    notice_at: float | None = args.notice_after
    finished_at: float | None = None
    while (now := tl.elapsed()) < args.timeout:
        if rebalance_at is not None and now >= rebalance_at:
            tl.say("simulator: serving a rebalance recommendation")
            imds.set_rebalance()
            rebalance_at = None
        if notice_at is not None and now >= notice_at:
            tl.say(
                f"simulator: serving a spot notice, action {args.action}, "
                f"time in {args.deadline:g} s"
            )
            imds.set_notice(args.action, in_seconds=args.deadline)
            notice_at = None
        if finished_at is None and agent.state.phase in FINAL:
            finished_at = now
        if finished_at is not None and now - finished_at > 1.0:  # let the last events land
            return
        time.sleep(0.05)
    tl.say(f"timeout after {args.timeout:g} s")


class Timeline:
    """Agent events as lines for people: time since start, event name, the fields that matter."""

    def __init__(self, out: TextIO, *, raw: bool) -> None:
        self._out = out
        self._raw = raw
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def say(self, text: str) -> None:
        if not self._raw:
            self._line(f"{'':<22}{text}")

    def event(self, name: str, fields: MutableMapping[str, Any]) -> None:
        if self._raw or name not in SHOWN:
            return
        shown = [_show(key, fields[key]) for key in SHOWN[name] if fields.get(key) is not None]
        self._line(f"{name:<21} {'  '.join(shown)}")

    def summary(self, agent: Agent) -> None:
        if self._raw:
            return
        estimate = agent.estimate
        self._out.write(f"\nresult: {agent.state.phase.value} ({agent.state.reason})\n")
        if estimate is not None:
            self._out.write(
                f"image now: {human_bytes(estimate.expected_bytes)} (kernel floor "
                f"{human_bytes(estimate.floor_bytes)}), written in about "
                f"{estimate.predicted_write_s:.1f} s at "
                f"{human_bytes(estimate.bandwidth_bytes_per_s)}/s\n"
            )
        self._out.flush()

    def _line(self, text: str) -> None:
        with self._lock:
            self._out.write(f"{self.elapsed():6.1f}s  {text}\n")
            self._out.flush()


def _show(key: str, value: Any) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{key.removesuffix('_bytes')}={human_bytes(value)}"
    return f"{key}={value}"
