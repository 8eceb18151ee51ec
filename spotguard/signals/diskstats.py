"""Disk throughput from /proc/diskstats, counted on physical whole disks only.

Partitions, device-mapper and md volumes repeat the I/O of the disks under them, and loop,
ram and zram devices are not disks; counting them would double-count or count memory.
"""

from __future__ import annotations

import contextlib
import os
import re

from spotguard.hostfs import HostFS
from spotguard.kernelnum import counter
from spotguard.signals.procfile import ProcFile
from spotguard.signals.rate import CounterRate

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size
_NAME, _READ, _WRITTEN = 2, 5, 9
_VIRTUAL = ("loop", "ram", "zram", "dm-", "md", "nbd", "sr")


class DiskThroughput:
    """Read + write bytes per second over whole disks, between two reads."""

    def __init__(self, fs: HostFS) -> None:
        self._fs = fs
        self._file = ProcFile(fs.path("/proc/diskstats"))
        self._rate = CounterRate()

    def read(self, monotonic_now: float) -> float | None:
        """None on the first read, when the file is missing, or when no time has passed."""
        return self._rate.update(monotonic_now, self._bytes())

    def _bytes(self) -> dict[str, int]:
        text = self._file.read()
        counted: dict[str, int] = {}
        for line in (text or "").splitlines():
            fields = line.split()
            try:
                if len(fields) <= _WRITTEN:
                    raise ValueError("too few fields")
                sectors = counter(fields[_READ]) + counter(fields[_WRITTEN])
            except ValueError:
                self._file.malformed(line)
                continue
            counted[fields[_NAME]] = sectors * SECTOR
        disks = self._whole_disks(set(counted))
        return {name: value for name, value in counted.items() if name in disks}

    def _whole_disks(self, names: set[str]) -> set[str]:
        """Physical disks have a ``device`` link in /sys/block; without sysfs, go by name."""
        sys_block = self._fs.path("/sys/block")
        # No sysfs (or not a directory there): go by the names.
        with contextlib.suppress(OSError), os.scandir(sys_block) as entries:
            # sysfs spells "/" in a device name as "!" (cciss!c0d0).
            return {
                entry.name.replace("!", "/")
                for entry in entries
                if os.path.lexists(os.path.join(entry.path, "device"))
            }
        return {
            name
            for name in names
            if not name.startswith(_VIRTUAL)
            and not any(_is_partition_of(name, disk) for disk in names)
        }


def _is_partition_of(name: str, disk: str) -> bool:
    """sda1 of sda; nvme0n1p1 of nvme0n1 (a disk whose name ends in a digit adds a "p")."""
    separator = "p" if disk[-1:].isdigit() else ""
    return re.fullmatch(re.escape(disk + separator) + r"\d+", name) is not None
