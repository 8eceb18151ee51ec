"""structlog set-up: JSON lines with stable event names; `simulate` adds a view for people.

A failing dependency (the metadata service refusing connections, say) makes the same warning
every poll. `RepeatFilter` lets the first through, drops the identical ones that follow, lets
one through again every `every` seconds with `repeated=N` (how many it dropped in between),
and, once the repeats stop for a whole period (or the process exits), logs ``log.repeated``
with the final count, so the journal shows that it happened and how often without a flood.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

EventSink = Callable[[str, MutableMapping[str, Any]], None]
Emit = Callable[[str, dict[str, Any]], None]

SUPPRESSED_LEVELS = frozenset({"warning", "error", "critical"})
# Fields that differ between otherwise identical warnings: never part of a warning's identity.
VOLATILE = frozenset({"timestamp", "level", "event", "repeated"})
MAX_TRACKED = 1024  # distinct warnings remembered at once; the oldest are forgotten


def configure(
    *,
    stream: TextIO | None = None,
    level: str = "info",
    sink: EventSink | None = None,
    repeat_every: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """JSON to `stream` (stderr: the journal); `sink` sees every event too (simulate's timeline).
    Identical warnings are shown once per `repeat_every` seconds of `clock` (0: all of them)."""
    for previous in structlog.get_config().get("processors", []):
        if isinstance(previous, RepeatFilter):  # configured again: only the last one reports
            atexit.unregister(previous.flush)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if repeat_every > 0:
        repeats = RepeatFilter(clock, every=repeat_every, emit=_emit_info)
        atexit.register(repeats.flush)
        processors.append(repeats)
    processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    if sink is not None:
        processors.append(_tee(sink))
    processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


@dataclass(slots=True)
class _Seen:
    shown_at: float  # when one was last let through
    last_at: float  # when one was last seen
    dropped: int  # since shown_at
    fields: dict[str, Any]  # what identifies it, for the summary


class RepeatFilter:
    """A structlog processor (after add_log_level) that thins out identical warnings.

    A warning's identity is its event name and its fields (all but VOLATILE ones), or, for
    the events named in `identity`, just the fields listed there. `clock` is monotonic
    seconds; `emit(event, fields)` logs the end-of-burst ``log.repeated`` summary.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        every: float = 60.0,
        emit: Emit,
        identity: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._clock = clock
        self._every = every
        self._emit = emit
        self._identity = dict(identity or {})
        self._seen: dict[tuple[Any, ...], _Seen] = {}
        self._lock = threading.Lock()

    def __call__(
        self, _: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = self._clock()
        with self._lock:  # every thread logs; the summaries go out after, through us again
            ended = self._take_ended(now)
            drop = self._drop(event, str(event.get("level", method)), now)
        self._report(ended)
        if drop:
            raise structlog.DropEvent
        return event

    def flush(self) -> None:
        """Report every count not yet reported (at exit: the stream may be gone by then)."""
        with self._lock:
            pending = [(key, seen) for key, seen in self._seen.items() if seen.dropped]
            self._seen.clear()
        with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing left to tell
            self._report(pending)

    def _drop(self, event: MutableMapping[str, Any], level: str, now: float) -> bool:
        """Whether `event` repeats one shown less than a period ago; notes it either way."""
        if level not in SUPPRESSED_LEVELS:
            return False
        key = self._key(event)
        seen = self._seen.get(key)
        if seen is not None and now - seen.shown_at < self._every:
            seen.dropped += 1
            seen.last_at = now
            return True
        self._seen.pop(key, None)  # re-inserted last: the dict stays ordered by showing
        self._seen[key] = _Seen(now, now, 0, {f: event.get(f) for f in self._fields(event)})
        if seen is not None and seen.dropped:
            event["repeated"] = seen.dropped
        while len(self._seen) > MAX_TRACKED:
            self._seen.pop(next(iter(self._seen)))
        return False

    def _fields(self, event: Mapping[str, Any]) -> Sequence[str]:
        fields = self._identity.get(str(event.get("event", "")))
        return sorted(k for k in event if k not in VOLATILE) if fields is None else fields

    def _key(self, event: Mapping[str, Any]) -> tuple[Any, ...]:
        fields = self._fields(event)
        return (str(event.get("event", "")), *((f, repr(event.get(f))) for f in fields))

    def _take_ended(self, now: float) -> list[tuple[tuple[Any, ...], _Seen]]:
        """Forget warnings quiet for a whole period; those with repeats are to be reported."""
        ended = [k for k, s in self._seen.items() if now - s.last_at >= self._every]
        return [(key, seen) for key in ended if (seen := self._seen.pop(key)).dropped]

    def _report(self, counts: Sequence[tuple[tuple[Any, ...], _Seen]]) -> None:
        for key, seen in counts:
            self._emit("log.repeated", {"of": key[0], "count": seen.dropped, **seen.fields})


def _emit_info(event: str, fields: dict[str, Any]) -> None:
    """Log through the configured pipeline; info, so RepeatFilter lets it pass."""
    structlog.get_logger().info(event, **fields)


def _tee(
    sink: EventSink,
) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    def processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        sink(str(event.get("event", "")), dict(event))
        return event

    return processor
