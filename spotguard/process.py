"""Which process a pid is: its start time, from /proc/<pid>/stat.

A pid alone does not say the agent is alive: after a crash or a reboot the number is reused.
The start time (clock ticks after boot, field 22) does: the same pid with the same start time
is the same process.
"""

from __future__ import annotations

from spotguard.hostfs import HostFS
from spotguard.kernelnum import counter

_STARTTIME = 19  # field 22 of /proc/<pid>/stat, counted after "pid (comm)"


def start_ticks(fs: HostFS, pid: int) -> int | None:
    """The process's start time, or None when there is no such process (or no /proc to say)."""
    try:
        text = fs.read_text(f"/proc/{pid}/stat")
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ")".
    fields = text[text.rfind(")") + 1 :].split()
    try:
        return counter(fields[_STARTTIME])
    except (IndexError, ValueError):
        return None


def can_see_processes(fs: HostFS) -> bool:
    """A /proc under `fs` that lists processes (pid 1 is always there); a fake tree has none."""
    return fs.path("/proc/1").is_dir()
