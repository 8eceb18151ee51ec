"""structlog set-up: JSON lines with stable event names; `simulate` adds a view for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

EventSink = Callable[[str, MutableMapping[str, Any]], None]


def configure(
    *, stream: TextIO | None = None, level: str = "info", sink: EventSink | None = None
) -> None:
    """JSON to `stream` (stderr: the journal); `sink` sees every event too (simulate's timeline)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
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


def _tee(
    sink: EventSink,
) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    def processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        sink(str(event.get("event", "")), dict(event))
        return event

    return processor
