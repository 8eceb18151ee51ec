"""Which process owns a lock or a journal entry, told apart from a later process with its pid.

A pid alone is not an identity: pids are reused, and a state dir outlives reboots. The start
time (ticks after boot, field 22 of /proc/<pid>/stat) and the boot id pin one process of one
boot, so "is the owner still running?" is answered without guessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from spotguard.hostfs import HostFS

BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True, slots=True)
class ProcessId:
    pid: int
    start: int  # /proc/<pid>/stat starttime; 0 where /proc does not say
    boot: str  # /proc/sys/kernel/random/boot_id; "" where it does not exist

    @classmethod
    def of(cls, fs: HostFS, pid: int) -> ProcessId | None:
        """The running process `pid`, or None when there is none (or /proc will not say)."""
        start = _start_time(fs, pid)
        return None if start is None else cls(pid, start, boot_id(fs))

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


def boot_id(fs: HostFS) -> str:
    try:
        return fs.read_text(BOOT_ID).strip()
    except OSError:
        return ""


def _start_time(fs: HostFS, pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat; the command name (field 2) may hold spaces and ')'.

    A zombie counts as gone: it holds no lock and will write no limit again.
    """
    try:
        text = fs.read_text(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # fields[0] is field 3 (state)
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None
