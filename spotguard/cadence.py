"""The cadence of the sources: the spot notice every poll, the rest on their own schedules.

Each source is polled in a thread of its own and posts what it read into one inbox, which the
control loop drains without blocking. So a metadata path that hangs (a listener that accepts
and never answers, a slow drip) costs its own timeout in its own thread: the spot notice's
poll never waits behind it, nor behind the estimator, hooks, the webhook or the EC2 call,
which run in the control loop. Early warnings come minutes ahead and are polled every
`slow_poll_interval` while nothing goes on; once a stop/terminate notice is out they are not
polled at all, and the time goes to the decision.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from spotguard.config import AgentConfig
from spotguard.events import Event, EventKind
from spotguard.imds import ImdsError
from spotguard.monitors import InstanceFacts, Monitor

log = structlog.get_logger()

FACTS = "facts"


class Pace(StrEnum):
    CALM = "calm"  # nothing going on: early warnings every slow_poll_interval
    BUSY = "busy"  # something announced or running: every source every poll
    DECIDING = "deciding"  # a stop/terminate notice: only the notice (and the facts it needs)


@dataclass(frozen=True, slots=True)
class Reading:
    """What one poll of one source gave."""

    source: str  # an EventKind value, or FACTS
    events: tuple[Event, ...] = ()
    facts: InstanceFacts | None = None
    error: str = ""  # "": the poll succeeded
    took_s: float = 0.0  # the whole poll, token and GET: what the notice path waits per turn

    @property
    def ok(self) -> bool:
        return not self.error


class Inbox:
    """Readings from the source threads; the control loop takes them all at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Reading] = []
        self._woken = False

    def post(self, reading: Reading, *, wake: bool = True) -> None:
        """`wake=False`: nothing urgent, the next tick (a slow poll away while calm) takes it."""
        with self._cond:
            self._items.append(reading)
            if wake:
                self._woken = True
                self._cond.notify_all()

    def take(self) -> list[Reading]:
        with self._cond:
            items, self._items = self._items, []
            return items

    def wait(self, timeout: float) -> None:
        """Until something urgent is posted, `wake` is called, or `timeout` passes."""
        with self._cond:
            if not self._woken:
                self._cond.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()


class _Source:
    """One source in its own thread: poll, post, wait for the next turn (None: paused)."""

    def __init__(
        self,
        name: str,
        poll: Callable[[], Reading],
        every: Callable[[], float | None],
        inbox: Inbox,
    ) -> None:
        self.name = name
        self._poll = poll
        self._every = every
        self._inbox = inbox
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"poll-{name}", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def nudge(self) -> None:
        """Look at the schedule again now (the pace changed)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            interval = self._every()
            if interval is None:
                self._wake.wait()
                self._wake.clear()
                continue
            began = time.monotonic()  # real time: these threads pace real requests
            reading = dataclasses.replace(self._read(), took_s=time.monotonic() - began)
            if self._stop.is_set():
                return
            # A reading with nothing to say need not cost a tick of its own: while calm the
            # loop ticks every slow_poll_interval, and any event or the facts wake it at once.
            self._inbox.post(reading, wake=self.name == FACTS or bool(reading.events))
            self._failing = _report(self.name, reading, self._failing)
            self._wake.wait(max(interval - (time.monotonic() - began), 0.0))
            self._wake.clear()

    def _read(self) -> Reading:
        try:
            return self._poll()
        except ImdsError as exc:
            return Reading(self.name, error=str(exc))
        except Exception as exc:  # a bug in one source must not end its polling
            log.exception("source.failed", source=self.name)
            return Reading(self.name, error=f"{type(exc).__name__}: {exc}")


def _report(source: str, reading: Reading, failing: bool) -> bool:
    """Log a failed poll (logs.py's RepeatFilter thins out the identical ones that follow) and
    a recovery; returns whether the source is failing now."""
    if not reading.ok:
        log.warning("imds.error", source=source, error=reading.error)
        return True
    if failing:
        log.info("imds.recovered", source=source)
    return False


class Cadence:
    """Starts, paces and stops the source threads; the control loop reads `inbox`."""

    def __init__(
        self,
        config: AgentConfig,
        monitors: Sequence[Monitor],
        fetch_facts: Callable[[], InstanceFacts],
    ) -> None:
        self.inbox = Inbox()
        self._config = config
        self._pace = Pace.CALM
        self._facts_wanted = True
        self._started = False
        self._lock = threading.Lock()
        self._sources = [self._monitor(m) for m in monitors]
        self._sources.append(
            _Source(FACTS, lambda: self._facts(fetch_facts), self._facts_every, self.inbox)
        )

    @property
    def pace(self) -> Pace:
        return self._pace

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        for source in self._sources:
            source.start()

    def stop(self) -> None:
        """Threads end at their next turn; one stuck in a request is a daemon and dies with us."""
        for source in self._sources:
            source.stop()
        self.inbox.wake()

    def set_pace(self, pace: Pace) -> None:
        if pace is self._pace:
            return
        self._pace = pace
        for source in self._sources:
            source.nudge()

    def want_facts(self) -> None:
        """Fetch the instance facts again (after a resume)."""
        self._facts_wanted = True
        for source in self._sources:
            if source.name == FACTS:
                source.nudge()

    def _monitor(self, monitor: Monitor) -> _Source:
        kind = monitor.kind

        def poll() -> Reading:
            return Reading(kind.value, events=tuple(monitor.poll()))

        every = self._notice_every if kind is EventKind.SPOT_INTERRUPTION else self._warning_every
        return _Source(kind.value, poll, every, self.inbox)

    def _notice_every(self) -> float:
        return self._config.poll_interval

    def _warning_every(self) -> float | None:
        if self._pace is Pace.DECIDING:
            return None
        if self._pace is Pace.BUSY:
            return self._config.poll_interval
        return self._config.slow_poll_interval

    def _facts_every(self) -> float | None:
        return self._config.poll_interval if self._facts_wanted else None

    def _facts(self, fetch: Callable[[], InstanceFacts]) -> Reading:
        facts = fetch()
        self._facts_wanted = False
        return Reading(FACTS, facts=facts)
