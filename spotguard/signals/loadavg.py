"""The one-minute load average from /proc/loadavg (counts tasks in D state too, unlike CPU idle)."""

from __future__ import annotations

from spotguard.hostfs import HostFS
from spotguard.kernelnum import average
from spotguard.signals.procfile import ProcFile


class LoadAverage:
    def __init__(self, fs: HostFS) -> None:
        self._file = ProcFile(fs.path("/proc/loadavg"))

    def read(self) -> float | None:
        text = self._file.read()
        if text is None:
            return None
        try:
            return average(text.split()[0])
        except (IndexError, ValueError):
            self._file.malformed(text.strip())
            return None
