"""Pressure stall information: /proc/pressure/* and cgroup v2 ``*.pressure`` files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.kernelnum import average
from spotguard.signals import Pressure
from spotguard.signals.procfile import ProcFile


@dataclass(frozen=True, slots=True)
class PsiReading:
    """The avg10 percentages of one PSI file; None where the file has no such line."""

    some: float | None = None
    full: float | None = None


def parse_psi(text: str, malformed: Callable[[str], None] = lambda line: None) -> PsiReading:
    """Parse ``some avg10=0.12 avg60=... total=...`` / ``full ...`` lines; skip anything else."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = {key: value for key, _, value in (f.partition("=") for f in rest.split())}
        try:
            avg10 = average(fields["avg10"])
        except (KeyError, ValueError):
            avg10 = None
        if kind in ("some", "full") and avg10 is not None:
            found[kind] = avg10
        elif line.strip():
            malformed(line)
    return PsiReading(found.get("some"), found.get("full"))


class PsiFile:
    """One PSI file, re-read on every call (e.g. a cgroup's ``memory.pressure``)."""

    def __init__(self, path: Path) -> None:
        self._file = ProcFile(path)

    def read(self) -> PsiReading:
        """All None when the file is missing (kernel without PSI, or ``psi=0``)."""
        text = self._file.read()
        return PsiReading() if text is None else parse_psi(text, self._file.malformed)


class HostPressure:
    """System-wide pressure from /proc/pressure/{cpu,memory,io}."""

    def __init__(self, fs: HostFS) -> None:
        self._cpu = PsiFile(fs.path("/proc/pressure/cpu"))
        self._memory = PsiFile(fs.path("/proc/pressure/memory"))
        self._io = PsiFile(fs.path("/proc/pressure/io"))

    def read(self) -> Pressure:
        memory, io = self._memory.read(), self._io.read()
        return Pressure(
            cpu_some=self._cpu.read().some,
            memory_some=memory.some,
            memory_full=memory.full,
            io_some=io.some,
            io_full=io.full,
        )
