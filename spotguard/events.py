"""One event type for every source, deduplicated in one store (as node-termination-handler does)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    SPOT_INTERRUPTION = "spot-interruption"
    REBALANCE = "rebalance-recommendation"
    SCHEDULED = "scheduled-maintenance"
    ASG_LIFECYCLE = "asg-lifecycle"


@dataclass(frozen=True, slots=True)
class Event:
    """Something the metadata service announced.

    `id` is stable across polls for the same announcement, so a notice seen a hundred
    times is handled once. `deadline` is when the action takes effect (epoch seconds),
    or None when the source gives no time.
    """

    kind: EventKind
    id: str
    action: str
    deadline: float | None = None
    description: str = ""


class EventStore:
    """Remembers which events were seen; knows which ones each source reports right now."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._active: dict[str, tuple[Event, ...]] = {}

    def update(self, source: str, events: Iterable[Event]) -> list[Event]:
        """Record what `source` reports now; return the events never seen before."""
        current = tuple(events)
        self._active[source] = current
        new = [e for e in current if e.id not in self._seen]
        self._seen.update(e.id for e in new)
        return new

    def active(self) -> tuple[Event, ...]:
        return tuple(e for events in self._active.values() for e in events)
