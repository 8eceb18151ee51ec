"""`spotguard fleet watch` and `spotguard fleet drill`: run on an operator's machine, not on
the fleet. Exit codes: 0 every warned instance hibernated before its deadline; 1 one missed or
took the graceful path, or none was warned; 2 bad usage or AWS refused; 3 not settled in time."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from spotguard.clock import Clock, SystemClock
from spotguard.fleet import drill as fis_drill
from spotguard.fleet.report import EC2_NOTICE_S, DrillReport
from spotguard.fleet.timeline import PlotUnavailable, write_png
from spotguard.fleet.watch import (
    MAX_WAIT_S,
    LiveTable,
    QueueReader,
    WatchResult,
    render,
    sqs_client,
    watch,
)
from spotguard.units import parse_duration

PASSED, FAILED, USAGE, UNSETTLED = 0, 1, 2, 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = subparsers.add_parser("fleet", help="drill a test fleet and watch it hibernate")
    commands = fleet.add_subparsers(metavar="ACTION")

    watch_cmd = commands.add_parser("watch", help="the fleet's events from its SQS queue, joined")
    _common(watch_cmd)
    watch_cmd.add_argument(
        "--until-settled",
        action="store_true",
        help="exit once every warned instance is stopped or past its deadline",
    )
    watch_cmd.add_argument("--timeout", help="give up after this long, e.g. 10m (default: never)")
    watch_cmd.add_argument(
        "--notice",
        default=f"{EC2_NOTICE_S:.0f}s",
        help="warning lead time when an agent did not report its deadline (default 120s)",
    )
    watch_cmd.add_argument("--since", help="ignore events older than this, e.g. 30m")
    watch_cmd.set_defaults(func=run_watch)

    drill_cmd = commands.add_parser("drill", help="start the FIS drill, watch until settled")
    drill_cmd.add_argument("--template", required=True, help="FIS experiment template id")
    _common(drill_cmd)
    drill_cmd.add_argument("--timeout", default="15m", help="give up after this long (15m)")
    drill_cmd.set_defaults(func=run_drill)
    for command in commands.choices.values():
        command.add_argument("--config", default=argparse.SUPPRESS, help="TOML file")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", required=True, help="SQS queue URL (terraform output queue_url)")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--results", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--timeline", type=Path, help="draw the drill into this PNG file")
    parser.add_argument(
        "--expect", type=int, default=0, help="settled only once this many instances are warned"
    )
    parser.add_argument("--region", default="", help="AWS region (default: boto3's)")
    parser.add_argument("--endpoint-url", help="a local AWS endpoint such as moto")
    parser.add_argument(
        "--wait",
        type=int,
        default=MAX_WAIT_S,
        choices=range(0, MAX_WAIT_S + 1),
        metavar="0..20",
        help="long-poll seconds per receive (default 20)",
    )


def run_watch(args: argparse.Namespace, clock: Clock | None = None) -> int:
    clock = clock or SystemClock()
    try:
        timeout = parse_duration(args.timeout) if args.timeout else None
        notice = parse_duration(args.notice)
        since = clock.wall() - parse_duration(args.since) if args.since else None
    except ValueError as exc:
        print(f"spotguard: {exc}", file=sys.stderr)
        return USAGE
    report = DrillReport(notice_s=notice, since=since)
    return _watch_and_report(
        args, report, clock, until_settled=args.until_settled, timeout_s=timeout
    )


def run_drill(args: argparse.Namespace, clock: Clock | None = None) -> int:
    clock = clock or SystemClock()
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        print(f"spotguard: {exc}", file=sys.stderr)
        return USAGE
    fis = fis_drill.fis_client(args.region, args.endpoint_url)
    try:
        started = fis_drill.start(fis, args.template)
    except (fis_drill.DrillError, ClientError, BotoCoreError) as exc:
        print(f"spotguard: cannot start the drill: {exc}", file=sys.stderr)
        return USAGE
    print(
        f"drill {started.experiment_id} started from {args.template}: "
        f"warnings {started.notice_s:.0f} s ahead",
        file=sys.stderr,
    )
    # A little before the start: EventBridge's `time` has one-second resolution.
    report = DrillReport(notice_s=started.notice_s, since=started.started_at - 5.0)
    args.expect = args.expect or started.expect
    code = _watch_and_report(args, report, clock, until_settled=True, timeout_s=timeout)
    try:
        print(
            f"experiment {started.experiment_id}: {fis_drill.status(fis, started.experiment_id)}",
            file=sys.stderr,
        )
    except (ClientError, BotoCoreError) as exc:
        print(f"experiment {started.experiment_id}: state unknown: {exc}", file=sys.stderr)
    return code


def _watch_and_report(
    args: argparse.Namespace,
    report: DrillReport,
    clock: Clock,
    *,
    until_settled: bool,
    timeout_s: float | None,
) -> int:
    reader = QueueReader(sqs_client(args.region, args.endpoint_url), args.queue)
    live = None if args.json else LiveTable(report, clock)
    interrupted = False
    try:
        result = watch(
            reader,
            report,
            clock,
            until_settled=until_settled,
            timeout_s=timeout_s,
            expect=args.expect,
            wait_s=args.wait,
            on_change=live,
        )
    except KeyboardInterrupt:  # a person stopping the watch still wants the report
        interrupted = True
        result = WatchResult(False, False, reader.received, 0, None)
    except (ClientError, BotoCoreError) as exc:
        print(f"spotguard: cannot read {args.queue}: {exc}", file=sys.stderr)
        return USAGE
    now = clock.wall()
    watched = {**asdict(result), "interrupted": interrupted}
    last = watched.pop("last_event_at")  # monotonic: only the span to now means anything
    watched["last_event_to_report_s"] = None if last is None else round(clock.monotonic() - last, 3)
    document = {**report.to_json(now), "watch": watched}
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render(report, now))
    if args.results:
        args.results.write_text(json.dumps(document, indent=2) + "\n")
    if args.timeline:
        try:
            write_png(report, now, args.timeline)
        except PlotUnavailable as exc:
            print(f"spotguard: no timeline: {exc}", file=sys.stderr)
    return _exit_code(report, result, now, until_settled)


def _exit_code(report: DrillReport, result: WatchResult, now: float, until_settled: bool) -> int:
    if report.passed(now) and (result.settled or not until_settled):
        return PASSED
    summary = report.summary(now)
    if summary.missed or summary.graceful or not summary.warned:
        return FAILED
    return UNSETTLED
