"""`spotguard status`: what the agent last wrote, and whether that agent is still there.

The state file outlives the agent, so the answer starts with who wrote it: the pid (checked
against /proc/<pid>/stat's start time, so a reused pid is not taken for the agent) and the
heartbeat's age. Any state that is not what the agent writes (garbage, wrong types, missing
fields) is one clear sentence and exit code 4, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from spotguard.config import Config
from spotguard.hostfs import HostFS
from spotguard.process import can_see_processes, start_ticks
from spotguard.state import WRITER, StateFile, StateFormatError
from spotguard.table import print_table
from spotguard.units import human_bytes, short

EXIT_RUNNING = 0
EXIT_UNHEALTHY = 1  # the agent runs but says it is unhealthy, or its loop is stuck
EXIT_USAGE = 2  # bad configuration or command line (as for every command)
EXIT_NOT_RUNNING = 3  # no state yet, its process is gone, or no heartbeat for too long
EXIT_BAD_STATE = 4  # the state file cannot be read or is not a state
_LARGEST = 1 << 63  # bytes, pids, ticks: all fit; more is not a state the agent wrote
EXIT_CODES = f"""exit codes:
  {EXIT_RUNNING}  the agent is running and healthy
  {EXIT_UNHEALTHY}  the agent is running but unhealthy (its own verdict, or no heartbeat)
  {EXIT_USAGE}  bad configuration or command line
  {EXIT_NOT_RUNNING}  the agent is not running: no state yet, its process is gone, or the
     state is stale (what it last knew is shown, marked as such)
  {EXIT_BAD_STATE}  the state file cannot be read or is not a spotguard state
"""


def register(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="what the running agent knows",
        description="What the agent last wrote to its state file, and whether it still runs.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="the state, plus a 'status' object")
    status.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return show(args.config_obj, as_json=args.json)


def show(
    config: Config,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: Callable[[], float] = time.time,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    path = config.agent.state_file
    state_file = StateFile(path)
    try:
        data = state_file.read()
        if data is None:
            print(f"spotguard: no state at {path}: the agent is not running (or not yet)", file=out)
            return EXIT_NOT_RUNNING
        view = StateView.parse(data)
    except StateFormatError as exc:
        print(f"spotguard: {path} is not a spotguard state: {exc}", file=err)
        return EXIT_BAD_STATE
    verdict = judge(view, state_file.modified(), config, HostFS(Path(config.agent.root)), now())
    if as_json:
        print(json.dumps({**data, "status": asdict(verdict)}, indent=2, sort_keys=True), file=out)
    else:
        print_table([*verdict.rows(), *view.rows(verdict.running)], out)
    return verdict.exit_code


# -- the state, read with types checked --------------------------------------------------------


class _Fields:
    """One JSON object of the state; each getter checks the type it promises."""

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self._data = data
        self._where = where

    def _get(self, key: str, kinds: tuple[type, ...], kind: str, required: bool) -> Any:
        value = self._data.get(key)
        if value is None and not required:
            return None
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            got = "nothing" if value is None else short(value)
            raise StateFormatError(f"{self._where}{key}: expected {kind}, got {got}")
        return value

    def text(self, key: str, *, required: bool = False) -> str | None:
        return cast(str | None, self._get(key, (str,), "a string", required))

    def flag(self, key: str, *, required: bool = False) -> bool | None:
        value = self._get(key, (bool,), "true or false", required)
        return None if value is None else bool(value)

    def integer(self, key: str) -> int | None:
        value = self._get(key, (int,), "an integer", False)
        if value is not None and abs(value) > _LARGEST:  # a float of it would overflow
            raise StateFormatError(f"{self._where}{key}: an integer far out of range")
        return None if value is None else int(value)

    def number(self, key: str) -> float | None:
        value = self._get(key, (int, float), "a number", False)
        if isinstance(value, int):
            return self.integer(key)
        return None if value is None else float(value)

    def table(self, key: str) -> _Fields | None:
        value = self._get(key, (dict,), "an object", False)
        return None if value is None else _Fields(value, f"{self._where}{key}.")

    def tables(self, key: str) -> list[_Fields]:
        return [
            _Fields(item, f"{self._where}{key}[{n}].")
            for n, item in enumerate(self._items(key, dict, "an object"))
        ]

    def texts(self, key: str) -> list[str]:
        return list(self._items(key, str, "a string"))

    def _items(self, key: str, kind: type, name: str) -> list[Any]:
        items: list[Any] = self._get(key, (list,), "a list", False) or []
        for n, item in enumerate(items):
            if not isinstance(item, kind):
                raise StateFormatError(
                    f"{self._where}{key}[{n}]: expected {name}, got {short(item)}"
                )
        return items


@dataclass(frozen=True, slots=True)
class Writer:
    pid: int
    process_start: int | None
    version: str
    at_s: float


@dataclass(frozen=True, slots=True)
class NoticeRow:
    kind: str
    id: str
    action: str
    deadline: str | None


@dataclass(frozen=True, slots=True)
class StateView:
    """What `status` shows, every field of the type it is shown as."""

    writer: Writer | None
    phase: str
    reason: str
    healthy: bool
    health_problem: str
    instance: str
    hibernation_configured: str
    hibernate_mode: str
    idle_since_s: float | None
    reclaim_running: str
    estimate: tuple[int, int, int, float] | None  # expected, floor, swap free, write s
    last_reclaim: str | None
    events: tuple[NoticeRow, ...]
    handled: frozenset[str]
    issued_for: str | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> StateView:
        """StateFormatError naming the first field that is not what the agent writes."""
        state = _Fields(data)
        facts = state.table("facts")
        estimate = state.table("estimate")
        reclaim = state.table("last_reclaim")
        return cls(
            writer=_writer(state.table(WRITER)),
            phase=state.text("phase", required=True) or "",
            reason=state.text("reason") or "-",
            healthy=bool(state.flag("healthy", required=True)),
            health_problem=state.text("health_problem") or "",
            instance=_instance(facts),
            hibernation_configured=_maybe(facts.flag("hibernation_configured") if facts else None),
            hibernate_mode=_maybe(state.text("hibernate_mode")),
            idle_since_s=_finite(state, "idle_since_s"),
            reclaim_running=state.text("reclaim_running") or "no",
            estimate=_estimate(estimate) if estimate else None,
            last_reclaim=_last_reclaim(reclaim) if reclaim else None,
            events=tuple(
                NoticeRow(
                    kind=e.text("kind", required=True) or "",
                    id=e.text("id") or "",
                    action=e.text("action") or "-",
                    deadline=e.text("deadline"),
                )
                for e in state.tables("events")
            ),
            handled=frozenset(state.texts("handled_notices")),
            issued_for=state.text("issued_for"),
        )

    def rows(self, running: bool) -> list[tuple[str, str]]:
        healthy = "yes" if self.healthy else f"NO: {self.health_problem or '?'}"
        if not running:  # the last words of an agent that is gone are no verdict on now
            healthy = f"unknown (the agent is not running; it last said {healthy})"
        rows = [
            ("phase", f"{self.phase} ({self.reason})"),
            ("healthy", healthy),
            ("instance", self.instance),
            ("hibernation configured", self.hibernation_configured),
            ("hibernate mode", self.hibernate_mode),
            ("idle for", "-" if self.idle_since_s is None else f"{self.idle_since_s:g} s"),
            ("reclaim running", self.reclaim_running),
        ]
        if self.estimate is not None:
            expected, floor, swap_free, write_s = self.estimate
            rows += [
                ("image expected", human_bytes(expected)),
                ("image floor", human_bytes(floor)),
                ("swap free", human_bytes(swap_free)),
                ("predicted write", f"{write_s:.1f} s"),
            ]
        if self.last_reclaim is not None:
            rows.append(("last reclaim", self.last_reclaim))
        rows += [(f"event {e.kind}", self._event(e, running)) for e in self.events]
        return rows

    def _event(self, event: NoticeRow, running: bool) -> str:
        text = f"{event.action} by {event.deadline or '-'}"
        if event.id and event.id == self.issued_for:
            return f"{text}, handled: hibernation issued for it"
        if event.id and event.id in self.handled:
            return f"{text}, handled"
        return f"{text}, pending" if running else f"{text}, pending when the agent stopped"


def _writer(writer: _Fields | None) -> Writer | None:
    if writer is None:
        return None
    pid = writer.integer("pid")
    at_s = _finite(writer, "at_s")
    if pid is None or pid <= 0 or at_s is None:
        raise StateFormatError(f"{WRITER}: expected a pid > 0 and at_s, the time it was written")
    return Writer(pid, writer.integer("process_start"), writer.text("version") or "?", at_s)


def _instance(facts: _Fields | None) -> str:
    if facts is None:
        return "?"
    parts = (facts.text("instance_id") or "?", facts.text("life_cycle"), facts.text("region"))
    return " ".join(p for p in parts if p)


def _estimate(estimate: _Fields) -> tuple[int, int, int, float]:
    values = [estimate.integer(k) for k in ("expected_bytes", "floor_bytes", "swap_free_bytes")]
    write_s = _finite(estimate, "predicted_write_s")
    if any(v is None for v in values) or write_s is None:
        raise StateFormatError(
            "estimate: expected expected_bytes, floor_bytes, swap_free_bytes and predicted_write_s"
        )
    expected, floor, swap_free = (int(v or 0) for v in values)
    return expected, floor, swap_free, write_s


def _last_reclaim(reclaim: _Fields) -> str:
    reclaimed = reclaim.integer("reclaimed_bytes")
    duration = _finite(reclaim, "duration_s")
    if reclaimed is None or duration is None:
        raise StateFormatError("last_reclaim: expected reclaimed_bytes and duration_s")
    how = ", ".join(x for x in (reclaim.text("intensity"), reclaim.text("stop_reason")) if x)
    return f"{human_bytes(reclaimed)} in {duration:.1f} s ({how or '?'})"


def _finite(fields: _Fields, key: str) -> float | None:
    value = fields.number(key)
    if value is not None and not math.isfinite(value):
        raise StateFormatError(f"{key}: expected a finite number")
    return value


def _maybe(value: object) -> str:
    return "?" if value is None else str(value)


# -- is the agent that wrote it still there? ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    running: bool  # as far as we can tell: its process is there, or its heartbeat is fresh
    alive: bool | None  # the writing process is there (None: no /proc to tell, or no pid)
    pid: int | None
    version: str | None
    heartbeat_age_s: float | None
    state_age_s: float | None
    stale_after_s: float
    exit_code: int
    problem: str

    def rows(self) -> list[tuple[str, str]]:
        who = f"pid {self.pid}, spotguard {self.version}" if self.pid else "pid not recorded"
        if not self.running:
            agent = f"NOT RUNNING: {self.problem} ({who})"
        else:
            agent = f"running ({who}), but {self.problem}" if self.problem else f"running ({who})"
        rows = [("agent", agent)]
        if self.heartbeat_age_s is not None:
            rows.append(("heartbeat", _age(self.heartbeat_age_s)))
        if self.state_age_s is not None:
            rows.append(("state written", _age(self.state_age_s)))
        return rows


def judge(
    view: StateView, modified: float | None, config: Config, fs: HostFS, now: float
) -> Verdict:
    """Running: the writer's process is there (same start time), else a fresh heartbeat where
    there is no /proc to ask; the heartbeat is expected every slow poll (a busy agent: every poll).
    """
    stale_after = max(3 * config.agent.slow_poll_interval, 30.0)
    heartbeat = None if modified is None else now - modified
    writer = view.writer
    state_age = None if writer is None else now - writer.at_s
    alive: bool | None = None
    problem = ""
    if writer is not None and can_see_processes(fs):
        started = start_ticks(fs, writer.pid)
        alive = started is not None and writer.process_start in (None, started)
        if started is None:
            problem = f"process {writer.pid} is gone"
        elif not alive:
            problem = f"pid {writer.pid} is now another process"
    fresh = heartbeat is not None and -stale_after <= heartbeat <= stale_after
    if heartbeat is not None and heartbeat < -stale_after:
        problem = problem or "the state is from the future (did the clock change?)"
    elif not fresh and not problem:
        problem = f"no heartbeat for {_span(heartbeat or 0.0)} (stale after {stale_after:g} s)"
    running = bool(alive) or (alive is None and fresh)
    if not running:
        code = EXIT_NOT_RUNNING
    elif not fresh:
        code, problem = EXIT_UNHEALTHY, f"stuck: {problem}"
    else:
        code = EXIT_RUNNING if view.healthy else EXIT_UNHEALTHY
    return Verdict(
        running=running,
        alive=alive,
        pid=writer.pid if writer else None,
        version=writer.version if writer else None,
        heartbeat_age_s=None if heartbeat is None else round(heartbeat, 1),
        state_age_s=None if state_age is None else round(state_age, 1),
        stale_after_s=stale_after,
        exit_code=code,
        problem=problem,
    )


def _age(seconds: float) -> str:
    return f"{_span(-seconds)} in the future" if seconds < 0 else f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
