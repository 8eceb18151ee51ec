"""The command line: the daemon (`run`) and the commands people type (status, check, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from spotguard import __version__, cli_reclaim, logs, preflight, simulate
from spotguard.assemble import build_agent
from spotguard.config import Config, ConfigError, load
from spotguard.fleet import cli as fleet_cli
from spotguard.metrics import MetricsServer
from spotguard.state import StateFile
from spotguard.table import print_table
from spotguard.units import human_bytes


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        args.config_obj = load(args.config)
    except ConfigError as exc:
        print(f"spotguard: bad configuration: {exc}", file=sys.stderr)
        return 2
    # The daemon logs for the journal; commands for people print their own answer.
    logs.configure(level=args.log_level or ("info" if args.func is _run else "error"))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotguard",
        description="Reclaim memory ahead of a spot interruption, then hibernate small.",
    )
    parser.add_argument("--version", action="version", version=f"spotguard {__version__}")
    parser.add_argument("--config", help="TOML file (default /etc/spotguard/config.toml)")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="JSON log lines on stderr (default: info for run, error for the rest)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="the agent: watch, reclaim, hibernate")
    run.add_argument("--dry-run", action="store_true", help="hibernate.mode = none")
    run.set_defaults(func=_run)

    simulate.register(commands)

    status = commands.add_parser("status", help="what the running agent knows")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    preflight.register(commands)
    cli_reclaim.register(commands)
    fleet_cli.register(commands)

    config = commands.add_parser("config", help="configuration")
    config_commands = config.add_subparsers(metavar="ACTION")
    show = config_commands.add_parser("show", help="the effective configuration")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_config_show)
    for command in (*commands.choices.values(), *config_commands.choices.values()):
        # `spotguard run --config FILE` reads as naturally as `spotguard --config FILE run`.
        command.add_argument("--config", default=argparse.SUPPRESS, help="TOML file")
    return parser


def _run(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    if args.dry_run:
        config = dry_run(config)
    agent = build_agent(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The system-sleep hook sends SIGUSR1 after every resume.
    signal.signal(signal.SIGUSR1, lambda *_: agent.resume_flag.set())
    server = None
    if config.agent.metrics_port:
        server = MetricsServer(
            agent.parts.metrics,
            agent.healthy,
            config.agent.metrics_address,
            config.agent.metrics_port,
        ).start()
    try:
        agent.run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0


def dry_run(config: Config) -> Config:
    return dataclasses.replace(config, hibernate=dataclasses.replace(config.hibernate, mode="none"))


def _status(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    try:
        state = StateFile(config.agent.state_file).read()
    except (OSError, ValueError) as exc:
        print(f"spotguard: cannot read {config.agent.state_file}: {exc}", file=sys.stderr)
        return 1
    if state is None:
        print(f"spotguard: no state at {config.agent.state_file}: is the agent running?")
        return 1
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return 0
    print_table(status_rows(state))
    return 0 if state.get("healthy") else 1


def status_rows(state: dict[str, Any]) -> list[tuple[str, str]]:
    facts = state.get("facts") or {}
    estimate = state.get("estimate") or {}
    reclaim = state.get("last_reclaim") or {}
    rows = [
        ("phase", f"{state.get('phase')} ({state.get('reason') or '-'})"),
        ("healthy", "yes" if state.get("healthy") else f"NO: {state.get('health_problem')}"),
        (
            "instance",
            f"{facts.get('instance_id', '?')} {facts.get('life_cycle', '')} "
            f"{facts.get('region', '')}".strip(),
        ),
        ("hibernation configured", str(facts.get("hibernation_configured", "?"))),
        ("hibernate mode", str(state.get("hibernate_mode"))),
        ("idle for", "-" if state.get("idle_since_s") is None else f"{state['idle_since_s']} s"),
        ("reclaim running", str(state.get("reclaim_running") or "no")),
    ]
    if estimate:
        rows += [
            ("image expected", human_bytes(estimate["expected_bytes"])),
            ("image floor", human_bytes(estimate["floor_bytes"])),
            ("swap free", human_bytes(estimate["swap_free_bytes"])),
            ("predicted write", f"{estimate['predicted_write_s']:.1f} s"),
        ]
    if reclaim:
        rows.append(
            (
                "last reclaim",
                f"{human_bytes(reclaim['reclaimed_bytes'])} in {reclaim['duration_s']:.1f} s "
                f"({reclaim['intensity']}, {reclaim['stop_reason']})",
            )
        )
    rows += [
        (f"event {e['kind']}", f"{e['action']} by {e['deadline'] or '-'}")
        for e in state.get("events") or []
    ]
    return rows


def _config_show(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    data = config.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0
