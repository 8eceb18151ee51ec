"""The state file: what the agent knows, for `spotguard status`, written atomically.

The agent's snapshot is the agent's business; this file adds who wrote it (`writer`: pid, the
process's start time, spotguard's version, when), so that `status` can tell a live agent from
the last words of a dead one. An unchanged snapshot is not rewritten: its mtime is touched, and
that mtime is the agent's heartbeat.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotguard import __version__
from spotguard.hostfs import HostFS, read_bounded
from spotguard.process import start_ticks

WRITER = "writer"
MAX_STATE_BYTES = 16 << 20


class StateFormatError(ValueError):
    """The state file is there but is not a state: the message says what is wrong with it."""


class StateFile:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall: Callable[[], float] = time.time,
        proc: HostFS | None = None,
    ) -> None:
        self.path = Path(path)
        self._wall = wall
        # Who we are, looked up once: a pid and its start time never change.
        self._pid = os.getpid()
        self._started = start_ticks(proc or HostFS(), self._pid)
        self._last: str = ""

    def write(self, state: dict[str, Any]) -> None:
        """Replace the file in one rename, so a reader never sees half a state."""
        body = json.dumps(state, sort_keys=True, default=str)
        if body == self._last and self._touch():
            return
        now = self._wall()
        writer = {
            "pid": self._pid,
            "process_start": self._started,
            "version": __version__,
            "at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "at_s": round(now, 3),
        }
        text = json.dumps({**state, WRITER: writer}, indent=2, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.utime(tmp, (now, now))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._last = body

    def _touch(self) -> bool:
        """The heartbeat of an unchanged state; False when the file is gone (write it again)."""
        now = self._wall()
        try:
            os.utime(self.path, (now, now))
        except OSError:
            return False
        return True

    def read(self) -> dict[str, Any] | None:
        """None when there is no state yet; StateFormatError when it is not a state."""
        try:
            data = read_bounded(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFormatError(f"cannot read it: {exc.strerror or exc}") from None
        try:
            loaded = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise StateFormatError("not UTF-8 text") from None
        except RecursionError:
            raise StateFormatError("nested too deeply") from None
        except ValueError as exc:
            raise StateFormatError(f"not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise StateFormatError(f"a JSON {type(loaded).__name__}, not an object")
        return loaded

    def modified(self) -> float | None:
        """The heartbeat: when the agent last wrote or touched the file."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a state holds")
