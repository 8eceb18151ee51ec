"""The agent's FleetReporter: its events reach the fleet's queue through the deployed rules
(moto), and a dead or hanging EventBridge costs the agent nothing but a log line."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from spotguard.clock import SystemClock
from spotguard.estimator import ImageEstimate
from spotguard.events import Event, EventKind
from spotguard.fleet.events import Kind, parse
from spotguard.fleet.publisher import FleetReporter, events_client
from spotguard.monitors import InstanceFacts
from spotguard.reclaim.api import Intensity, ReclaimResult
from tests.fixtures_aws import MotoServer
from tests.fixtures_fleet import make_drill_queue

FACTS = InstanceFacts("i-0123456789abcdef0", "us-east-1", "spot", True)


def notice() -> Event:
    """A notice as the metadata service gives it: two minutes from now."""
    return Event(EventKind.SPOT_INTERRUPTION, "spot-1", "stop", deadline=time.time() + 120)


ESTIMATE = ImageEstimate(
    saveable_bytes=900 << 20,
    floor_bytes=250 << 20,
    image_size_limit=4 << 30,
    expected_bytes=300 << 20,
    swap_total_bytes=8 << 30,
    swap_free_bytes=8 << 30,
    bandwidth_bytes_per_s=100 << 20,
    predicted_write_s=3.0,
)


def test_every_decision_reaches_the_fleet_queue(fleet_env: MotoServer) -> None:
    drill = make_drill_queue(fleet_env, [FACTS.instance_id])
    reporter = FleetReporter("default", clock=SystemClock(), fixed_overhead_s=10.0)
    spot = notice()
    reporter.notice_seen(FACTS, spot)
    reporter.reclaim_done(FACTS, ReclaimResult(Intensity.EMERGENCY, 1 << 30, 2.345, "target"))
    reporter.hibernation_issued(FACTS, spot, "image-small", ESTIMATE, "ec2")
    reporter.graceful(None, spot, "hibernation refused: nope")  # facts dropped: id remembered
    reporter.resumed(None, 901.26)
    reporter.close()
    events = {e.kind: e for e in (parse(body) for body in drill.tapped(5))}
    assert set(events) == {
        Kind.NOTICE_SEEN,
        Kind.RECLAIM_DONE,
        Kind.HIBERNATION_ISSUED,
        Kind.GRACEFUL,
        Kind.RESUMED,
    }
    assert all(e.instance_id == FACTS.instance_id for e in events.values())
    seen = events[Kind.NOTICE_SEEN].detail
    assert (seen["kind"], seen["action"], seen["deadline"]) == (
        "spot-interruption",
        "stop",
        spot.deadline,
    )
    assert 100 < seen["seconds_left"] <= 120
    reclaim = events[Kind.RECLAIM_DONE].detail
    assert (reclaim["reclaimed_bytes"], reclaim["seconds"], reclaim["stop_reason"]) == (
        1 << 30,
        2.345,
        "target",
    )
    issued = events[Kind.HIBERNATION_ISSUED].detail
    assert issued["image_bytes"] == 300 << 20
    assert issued["predicted_seconds"] == 13.0  # the write plus the fixed overhead
    assert issued["why_now"] == "image-small"
    assert events[Kind.GRACEFUL].detail["reason"] == "hibernation refused: nope"
    assert events[Kind.RESUMED].detail["slept_seconds"] == 901.3
    assert events[Kind.NOTICE_SEEN].at <= events[Kind.RESUMED].at


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """Accepts connections and never answers: the worst an endpoint can do to a caller."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def until(condition: Callable[[], bool], limit_s: float = 15.0) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.05)


def test_a_hanging_bus_delays_nothing_and_drops_with_a_log_line(
    hanging_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", hanging_endpoint)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    reporter = FleetReporter(
        "default", clock=SystemClock(), fixed_overhead_s=10.0, queue_size=2, timeout_s=1.5
    )
    with capture_logs() as logs:
        for _ in range(6):
            reporter.notice_seen(FACTS, notice())
        # Every call has returned while the sender still waits on the first request (two
        # tries of 1.5 s): the calls never wait for the bus. What did not fit is dropped.
        events = [entry["event"] for entry in logs]
        assert "fleet.publish_failed" not in events
        assert events.count("fleet.dropped") >= 3, logs
        until(lambda: any(entry["event"] == "fleet.publish_failed" for entry in logs))
        reporter.close(wait_s=0.2)
    dropped = [entry for entry in logs if entry["event"] == "fleet.dropped"]
    assert {entry["reason"] for entry in dropped} == {"queue full"}
    failed = next(entry for entry in logs if entry["event"] == "fleet.publish_failed")
    assert failed["detail_types"][0] == Kind.NOTICE_SEEN.value
    assert "timeout" in failed["error"].lower()


class RecordingClient:
    """Stands in for EventBridge: keeps what would have been put."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def put_events(self, Entries: list[Any]) -> dict[str, Any]:
        self.batches.append(list(Entries))
        return {"Entries": [{} for _ in Entries]}


def test_nothing_is_sent_for_an_instance_nobody_named() -> None:
    client = RecordingClient()
    reporter = FleetReporter(
        "default",
        clock=SystemClock(),
        fixed_overhead_s=10.0,
        client_for=lambda r, t: cast(Any, client),
    )
    reporter.resumed(None, 30.0)
    reporter.close()
    assert client.batches == []


def test_decisions_before_the_instance_id_wait_for_it() -> None:
    """A notice already out when the agent starts comes before the facts: it is published,
    with the id, once they arrive, in the order decided."""
    client = RecordingClient()
    reporter = FleetReporter(
        "default",
        clock=SystemClock(),
        fixed_overhead_s=10.0,
        client_for=lambda r, t: cast(Any, client),
    )
    reporter.resumed(None, 30.0)
    reporter.graceful(None, None, "hibernation is not configured")
    reporter.known(InstanceFacts("i-0abc", "eu-west-1", "spot", hibernation_configured=False))
    reporter.close()
    entries = [entry for batch in client.batches for entry in batch]
    assert [e["DetailType"] for e in entries] == [Kind.RESUMED.value, Kind.GRACEFUL.value]
    assert {json.loads(e["Detail"])["instance-id"] for e in entries} == {"i-0abc"}


def test_the_client_is_boto3s_standard_one_with_short_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", "http://127.0.0.1:9")
    client = events_client("eu-west-1", 0.7)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    config = vars(client.meta.config)  # botocore's Config sets its options as attributes
    assert (config["connect_timeout"], config["read_timeout"]) == (0.7, 0.7)
    assert config["retries"] == {"mode": "standard", "total_max_attempts": 2}
