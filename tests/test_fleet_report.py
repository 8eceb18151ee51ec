"""The drill's join, on plain values: order and duplicates change nothing; verdicts follow the
deadline; the detail types are the ones the module's rules deploy."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest

from spotguard.clock import FakeClock
from spotguard.fleet.events import EC2_SOURCE, SOURCE, BadEvent, FleetEvent, Kind, parse
from spotguard.fleet.report import DrillReport, Outcome, percentile
from spotguard.fleet.watch import LiveTable
from tests.fixtures_fleet import patterns

T0 = 1_800_000_000.0


def event(detail_type: Kind, at: float, instance: str = "i-a", **detail: Any) -> FleetEvent:
    return FleetEvent(f"{instance}-{detail_type.name}-{at}", detail_type, instance, at, detail)


def test_detail_types_are_the_deployed_patterns() -> None:
    deployed = patterns()
    by_source: dict[str, set[str]] = {}
    for pattern in deployed.values():
        for source in pattern["source"]:
            by_source.setdefault(source, set()).update(pattern["detail-type"])
    assert by_source == {
        SOURCE: {k.value for k in Kind if k.source == SOURCE},
        EC2_SOURCE: {k.value for k in Kind if k.source == EC2_SOURCE},
    }
    assert deployed["state-change"]["detail"]["state"] == [
        "pending",
        "running",
        "stopping",
        "stopped",
    ]


def drill_events() -> list[FleetEvent]:
    return [
        event(Kind.WARNING, T0, **{"instance-action": "stop"}),
        event(Kind.NOTICE_SEEN, T0 + 0.3, kind="spot-interruption", deadline=T0 + 120),
        event(Kind.RECLAIM_DONE, T0 + 2, reclaimed_bytes=5, seconds=1.5, stop_reason="target"),
        event(Kind.HIBERNATION_ISSUED, T0 + 2.1, image_bytes=7, seconds_left=117.9),
        event(Kind.STATE, T0 - 600, state="running"),  # launched long before
        event(Kind.STATE, T0 + 3, state="stopping"),
        event(Kind.STATE, T0 + 25, state="stopped"),
        event(Kind.STATE, T0 + 900, state="pending"),
        event(Kind.STATE, T0 + 930, state="running"),
        event(Kind.RESUMED, T0 + 931, slept_seconds=905.0),
        event(Kind.WARNING, T0 + 1, "i-b", **{"instance-action": "terminate"}),
        event(Kind.STATE, T0 + 150, "i-b", state="stopped"),
    ]


def test_order_and_duplicates_change_nothing() -> None:
    events = drill_events()
    reference = DrillReport()
    for e in events:
        reference.add(e)
    expected = reference.to_json(T0 + 1000)
    shuffler = random.Random(1)  # noqa: S311 - reproducible orders
    for _ in range(30):
        delivered = events + shuffler.sample(events, 4)
        shuffler.shuffle(delivered)
        report = DrillReport()
        for e in delivered:
            report.add(e)
        got = report.to_json(T0 + 1000)
        assert got["messages"]["duplicates"] == 4
        assert got["instances"] == expected["instances"]
        assert got["summary"] == expected["summary"]
    a, b = expected["instances"]
    assert a["outcome"] == "hibernated"
    assert a["stopped_at"] == "2027-01-15T08:00:25.000Z"
    assert a["resumed_at"] == "2027-01-15T08:15:31.000Z"
    assert a["slept_s"] == 905.0
    assert b["outcome"] == "missed"  # stopped 149 s after its warning, with no hibernation
    assert expected["summary"]["warning_to_stopped_p50_s"] == 25.0
    assert expected["summary"]["warning_to_stopped_p99_s"] == 149.0


@pytest.mark.parametrize(
    ("events", "now", "outcome"),
    [
        pytest.param([], T0 + 10, Outcome.PENDING, id="warned, nothing else yet"),
        pytest.param([], T0 + 121, Outcome.MISSED, id="deadline passed, nothing issued"),
        pytest.param(
            [event(Kind.HIBERNATION_ISSUED, T0 + 5)],
            T0 + 121,
            Outcome.HIBERNATED,
            id="issued in time, no state changes: the agent's word",
        ),
        pytest.param(
            [event(Kind.HIBERNATION_ISSUED, T0 + 5), event(Kind.STATE, T0 + 125, state="stopped")],
            T0 + 200,
            Outcome.MISSED,
            id="issued in time, stopped too late",
        ),
        pytest.param(
            [
                event(Kind.HIBERNATION_ISSUED, T0 + 125),
                event(Kind.STATE, T0 + 110, state="stopped"),
            ],
            T0 + 200,
            Outcome.MISSED,
            id="stopped by EC2 before our late hibernation",
        ),
        pytest.param(
            [event(Kind.GRACEFUL, T0 + 1, reason="no swap")],
            T0 + 200,
            Outcome.GRACEFUL,
            id="graceful",
        ),
    ],
)
def test_verdicts(events: list[FleetEvent], now: float, outcome: Outcome) -> None:
    report = DrillReport()
    for e in [event(Kind.WARNING, T0, **{"instance-action": "stop"}), *events]:
        report.add(e)
    assert report.instances["i-a"].outcome(now, report.notice_s) is outcome


def test_ec2_hibernating_the_instance_itself_counts_as_hibernated() -> None:
    report = DrillReport()
    report.add(event(Kind.WARNING, T0, **{"instance-action": "hibernate"}))
    report.add(event(Kind.STATE, T0 + 40, state="stopped"))
    assert report.summary(T0 + 50).hibernated == 1
    assert report.passed(T0 + 50)


def test_the_agents_deadline_wins_over_the_assumed_two_minutes() -> None:
    report = DrillReport(notice_s=120)
    report.add(event(Kind.WARNING, T0))
    report.add(event(Kind.NOTICE_SEEN, T0 + 1, kind="spot-interruption", deadline=T0 + 300))
    assert report.instances["i-a"].deadline(report.notice_s) == T0 + 300
    assert not report.settled(T0 + 200)
    assert report.settled(T0 + 300)


def test_settled_needs_a_warning_and_the_expected_count() -> None:
    report = DrillReport()
    assert not report.settled(T0)  # nothing warned yet: not a finished drill
    report.add(event(Kind.WARNING, T0))
    report.add(event(Kind.STATE, T0 + 20, state="stopped"))
    assert report.settled(T0 + 21)
    assert not report.settled(T0 + 21, expect=2)
    report.add(event(Kind.RESUMED, T0 + 30, "i-c"))  # no warning: not part of the count
    assert not report.settled(T0 + 31, expect=2)
    assert report.instances["i-c"].outcome(T0, 120) is Outcome.NOT_WARNED


def test_events_from_before_the_drill_are_stale() -> None:
    report = DrillReport(since=T0)
    assert not report.add(event(Kind.WARNING, T0 - 3600))
    assert report.add(event(Kind.WARNING, T0 + 1))
    assert report.stale == 1
    assert report.instances["i-a"].warned_at == T0 + 1


def test_percentile_is_an_observed_value() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.99) == 5.0


def envelope(**changes: Any) -> str:
    base = {
        "id": "e-1",
        "detail-type": Kind.WARNING.value,
        "source": "aws.ec2",
        "time": "2027-01-15T08:00:00Z",
        "detail": {"instance-id": "i-a", "instance-action": "stop"},
    }
    return json.dumps({**base, **changes})


def test_parse_takes_eventbridge_time_for_ec2_and_the_agents_time_for_its_own() -> None:
    assert parse(envelope()).at == T0
    own = parse(
        envelope(
            source="spotguard",
            **{"detail-type": Kind.RESUMED.value},
            detail={"instance-id": "i-a", "at": T0 + 0.25},
        )
    )
    assert own.kind is Kind.RESUMED
    assert own.at == T0 + 0.25


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "no JSON object"),
        (envelope(detail="x"), "no detail object"),
        (envelope(**{"detail-type": "EC2 Instance Launch"}), "unknown detail-type"),
        (envelope(source="spotguard"), "from source 'spotguard'"),
        (envelope(detail={"state": "stopped"}), "no instance-id"),
        (envelope(id=""), "no event id"),
        (envelope(time="yesterday"), "bad time"),
    ],
)
def test_parse_says_what_is_wrong(body: str, problem: str) -> None:
    with pytest.raises(BadEvent, match=problem):
        parse(body)


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_live_table_redraws_a_terminal_at_most_every_second() -> None:
    clock = FakeClock(wall=T0)
    report = DrillReport()
    report.add(event(Kind.WARNING, T0, **{"instance-action": "stop"}))
    terminal, pipe = _Terminal(tty=True), _Terminal(tty=False)
    live, quiet = LiveTable(report, clock, terminal), LiveTable(report, clock, pipe)
    for _ in range(4):  # at 0, 0.4, 0.8 and 1.2 s
        live()
        quiet()
        clock.advance(0.4)
    assert terminal.getvalue().count("\x1b[H\x1b[2J") == 2  # at 0 s and at 1.2 s
    assert "1 warned, 0 hibernated before their deadline" in terminal.getvalue()
    assert pipe.getvalue() == ""  # a pipe gets the final report only
