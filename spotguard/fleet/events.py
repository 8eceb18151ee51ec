"""The events of a fleet drill, as EventBridge delivers them to the queue.

EC2 sends `aws.ec2` events (the interruption warning, the rebalance recommendation, state
changes); every agent sends `spotguard` events about its own decisions. The detail types here
are the ones the module's rules match (terraform/event-patterns.json; a test keeps them equal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SOURCE = "spotguard"
EC2_SOURCE = "aws.ec2"


class Kind(StrEnum):
    """What one event says, whoever sent it."""

    WARNING = "EC2 Spot Instance Interruption Warning"
    REBALANCE = "EC2 Instance Rebalance Recommendation"
    STATE = "EC2 Instance State-change Notification"
    NOTICE_SEEN = "spotguard Notice Seen"
    RECLAIM_DONE = "spotguard Reclaim Done"
    HIBERNATION_ISSUED = "spotguard Hibernation Issued"
    GRACEFUL = "spotguard Graceful Path"
    RESUMED = "spotguard Resumed"

    @property
    def source(self) -> str:
        return SOURCE if self.value.startswith(SOURCE) else EC2_SOURCE


class BadEvent(ValueError):
    """A message that is not a drill event; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One event, reduced to what the join needs. `at` is when it happened (epoch seconds):
    the agent's own sub-second time for spotguard events, EventBridge's `time` for EC2's."""

    id: str
    kind: Kind
    instance_id: str
    at: float
    detail: Mapping[str, Any]


def parse(body: str) -> FleetEvent:
    """An EventBridge event (an SQS message body) as a FleetEvent, or BadEvent saying why."""
    try:
        envelope = json.loads(body)
    except ValueError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise BadEvent("not an EventBridge event (no JSON object)")
    detail = envelope.get("detail")
    if not isinstance(detail, dict):
        raise BadEvent("no detail object")
    try:
        kind = Kind(str(envelope.get("detail-type")))
    except ValueError:
        raise BadEvent(f"unknown detail-type {envelope.get('detail-type')!r}") from None
    if envelope.get("source") != kind.source:
        raise BadEvent(f"{kind.value!r} from source {envelope.get('source')!r}")
    instance_id = detail.get("instance-id")
    if not isinstance(instance_id, str) or not instance_id:
        raise BadEvent("no instance-id in the detail")
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise BadEvent("no event id")
    at = detail.get("at") if kind.source == SOURCE else None
    if not isinstance(at, int | float) or isinstance(at, bool):
        at = parse_time(envelope.get("time"))
    return FleetEvent(event_id, kind, instance_id, float(at), detail)


def parse_time(value: object) -> float:
    """EventBridge's `time` ("2026-12-01T20:34:48Z") as epoch seconds."""
    if not isinstance(value, str):
        raise BadEvent(f"no time: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadEvent(f"bad time {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as UTC ISO 8601 with milliseconds, for results people and tools read."""
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
