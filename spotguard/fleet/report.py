"""The drill, instance by instance: every event joined by instance id, judged against its deadline.

Order-free and idempotent on purpose: SQS delivers at least once and in any order, so each
event only adds a fact (earliest warning, first hibernation issued, every state change seen)
and the verdicts are derived from the facts when asked, never updated step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from spotguard.fleet.events import FleetEvent, Kind, iso
from spotguard.units import human_bytes

EC2_NOTICE_S = 120.0  # a spot interruption warning comes two minutes ahead


class Outcome(StrEnum):
    PENDING = "pending"  # warned, neither stopped nor past its deadline
    HIBERNATED = "hibernated"  # stopped (or, without state changes, issued) before the deadline
    GRACEFUL = "graceful"  # the agent said hibernation was impossible, and why
    MISSED = "missed"  # past the deadline without a hibernation in time
    NOT_WARNED = "not-warned"  # events, but no warning (yet): not part of the drill's count


@dataclass(slots=True)
class Instance:
    """What is known of one instance; fields only ever gain information."""

    instance_id: str
    warning_at: float | None = None
    action: str = ""
    notice_deadline: float | None = None  # the agent's, from the metadata service
    rebalance_at: float | None = None
    notice_seen_at: float | None = None
    reclaims: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # by event id
    hibernate_at: float | None = None
    hibernate: Mapping[str, Any] = field(default_factory=dict)
    graceful_at: float | None = None
    graceful_reason: str = ""
    resumed_at: float | None = None
    slept_s: float | None = None
    states: set[tuple[float, str]] = field(default_factory=set)

    def add(self, event: FleetEvent) -> None:
        detail, at = event.detail, event.at
        match event.kind:
            case Kind.WARNING:
                if self.warning_at is None or at < self.warning_at:
                    self.warning_at = at
                    self.action = str(detail.get("instance-action", "")) or self.action
            case Kind.REBALANCE:
                self.rebalance_at = _earliest(self.rebalance_at, at)
            case Kind.STATE:
                self.states.add((at, str(detail.get("state", ""))))
            case Kind.NOTICE_SEEN if detail.get("kind") == "spot-interruption":
                self.notice_seen_at = _earliest(self.notice_seen_at, at)
                deadline = detail.get("deadline")
                if isinstance(deadline, int | float) and not isinstance(deadline, bool):
                    self.notice_deadline = float(deadline)
                self.action = self.action or str(detail.get("action", ""))
            case Kind.NOTICE_SEEN:
                if detail.get("kind") == "rebalance-recommendation":
                    self.rebalance_at = _earliest(self.rebalance_at, at)
            case Kind.RECLAIM_DONE:
                self.reclaims[event.id] = detail
            case Kind.HIBERNATION_ISSUED:
                if self.hibernate_at is None or at < self.hibernate_at:
                    self.hibernate_at, self.hibernate = at, detail
            case Kind.GRACEFUL:
                if self.graceful_at is None or at < self.graceful_at:
                    self.graceful_at, self.graceful_reason = at, str(detail.get("reason", ""))
            case Kind.RESUMED:
                self.resumed_at = _earliest(self.resumed_at, at)
                slept = detail.get("slept_seconds")
                self.slept_s = float(slept) if isinstance(slept, int | float) else None

    @property
    def warned_at(self) -> float | None:
        """EC2's warning, or the agent's notice when EC2's event has not arrived (yet)."""
        return self.warning_at if self.warning_at is not None else self.notice_seen_at

    def deadline(self, notice_s: float) -> float | None:
        if self.notice_deadline is not None:
            return self.notice_deadline
        return None if self.warned_at is None else self.warned_at + notice_s

    def state_at(self, name: str, after: float | None = None) -> float | None:
        """The first time the instance entered `name` after `after` (the warning)."""
        times = [t for t, s in self.states if s == name and (after is None or t >= after)]
        return min(times, default=None)

    def stopped_at(self) -> float | None:
        return self.state_at("stopped", self.warned_at)

    def back_at(self) -> float | None:
        """Running again after the stop: resumed from hibernation (or restarted)."""
        stopped = self.stopped_at()
        if self.resumed_at is not None:
            return self.resumed_at
        return None if stopped is None else self.state_at("running", stopped)

    def outcome(self, now: float, notice_s: float) -> Outcome:
        warned, deadline = self.warned_at, self.deadline(notice_s)
        if warned is None or deadline is None:
            return Outcome.NOT_WARNED
        if self.graceful_at is not None:
            return Outcome.GRACEFUL
        stopped = self.stopped_at()
        issued_in_time = self.action == "hibernate" or (
            self.hibernate_at is not None and self.hibernate_at <= deadline
        )
        if stopped is not None:
            return Outcome.HIBERNATED if issued_in_time and stopped <= deadline else Outcome.MISSED
        if now < deadline:
            return Outcome.PENDING
        # No state change arrived: the agent's own word is all there is.
        return Outcome.HIBERNATED if issued_in_time else Outcome.MISSED

    def settled(self, now: float, notice_s: float) -> bool:
        deadline = self.deadline(notice_s)
        return self.stopped_at() is not None or (deadline is not None and now >= deadline)


def _earliest(current: float | None, at: float) -> float:
    return at if current is None or at < current else current


@dataclass(frozen=True, slots=True)
class Summary:
    warned: int
    hibernated: int
    graceful: int
    missed: int
    pending: int
    warning_to_stopped_p50: float | None
    warning_to_stopped_p99: float | None

    def line(self) -> str:
        p50, p99 = (
            "-" if v is None else f"{v:.1f} s"
            for v in (self.warning_to_stopped_p50, self.warning_to_stopped_p99)
        )
        pending = f", {self.pending} pending" if self.pending else ""
        return (
            f"{self.warned} warned, {self.hibernated} hibernated before their deadline, "
            f"{self.graceful} graceful, {self.missed} missed{pending}; "
            f"warning->stopped p50 {p50}, p99 {p99}"
        )


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """Nearest rank: an observed value, never an interpolated one."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


class DrillReport:
    """Every instance heard of, and the drill's counts. `notice_s`: the warning's lead time
    when the agent did not report the metadata service's deadline."""

    def __init__(self, notice_s: float = EC2_NOTICE_S, since: float | None = None) -> None:
        self.notice_s = notice_s
        self.since = since  # events before it belong to an earlier drill
        self.instances: dict[str, Instance] = {}
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.stale = 0
        self.last_event_at: float | None = None

    def add(self, event: FleetEvent) -> bool:
        """Join one event; False for a duplicate or a stale one."""
        if event.id in self.seen_ids:
            self.duplicates += 1
            return False
        self.seen_ids.add(event.id)
        if self.since is not None and event.at < self.since:
            self.stale += 1
            return False
        instance = self.instances.get(event.instance_id)
        if instance is None:
            instance = self.instances[event.instance_id] = Instance(event.instance_id)
        instance.add(event)
        return True

    def warned(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.warned_at is not None]

    def settled(self, now: float, expect: int = 0) -> bool:
        """Every warned instance stopped or past its deadline, and at least `expect` (1) warned."""
        warned = self.warned()
        return len(warned) >= max(expect, 1) and all(i.settled(now, self.notice_s) for i in warned)

    def summary(self, now: float) -> Summary:
        outcomes = [i.outcome(now, self.notice_s) for i in self.warned()]
        lead = [
            stopped - warned
            for i in self.warned()
            if (stopped := i.stopped_at()) is not None and (warned := i.warned_at) is not None
        ]
        return Summary(
            warned=len(outcomes),
            hibernated=outcomes.count(Outcome.HIBERNATED),
            graceful=outcomes.count(Outcome.GRACEFUL),
            missed=outcomes.count(Outcome.MISSED),
            pending=outcomes.count(Outcome.PENDING),
            warning_to_stopped_p50=percentile(lead, 0.5),
            warning_to_stopped_p99=percentile(lead, 0.99),
        )

    def passed(self, now: float) -> bool:
        """The promise held for every warned instance: all hibernated in time."""
        summary = self.summary(now)
        return summary.warned > 0 and summary.hibernated == summary.warned

    # -- for people and for tools --------------------------------------------------------------
    def rows(self, now: float) -> list[list[str]]:
        header = [
            "instance",
            "warning at",
            "action",
            "deadline",
            "reclaim",
            "hibernate issued",
            "stopping",
            "stopped",
            "resumed",
            "outcome",
        ]
        body = [self._row(i, now) for i in sorted(self.instances.values(), key=_order)]
        return [header, *body]

    def _row(self, i: Instance, now: float) -> list[str]:
        base = i.warned_at
        rel = _relative(base)
        reclaim = "-"
        if i.reclaims:
            total = sum(int(r.get("reclaimed_bytes") or 0) for r in i.reclaims.values())
            seconds = sum(float(r.get("seconds") or 0) for r in i.reclaims.values())
            last = max(i.reclaims.values(), key=lambda r: float(r.get("at") or 0))
            reclaim = f"{human_bytes(total)} {seconds:.1f}s {last.get('stop_reason', '')}"
        hibernate = "-"
        if i.hibernate_at is not None:
            image = i.hibernate.get("image_bytes")
            left = i.hibernate.get("seconds_left")
            hibernate = " ".join(
                part
                for part in (
                    rel(i.hibernate_at),
                    human_bytes(image) if isinstance(image, int) else "",
                    f"{left}s left" if left is not None else "",
                )
                if part
            )
        elif i.graceful_at is not None:
            hibernate = f"graceful: {i.graceful_reason}"
        back = i.back_at()
        resumed = "-" if back is None else rel(back)
        if back is not None and i.slept_s is not None:
            resumed += f" slept {i.slept_s:.0f}s"
        return [
            i.instance_id,
            _clock_time(base),
            i.action or "-",
            rel(i.deadline(self.notice_s)),
            reclaim,
            hibernate,
            rel(i.state_at("stopping", base)),
            rel(i.stopped_at()),
            resumed,
            i.outcome(now, self.notice_s).value,
        ]

    def to_json(self, now: float) -> dict[str, Any]:
        summary = self.summary(now)
        return {
            "summary": {
                "warned": summary.warned,
                "hibernated": summary.hibernated,
                "graceful": summary.graceful,
                "missed": summary.missed,
                "pending": summary.pending,
                "warning_to_stopped_p50_s": summary.warning_to_stopped_p50,
                "warning_to_stopped_p99_s": summary.warning_to_stopped_p99,
                "settled": self.settled(now),
                "passed": self.passed(now),
            },
            "messages": {
                "events": len(self.seen_ids),
                "duplicates": self.duplicates,
                "stale": self.stale,
            },
            "instances": [
                self._instance_json(i, now) for i in sorted(self.instances.values(), key=_order)
            ],
        }

    def _instance_json(self, i: Instance, now: float) -> dict[str, Any]:
        base = i.warned_at
        return {
            "instance_id": i.instance_id,
            "outcome": i.outcome(now, self.notice_s).value,
            "warning_at": iso(base),
            "action": i.action or None,
            "deadline": iso(i.deadline(self.notice_s)),
            "rebalance_at": iso(i.rebalance_at),
            "reclaims": sorted(
                (dict(r) for r in i.reclaims.values()), key=lambda r: float(r.get("at") or 0)
            ),
            "hibernate_issued_at": iso(i.hibernate_at),
            "hibernate": dict(i.hibernate) or None,
            "graceful_reason": i.graceful_reason or None,
            "stopping_at": iso(i.state_at("stopping", base)),
            "stopped_at": iso(i.stopped_at()),
            "resumed_at": iso(i.back_at()),
            "slept_s": i.slept_s,
        }


def _order(instance: Instance) -> tuple[float, str]:
    warned = instance.warned_at
    return (math.inf if warned is None else warned, instance.instance_id)


def _relative(base: float | None) -> Callable[[float | None], str]:
    """Times as seconds after the warning, which is what a person compares."""

    def show(at: float | None) -> str:
        if at is None:
            return "-"
        if base is None:
            return _clock_time(at)
        return f"{at - base:+.1f}s"

    return show


def _clock_time(at: float | None) -> str:
    text = iso(at)
    return "-" if text is None else text[11:19]
