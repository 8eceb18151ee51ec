"""One reclaim at a time per host: an flock on a file in the state dir.

The agent and `spotguard reclaim` both lower cgroup v1 limits; two of them on one cgroup read
each other's lowered limit as "the original". The kernel drops an flock when its holder dies
(kill -9 included), so a crash never leaves the host locked. The holder writes who it is into
the file, so a process that finds it taken can say by whom.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.process import ProcessId

LOCK_NAME = "reclaim.lock"
AGENT = "agent"  # the roles a holder writes: `spotguard run`
CLI = "reclaim"  # and `spotguard reclaim`, which the agent may ask to stop


@dataclass(frozen=True, slots=True)
class Holder:
    owner: ProcessId
    role: str  # AGENT | CLI
    since: float  # wall clock

    def describe(self) -> str:
        at = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
        who = "the agent (spotguard run)" if self.role == AGENT else f"spotguard {self.role}"
        return f"pid {self.owner.pid}, {who}, since {at:%H:%M:%S} UTC"


class HostLock:
    """Not re-entrant, not shared between threads: each user opens its own. Holders are real
    processes, looked up in the real /proc (`procs`) even behind a root prefix."""

    def __init__(self, state_dir: Path, procs: HostFS | None = None) -> None:
        self.path = state_dir / LOCK_NAME
        self._fs = procs or HostFS()
        self._fd: int | None = None

    def try_acquire(self, role: str, now: float) -> bool:
        """Take the lock if it is free; never blocks."""
        if self._fd is not None:
            raise RuntimeError("HostLock is already held by this object")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        holder = {"owner": ProcessId.current(self._fs).to_dict(), "role": role, "since": now}
        with contextlib.suppress(OSError):  # who we are is for others' messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        return True

    def release(self) -> None:
        """The file stays: unlinking it would let a waiter lock a file nobody else opens."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def holder(self) -> Holder | None:
        """Who holds it, as they wrote it; None if free, if the writer is gone (killed: the
        kernel freed the lock, the text stays), or taken a moment ago and not yet written."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        owner = ProcessId.from_dict(raw.get("owner"))
        role, since = raw.get("role"), raw.get("since")
        if owner is None or not isinstance(role, str) or not isinstance(since, int | float):
            return None
        return Holder(owner, role, float(since)) if owner.alive(self._fs) else None
