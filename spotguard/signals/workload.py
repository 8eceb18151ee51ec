"""The workload's own activity and pressure, from its cgroups (v2 ``cpu.stat`` and PSI files).

Under emulation the least idle CPU stays busy with the guest's own overhead (and ours), so the
host's CPU idle alone rarely says "quiet" (issue 11: the gate opened 70 s into a quiet period).
The workload's cgroups say directly whether it runs. Their PSI, unlike the host's, leaves out
the stalls of our own reclaim writes, which would otherwise stop a deep reclaim by themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Protocol

from spotguard.hostfs import HostFS
from spotguard.signals import Pressure
from spotguard.signals.procfile import ProcFile
from spotguard.signals.psi import HostPressure, PsiFile, PsiReading

OWN_CGROUP = "/proc/self/cgroup"


class WorkloadCgroups:
    """The cgroups that hold the workload: `names` (relative to the root) where they exist,
    else every cgroup under the root but the branch the agent itself runs in."""

    def __init__(self, fs: HostFS, cgroup_root: str, names: tuple[str, ...] = ()) -> None:
        self._fs = fs
        self._root = cgroup_root.rstrip("/") or "/"
        self._names = tuple(n.strip("/") for n in names if n.strip("/"))
        self._own = ProcFile(fs.path(OWN_CGROUP))

    def paths(self) -> list[str]:
        """Host paths, sorted; none when the root is not a cgroup tree we can read."""
        own = self._own_path()
        if not self._names:
            return sorted(self._around(self._root, own))
        found: list[str] = []
        for path in (f"{self._root.rstrip('/')}/{n}" for n in self._names):
            if not self._fs.path(path).is_dir():
                continue
            inside = own is not None and own.startswith(path + "/")
            found += self._around(path, own) if inside else [path]
        return sorted(set(found))

    def _own_path(self) -> str | None:
        """Our cgroup from the v2 line ``0::/system.slice/spotguard.service``, under the root."""
        for line in (self._own.read() or "").splitlines():
            if line.startswith("0::/"):
                return str(PurePosixPath(self._root, line[3:].strip().lstrip("/")))
        return None

    def _around(self, parent: str, own: str | None) -> list[str]:
        """The children of `parent`, with the agent's own branch replaced by its siblings."""
        found: list[str] = []
        for name in self._children(parent):
            path = f"{parent.rstrip('/')}/{name}"
            if own is None or not (own == path or own.startswith(path + "/")):
                found.append(path)
            elif own != path:
                found += self._around(path, own)
        return found

    def _children(self, parent: str) -> list[str]:
        try:
            with os.scandir(self._fs.path(parent)) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []


class WorkloadActivity:
    """CPU the workload cgroups used between two reads, in percent of one CPU (summed)."""

    def __init__(self, cgroups: WorkloadCgroups, fs: HostFS) -> None:
        self._cgroups = cgroups
        self._fs = fs
        self._previous: tuple[float, dict[str, int]] | None = None

    def read(self, monotonic_now: float) -> float | None:
        """None on the first read, without ``cpu.stat`` (no cpu controller), or when no time
        passed. A cgroup that appeared or vanished meanwhile says nothing about the interval."""
        usage = {path: self._usage(path) for path in self._cgroups.paths()}
        current = {path: used for path, used in usage.items() if used is not None}
        previous, self._previous = self._previous, (monotonic_now, current)
        if previous is None or not current:
            return None
        then, before = previous
        elapsed = monotonic_now - then
        if elapsed <= 0:
            return None
        used_us = sum(max(v - before[p], 0) for p, v in current.items() if p in before)
        return 100.0 * used_us / 1e6 / elapsed

    def _usage(self, path: str) -> int | None:
        text = ProcFile(self._fs.path(f"{path}/cpu.stat")).read()
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value)
        return None


class PressureSource(Protocol):
    def read(self) -> Pressure: ...


class WorkloadPressure:
    """The highest memory and io PSI over the workload cgroups (avg10 "some"/"full").

    The host's PSI instead, where no workload cgroup has PSI files (cgroup v1, psi=0)."""

    def __init__(self, cgroups: WorkloadCgroups, fs: HostFS) -> None:
        self._cgroups = cgroups
        self._fs = fs
        self._host = HostPressure(fs)

    def read(self) -> Pressure:
        memory: list[PsiReading] = []
        io: list[PsiReading] = []
        for path in self._cgroups.paths():
            memory.append(PsiFile(self._fs.path(f"{path}/memory.pressure")).read())
            io.append(PsiFile(self._fs.path(f"{path}/io.pressure")).read())
        if not any(r.some is not None for r in (*memory, *io)):
            return self._host.read()
        return Pressure(
            memory_some=_highest(r.some for r in memory),
            memory_full=_highest(r.full for r in memory),
            io_some=_highest(r.some for r in io),
            io_full=_highest(r.full for r in io),
        )


def _highest(values: Iterable[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)
