"""CPU idle from /proc/stat: the least idle CPU decides, as in the RFC's daemon (>= 95 %)."""

from __future__ import annotations

from spotguard.hostfs import HostFS
from spotguard.kernelnum import counter
from spotguard.signals.procfile import ProcFile

# user nice system idle iowait irq softirq steal; guest time is already inside user and nice.
_COUNTED = 8
_IDLE, _IOWAIT = 3, 4


class CpuIdle:
    """Lowest per-CPU idle percentage between two reads; one busy core means "not idle"."""

    def __init__(self, fs: HostFS) -> None:
        self._file = ProcFile(fs.path("/proc/stat"))
        self._previous: dict[str, tuple[int, int]] = {}

    def read(self) -> float | None:
        """None on the first read, when /proc/stat is missing, or when no CPU has ticked."""
        current = self._ticks()
        previous, self._previous = self._previous, current
        # A CPU whose counters went back (hotplug, a bad read) says nothing about the interval.
        idle_percents = [
            100.0 * (idle - previous[cpu][0]) / (total - previous[cpu][1])
            for cpu, (idle, total) in current.items()
            if cpu in previous
            and total > previous[cpu][1]
            and 0 <= idle - previous[cpu][0] <= total - previous[cpu][1]
        ]
        return min(idle_percents, default=None)

    def _ticks(self) -> dict[str, tuple[int, int]]:
        """(idle + iowait, total) ticks per CPU."""
        text = self._file.read()
        ticks: dict[str, tuple[int, int]] = {}
        for line in (text or "").splitlines():
            name, _, rest = line.partition(" ")
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            fields = rest.split()[:_COUNTED]
            try:
                if len(fields) <= _IOWAIT:
                    raise ValueError("too few fields")
                values = [counter(f) for f in fields]
            except ValueError:
                self._file.malformed(line)
                continue
            ticks[name] = (values[_IDLE] + values[_IOWAIT], sum(values))
        return ticks
