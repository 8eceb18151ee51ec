"""Read a drill off the fleet's SQS queue: long polls, deletes what it read, joins it.

SQS may deliver a message twice and in any order; the report is built to take both (see
report.py), and every message read is deleted, so a second watcher does not see it again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

import structlog

from spotguard.clock import Clock
from spotguard.fleet.events import BadEvent, parse
from spotguard.fleet.report import DrillReport

if TYPE_CHECKING:  # the stubs are a dev dependency
    from mypy_boto3_sqs import SQSClient

log = structlog.get_logger()

MAX_WAIT_S = 20  # SQS's longest long poll
CONFIRM_WAIT_S = 1  # once the drill looks settled: one short poll to see the queue is drained
SETTLE_LOOK_S = 0.5  # how often a busy watch checks whether the drill looks settled


def sqs_client(region: str = "", endpoint_url: str | None = None) -> SQSClient:
    """An SQS client the standard way; reads wait up to 20 s, so the read timeout is longer."""
    import boto3  # noqa: PLC0415 - the CLI's other commands should not pay for it
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    config = BotoConfig(
        connect_timeout=5, read_timeout=MAX_WAIT_S + 10, retries={"mode": "standard"}
    )
    return boto3.client("sqs", region_name=region or None, endpoint_url=endpoint_url, config=config)


class Reader(Protocol):
    received: int

    def read(self, wait_s: int) -> list[str]:
        """Message bodies, waiting up to `wait_s` for the first; [] when none came."""


class QueueReader:
    """One receive, then one batch delete of everything received."""

    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url
        self.received = 0

    def read(self, wait_s: int) -> list[str]:
        answer = self._sqs.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        )
        messages = answer.get("Messages", [])
        if not messages:
            return []
        self.received += len(messages)
        done = self._sqs.delete_message_batch(
            QueueUrl=self._url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ],
        )
        for failed in done.get("Failed", []):  # it comes back later: the report takes duplicates
            log.warning("fleet.delete_failed", code=failed.get("Code"), error=failed.get("Message"))
        return [m.get("Body", "") for m in messages]


@dataclass(frozen=True, slots=True)
class WatchResult:
    settled: bool
    timed_out: bool
    received: int
    unreadable: int
    last_event_at: float | None  # monotonic, of the last message that joined something


def watch(
    reader: Reader,
    report: DrillReport,
    clock: Clock,
    *,
    until_settled: bool,
    timeout_s: float | None = None,
    expect: int = 0,
    wait_s: int = MAX_WAIT_S,
    on_change: Callable[[], None] | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> WatchResult:
    """Poll until settled (with `until_settled`), `timeout_s` or `keep_going()` says stop."""
    end = None if timeout_s is None else clock.monotonic() + timeout_s
    unreadable = 0
    last_event_at = None
    settled = False
    looks_settled, looked_at = False, -SETTLE_LOOK_S
    while keep_going():
        if until_settled and clock.monotonic() - looked_at >= SETTLE_LOOK_S:
            # A look at every instance: not after every batch of a 1,000-instance drill.
            looks_settled, looked_at = report.settled(clock.wall(), expect), clock.monotonic()
        poll = CONFIRM_WAIT_S if looks_settled else wait_s
        if end is not None:
            poll = max(0, min(poll, int(end - clock.monotonic())))
        bodies = reader.read(poll)
        for body in bodies:
            try:
                event = parse(body)
            except BadEvent as exc:
                unreadable += 1
                log.warning("fleet.unreadable", error=str(exc), body=body[:200])
                continue
            if report.add(event):
                last_event_at = clock.monotonic()
        if bodies and on_change is not None:
            on_change()
        if until_settled and not bodies and report.settled(clock.wall(), expect):
            settled = True
            break
        if end is not None and clock.monotonic() >= end:
            break
    timed_out = not settled and end is not None and clock.monotonic() >= end
    return WatchResult(settled, timed_out, reader.received, unreadable, last_event_at)


class LiveTable:
    """The table redrawn in place on a terminal, at most every `every_s`; silent elsewhere."""

    def __init__(
        self, report: DrillReport, clock: Clock, out: TextIO | None = None, every_s: float = 1.0
    ) -> None:
        self._report = report
        self._clock = clock
        self._out = out or sys.stdout
        self._every_s = every_s
        self._last = -every_s

    def __call__(self) -> None:
        if not self._out.isatty() or self._clock.monotonic() - self._last < self._every_s:
            return
        self._last = self._clock.monotonic()
        self._out.write("\x1b[H\x1b[2J" + render(self._report, self._clock.wall()) + "\n")
        self._out.flush()


def render(report: DrillReport, now: float) -> str:
    """The table and the summary line, for people."""
    rows = report.rows(now)
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([*lines, "", report.summary(now).line()])
