"""One event type for every source, deduplicated in one store (as node-termination-handler does).

An announcement keeps one identity however its fields move: AWS's metadata mock gives the spot
notice a new `time` on every request and the rebalance recommendation a new `noticeTime`. So a
spot interruption and a rebalance recommendation are one event per instance life (until a real
resume), a scheduled event is one per EventId, an ASG state one per state. The first sighting
names it; later ones may move its deadline earlier (the safe side) or change its action, and
say so once, as a change, never as a new event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    SPOT_INTERRUPTION = "spot-interruption"
    REBALANCE = "rebalance-recommendation"
    SCHEDULED = "scheduled-maintenance"
    ASG_LIFECYCLE = "asg-lifecycle"


ONE_PER_LIFE = frozenset({EventKind.SPOT_INTERRUPTION, EventKind.REBALANCE})
_RAW_IDS_KEPT = 64  # sightings remembered per event, to know them again after a resume


@dataclass(frozen=True, slots=True)
class Event:
    """Something the metadata service announced.

    A monitor sets `id` from what it read (it may hold the announced time); the store replaces
    it with the id of the first sighting, so a notice seen a hundred times is handled once.
    `deadline` is when the action takes effect (epoch seconds), or None when the source gives
    no time.
    """

    kind: EventKind
    id: str
    action: str
    deadline: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """A known event announced differently: `event` is what the store keeps now."""

    event: Event
    announced_deadline: float | None
    announced_action: str
    what: str  # why it is worth a line in the log


@dataclass(frozen=True, slots=True)
class Update:
    new: tuple[Event, ...] = ()
    changed: tuple[Change, ...] = ()


def identity(event: Event) -> str:
    """What makes two sightings the same announcement."""
    if event.kind in ONE_PER_LIFE:
        return event.kind.value
    return f"{event.kind.value}:{event.id}"


@dataclass(slots=True)
class _Known:
    event: Event
    raw_ids: list[str] = field(default_factory=list)
    time_moved: bool = False  # a moved time was reported already: later moves are quiet

    def saw(self, raw_id: str) -> None:
        if raw_id not in self.raw_ids:
            self.raw_ids = [*self.raw_ids[-(_RAW_IDS_KEPT - 1) :], raw_id]

    def merge(self, raw: Event) -> Change | None:
        kept = self.event
        deadline, action, what = kept.deadline, kept.action, ""
        if raw.deadline is not None and (deadline is None or raw.deadline < deadline):
            deadline, what = raw.deadline, "deadline moved earlier"
        elif raw.deadline is not None and raw.deadline != deadline and not self.time_moved:
            what = "time moved later: the earliest announced deadline is kept"
        if raw.action != action:
            action, what = raw.action, f"action changed from {kept.action}"
        if not what:
            return None
        self.time_moved = self.time_moved or raw.deadline != kept.deadline
        self.event = dataclasses.replace(kept, deadline=deadline, action=action)
        return Change(self.event, raw.deadline, raw.action, what)


class EventStore:
    """Remembers the events of this instance life; knows which ones each source reports now."""

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}
        self._active: dict[str, tuple[Event, ...]] = {}
        self._retired: dict[str, str] = {}  # sightings of earlier lives -> their event's id
        self._seeded: dict[str, str] = {}  # identity -> id, from the state a previous run left

    def update(self, source: str, events: Iterable[Event]) -> Update:
        """Record what `source` reports now; return the events never seen in this life, and
        the known ones announced differently."""
        new: list[Event] = []
        changed: list[Change] = []
        current: dict[str, Event] = {}
        for raw in events:
            old = self._retired.get(raw.id)
            if old is not None:  # a stale answer about an event of an earlier life
                current[raw.id] = dataclasses.replace(raw, id=old)
                continue
            key = identity(raw)
            known = self._known.get(key)
            if known is None:
                seeded = self._seeded.pop(key, None)
                known = _Known(raw if seeded is None else dataclasses.replace(raw, id=seeded))
                self._known[key] = known
                if seeded is None:
                    new.append(raw)
            else:
                change = known.merge(raw)
                if change is not None:
                    changed.append(change)
            known.saw(raw.id)
            current[key] = known.event
        self._active[source] = tuple(current.values())
        return Update(tuple(new), tuple(changed))

    def active(self) -> tuple[Event, ...]:
        return tuple(e for events in self._active.values() for e in events)

    def new_life(self) -> None:
        """After a real resume: what comes next is a new interruption, except answers the
        service still serves about the old ones (same sighting), which keep their old id."""
        for known in self._known.values():
            self._retired.update(dict.fromkeys(known.raw_ids, known.event.id))
        self._known.clear()
        self._active.clear()

    def seed(self, kind: EventKind, event_id: str) -> None:
        """A previous run of this instance life already knew this event (and ran its hooks)."""
        self._seeded[kind.value] = event_id

    def retire(self, event_ids: Iterable[str]) -> None:
        """Events handled in an earlier life: if still served, they are not new ones."""
        self._retired.update({i: i for i in event_ids})
