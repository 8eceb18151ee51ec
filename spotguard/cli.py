"""The command line: the daemon (`run`) and the commands people type (status, check, ...)."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
from collections.abc import Sequence

from spotguard import __version__, cli_reclaim, logs, preflight, readahead, simulate, status
from spotguard.assemble import build_agent
from spotguard.config import Config, ConfigError, load
from spotguard.fleet import cli as fleet_cli
from spotguard.metrics import MetricsServer


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
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide as usual, act on nothing: log the reclaim plan and the hibernation",
    )
    run.set_defaults(func=_run)

    simulate.register(commands)

    status.register(commands)

    preflight.register(commands)
    cli_reclaim.register(commands)
    readahead.register(commands)
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
    agent = build_agent(config, dry_run=args.dry_run)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The system-sleep hook sends SIGUSR1 after every resume.
    signal.signal(signal.SIGUSR1, lambda *_: agent.resumed())
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
    # All is put away (reclaim cancelled, limits restored, state written). The interpreter's
    # last garbage collection takes most of a second with boto3 loaded; the OS frees it all
    # anyway, so SIGTERM ends us within one (exit handlers still run).
    gc.freeze()
    return 0


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
