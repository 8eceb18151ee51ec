"""Event sources on the metadata service, each with the same two-method interface.

Each monitor reads one path and turns it into events with stable ids, so the agent's
EventStore handles an announcement once however often it is polled. A body that is not what
the path promises raises ImdsMalformedError (the agent logs and counts it, and polls on);
404 means "nothing announced".

The spot monitor reads only ``spot/instance-action``. The deprecated ``spot/termination-time``
appears together with it, cannot say stop or hibernate (which decides whether there is any
warning time at all), and may keep a past time after a failed termination; polling it as a
fallback would double the requests for no notice that instance-action does not already give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import structlog

from spotguard.clock import Clock
from spotguard.events import Event, EventKind
from spotguard.imds import ImdsClient, ImdsMalformedError, parse_event_time, parse_rfc3339

INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
SCHEDULED = "/latest/meta-data/events/maintenance/scheduled"
LIFECYCLE = "/latest/meta-data/autoscaling/target-lifecycle-state"
INSTANCE_ID = "/latest/meta-data/instance-id"
LIFE_CYCLE = "/latest/meta-data/instance-life-cycle"
REGION = "/latest/meta-data/placement/region"
IDENTITY = "/latest/dynamic/instance-identity/document"
HIBERNATION = "/latest/meta-data/hibernation/configured"

SPOT_ACTIONS = frozenset({"terminate", "stop", "hibernate"})
# Target lifecycle states that end this instance, and what they do to it. Warm-pool stops and
# hibernations are left out on purpose: the Auto Scaling group performs those itself.
TERMINATING_STATES = {"Terminated": "terminate", "Warmed:Terminated": "terminate"}
# EC2 announces a stop or terminate about 2 minutes ahead. A time further than an hour from
# now either way is not a deadline anyone can plan with: the notice counts, its time does not.
WARNING_S = 120.0
PLAUSIBLE_S = 3600.0

log = structlog.get_logger()


class Monitor(Protocol):
    @property
    def kind(self) -> EventKind: ...

    def poll(self) -> list[Event]:
        """What the source announces right now ([] for nothing); raises ImdsError on failure."""


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    instance_id: str
    region: str
    life_cycle: str  # spot | on-demand | "" when unknown
    hibernation_configured: bool | None  # None: the service did not say


class _OnePath:
    """What every monitor shares: the client it reads one path with, and its kind."""

    _kind: ClassVar[EventKind]

    def __init__(self, client: ImdsClient) -> None:
        self._client = client

    @property
    def kind(self) -> EventKind:
        return self._kind


class SpotInterruptionMonitor(_OnePath):
    """``{"action": "terminate"|"stop"|"hibernate", "time": "...Z"}``; deadline = time.

    A notice whose time cannot be read or is absurd (year 9999) is still a notice: it gets
    the 2 minutes EC2 promises from now, and the store keeps the earliest deadline it saw.
    """

    _kind = EventKind.SPOT_INTERRUPTION

    def __init__(self, client: ImdsClient, clock: Clock) -> None:
        super().__init__(client)
        self._clock = clock
        self._warned = ""

    def poll(self) -> list[Event]:
        body = self._client.get_json(INSTANCE_ACTION)
        if body is None:
            return []
        action = _field(body, "action", INSTANCE_ACTION)
        when = _field(body, "time", INSTANCE_ACTION)
        if action not in SPOT_ACTIONS:
            raise ImdsMalformedError(f"{INSTANCE_ACTION}: unknown action {action!r}")
        return [Event(self.kind, f"spot-itn:{action}:{when}", action, self._deadline(when))]

    def _deadline(self, when: str) -> float:
        now = self._clock.wall()
        try:
            deadline = parse_rfc3339(when, INSTANCE_ACTION)
            problem = "" if abs(deadline - now) <= PLAUSIBLE_S else "more than an hour from now"
        except ImdsMalformedError as exc:
            deadline, problem = now + WARNING_S, str(exc)
        if not problem:
            return deadline
        if when != self._warned:
            self._warned = when
            log.warning(
                "notice.time_unusable",
                time=when[:80],
                problem=problem,
                assumed=f"{WARNING_S:g} s from the first sighting",
            )
        return now + WARNING_S


class RebalanceMonitor(_OnePath):
    """``{"noticeTime": "...Z"}``: a hint to prepare, with no deadline of its own."""

    _kind = EventKind.REBALANCE

    def poll(self) -> list[Event]:
        body = self._client.get_json(REBALANCE)
        if body is None:
            return []
        noticed = _field(body, "noticeTime", REBALANCE)
        parse_rfc3339(noticed, REBALANCE)  # reject a garbled time rather than pass it on
        return [Event(self.kind, f"rebalance:{noticed}", "rebalance", None, f"since {noticed}")]


class ScheduledEventMonitor(_OnePath):
    """Active scheduled events; action = Code (instance-stop, system-reboot, ...)."""

    _kind = EventKind.SCHEDULED

    def poll(self) -> list[Event]:
        body = self._client.get_json(SCHEDULED)
        if body is None:
            return []
        if not isinstance(body, list):
            raise ImdsMalformedError(f"{SCHEDULED}: expected a JSON array, got {body!r:.80}")
        return [
            Event(
                self.kind,
                _field(entry, "EventId", SCHEDULED),
                _field(entry, "Code", SCHEDULED),
                parse_event_time(_field(entry, "NotBefore", SCHEDULED), SCHEDULED),
                str(entry.get("Description", "")),
            )
            for entry in body
            if _field(entry, "State", SCHEDULED) == "active"
        ]


class LifecycleMonitor(_OnePath):
    """The Auto Scaling target lifecycle state; an event only when it ends the instance."""

    _kind = EventKind.ASG_LIFECYCLE

    def poll(self) -> list[Event]:
        state = self._client.get_text(LIFECYCLE)
        if state is None or state.strip() not in TERMINATING_STATES:
            return []
        state = state.strip()
        return [Event(self.kind, f"asg:{state}", TERMINATING_STATES[state], None, state)]


def default_monitors(client_for: Callable[[], ImdsClient], clock: Clock) -> list[Monitor]:
    """Each monitor gets a client of its own: they are polled in threads of their own, so a
    slow path never holds up the spot notice's."""
    return [
        SpotInterruptionMonitor(client_for(), clock),
        RebalanceMonitor(client_for()),
        ScheduledEventMonitor(client_for()),
        LifecycleMonitor(client_for()),
    ]


def fetch_facts(client: ImdsClient) -> InstanceFacts:
    """What the agent needs to know about its instance; raises ImdsError if the service is down.

    Missing or garbled optional answers become "" / None instead of failing the whole lookup.
    """
    return InstanceFacts(
        instance_id=(client.get_text(INSTANCE_ID) or "").strip(),
        region=(client.get_text(REGION) or "").strip() or _identity_region(client),
        life_cycle=(client.get_text(LIFE_CYCLE) or "").strip(),
        hibernation_configured=_hibernation_configured(client),
    )


def _identity_region(client: ImdsClient) -> str:
    try:
        document = client.get_json(IDENTITY)
    except ImdsMalformedError as exc:
        log.warning("imds.facts.malformed", path=IDENTITY, error=str(exc))
        return ""
    region = document.get("region") if isinstance(document, dict) else None
    return region if isinstance(region, str) else ""


# What the agent and `spotguard check` both say when hibernation/configured gets no answer
# (AWS's metadata mock does not serve it), and the one policy behind it.
HIBERNATION_UNKNOWN = (
    "not served by this metadata service; the agent will try StopInstances(Hibernate=True) "
    "and take the graceful path if EC2 refuses"
)


def _hibernation_configured(client: ImdsClient) -> bool | None:
    text = (client.get_text(HIBERNATION) or "").strip()
    if text not in ("true", "false"):
        if text:
            log.warning("imds.facts.malformed", path=HIBERNATION, body=text[:80])
        return None
    return text == "true"


def _field(body: Any, key: str, path: str) -> str:
    """A required string field of a JSON object, or ImdsMalformedError naming it."""
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ImdsMalformedError(f"{path}: missing or non-string {key!r} in {body!r:.80}")
    return value
