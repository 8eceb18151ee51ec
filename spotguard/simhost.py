"""A simulated host for `spotguard simulate`: the RFC's test VM as a /proc and /sys tree.

The agent runs unchanged against it (root prefix): the estimator parses its meminfo, the
signals read its /proc/stat, the reclaim engine writes its cgroup v2 `memory.reclaim` files.
Only the kernel is simulated: `KernelModel` is the engine's FileWriter, so a write to
`memory.reclaim` frees page cache, then pushes anonymous memory to swap, and rewrites
meminfo, memory.current, memory.stat and vmstat to match, as the kernel would.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096


@dataclass(slots=True)
class SimCgroup:
    file_bytes: int
    anon_bytes: int


class SimHost:
    """An 8 GiB VM at 85 % use (60 % anon, 25 % page cache) with 8 GiB of swap, all idle."""

    cgroup_root: ClassVar[str] = "/sys/fs/cgroup"  # cgroup v2, as the engine finds it

    def __init__(
        self,
        root: Path,
        *,
        ram: int = 8 * GIB,
        swap: int = 8 * GIB,
        kernel_bytes: int = 300 * MIB,
        cgroups: dict[str, SimCgroup] | None = None,
        reclaim_bytes_per_s: float = 4 * GIB,
    ) -> None:
        self.root = root
        self.ram = ram
        self.swap = swap
        self.kernel_bytes = kernel_bytes
        self.swapped = 0
        self.pswpout = 0
        self.pgsteal = 0
        self.cgroups = cgroups or {
            "batch.slice": SimCgroup(file_bytes=int(ram * 0.18), anon_bytes=int(ram * 0.20)),
            "app.slice": SimCgroup(file_bytes=int(ram * 0.07), anon_bytes=int(ram * 0.40)),
        }
        self._rate = reclaim_bytes_per_s
        self._lock = threading.Lock()
        self._ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick_forever, name="simhost", daemon=True)
        self._write_static()
        self._write_dynamic()
        self._write_stat()

    def start(self) -> SimHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- the kernel's side of memory.reclaim ------------------------------------------------
    def write(self, path: Path, data: str) -> None:
        """FileWriter: `memory.reclaim` reclaims; any other file is written as it is."""
        if path.name != "memory.reclaim":
            path.write_text(data, encoding="ascii")
            return
        name = path.parent.name
        words = data.split()
        asked = int(words[0])
        file_only = "swappiness=0" in words[1:]
        with self._lock:
            group = self.cgroups[name]
            from_file = min(asked, group.file_bytes)
            from_anon = (
                0 if file_only else min(asked - from_file, group.anon_bytes, self._swap_free)
            )
            group.file_bytes -= from_file
            group.anon_bytes -= from_anon
            self.swapped += from_anon
            self.pswpout += from_anon // PAGE
            self.pgsteal += (from_file + from_anon) // PAGE
            self._write_dynamic()
        time.sleep((from_file + from_anon) / self._rate)
        if from_file + from_anon < asked:
            raise OSError(errno.EAGAIN, "reclaimed less than asked", str(path))

    @property
    def _swap_free(self) -> int:
        return self.swap - self.swapped

    # -- the tree -------------------------------------------------------------------------
    def _put(self, absolute: str, text: str) -> None:
        """Replace the file in one rename: the agent reads these while we rewrite them."""
        path = self.root / absolute.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{path.name}.new")
        fresh.write_text(text, encoding="ascii")
        os.replace(fresh, path)

    def _write_static(self) -> None:
        self._put("/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda resume=/dev/vdb\n")
        self._put("/proc/loadavg", "0.02 0.03 0.00 1/180 4242\n")
        self._put("/proc/diskstats", "   8       0 vda 1000 0 80000 500 2000 0 160000 900 0 0 0\n")
        self._put("/sys/power/state", "freeze mem disk\n")
        self._put("/sys/power/disk", "[platform] shutdown reboot suspend test_resume\n")
        self._put("/sys/power/image_size", f"{self.ram * 2 // 5}\n")
        quiet = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        full = quiet + quiet.replace("some", "full")
        self._put("/proc/pressure/cpu", quiet)
        self._put("/proc/pressure/memory", full)
        self._put("/proc/pressure/io", full)
        self._put(f"{self.cgroup_root}/cgroup.controllers", "cpu io memory pids\n")
        for name in self.cgroups:
            base = f"{self.cgroup_root}/{name}"
            self._put(f"{base}/memory.reclaim", "")
            self._put(f"{base}/memory.pressure", full)

    def _write_dynamic(self) -> None:
        file_total = sum(g.file_bytes for g in self.cgroups.values())
        anon_total = sum(g.anon_bytes for g in self.cgroups.values())
        used = self.kernel_bytes + file_total + anon_total
        kib = {
            "MemTotal": self.ram,
            "MemFree": self.ram - used,
            "MemAvailable": self.ram - used + file_total,
            "Buffers": 0,
            "Cached": file_total,
            "SwapCached": 0,
            "Active": anon_total // 2 + file_total // 2,
            "Inactive": anon_total - anon_total // 2 + file_total - file_total // 2,
            "Active(anon)": anon_total // 2,
            "Inactive(anon)": anon_total - anon_total // 2,
            "Active(file)": file_total // 2,
            "Inactive(file)": file_total - file_total // 2,
            "SwapTotal": self.swap,
            "SwapFree": self._swap_free,
            "AnonPages": anon_total,
            "Shmem": 0,
            "Slab": self.kernel_bytes // 3,
            "SReclaimable": self.kernel_bytes // 10,
            "SUnreclaim": self.kernel_bytes // 3 - self.kernel_bytes // 10,
        }
        self._put(
            "/proc/meminfo", "".join(f"{k + ':':<16}{v // 1024:>10} kB\n" for k, v in kib.items())
        )
        self._put(
            "/proc/vmstat",
            f"pswpin 0\npswpout {self.pswpout}\npgsteal_kswapd 0\npgsteal_direct {self.pgsteal}\n",
        )
        for name, group in self.cgroups.items():
            base = f"{self.cgroup_root}/{name}"
            self._put(f"{base}/memory.current", f"{group.file_bytes + group.anon_bytes}\n")
            self._put(f"{base}/memory.stat", f"anon {group.anon_bytes}\nfile {group.file_bytes}\n")

    def _write_stat(self) -> None:
        """Two CPUs, 99 % idle: the counters move on, as jiffies do."""
        t = self._ticks
        lines = [f"cpu  {2 * t} 0 {2 * t} {198 * t} 0 0 0 0 0 0"]
        lines += [f"cpu{n} {t} 0 {t} {99 * t} 0 0 0 0 0 0" for n in range(2)]
        self._put("/proc/stat", "\n".join(lines) + "\n")

    def _tick_forever(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._ticks += 10
                self._write_stat()
            self._stop.wait(0.1)
