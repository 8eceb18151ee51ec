"""Which process a pid is: its start time from /proc/<pid>/stat, and the boot it runs in.

A pid alone is not an identity: after a crash or a reboot the number is reused, and a state
dir outlives reboots. The start time (clock ticks after boot, field 22) and the boot id pin
one process of one boot, so "is it still running?" is answered without guessing: for
`spotguard status` (is the agent alive?) and for the lock and journal owners.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from spotguard.hostfs import HostFS
from spotguard.kernelnum import counter

BOOT_ID = "/proc/sys/kernel/random/boot_id"
_STATE, _STARTTIME = 0, 19  # fields 3 and 22 of /proc/<pid>/stat, counted after "pid (comm)"


def _stat(fs: HostFS, pid: int) -> tuple[str, int] | None:
    """(state, start time) of `pid`, or None when there is no such process (or no /proc)."""
    try:
        text = fs.read_text(f"/proc/{pid}/stat")
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ")".
    fields = text[text.rfind(")") + 1 :].split()
    try:
        return fields[_STATE], counter(fields[_STARTTIME])
    except (IndexError, ValueError):
        return None


def start_ticks(fs: HostFS, pid: int) -> int | None:
    """The process's start time, or None when there is no such process (or no /proc to say)."""
    stat = _stat(fs, pid)
    return None if stat is None else stat[1]


def can_see_processes(fs: HostFS) -> bool:
    """A /proc under `fs` that lists processes (pid 1 is always there); a fake tree has none."""
    return fs.path("/proc/1").is_dir()


def boot_id(fs: HostFS) -> str:
    try:
        return fs.read_text(BOOT_ID).strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class ProcessId:
    """The owner of a lock or a journal entry."""

    pid: int
    start: int  # /proc/<pid>/stat starttime; 0 where /proc does not say
    boot: str  # /proc/sys/kernel/random/boot_id; "" where it does not exist

    @classmethod
    def of(cls, fs: HostFS, pid: int) -> ProcessId | None:
        """The running process `pid`, or None when there is none (or /proc will not say).
        A zombie counts as gone: it holds no lock and will write no limit again."""
        stat = _stat(fs, pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        return cls(pid, stat[1], boot_id(fs))

    @classmethod
    def current(cls, fs: HostFS) -> ProcessId:
        pid = os.getpid()
        return cls.of(fs, pid) or cls(pid, 0, boot_id(fs))

    def alive(self, fs: HostFS) -> bool:
        """Still the same running process: same pid, same start, same boot."""
        return self.start != 0 and ProcessId.of(fs, self.pid) == self

    def this_boot(self, fs: HostFS) -> bool:
        return self.boot == boot_id(fs)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @classmethod
    def from_dict(cls, raw: object) -> ProcessId | None:
        """None for anything that is not a well-formed record (a hand-edited or old file)."""
        if not isinstance(raw, dict):
            return None
        pid, start, boot = raw.get("pid"), raw.get("start"), raw.get("boot")
        if not (_int(pid) and _int(start) and isinstance(boot, str)):
            return None
        return cls(pid, start, boot)  # type: ignore[arg-type]


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
