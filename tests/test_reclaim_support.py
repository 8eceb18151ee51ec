"""Shared parts for the reclaim tests and bench (no tests here).

Fakes: a /proc and cgroup tree in tmp_path, and a FileWriter that answers cgroup writes the way
the kernel does, errno included. Real: `Sandbox`, a cgroup v1 memory subtree of our own with
processes in it that hold page cache and anonymous memory.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spotguard.hostfs import HostFS

MIB = 1 << 20
QUIET = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def psi(some: float) -> str:
    return f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 total=0\n"


@dataclass
class FakeGroup:
    file: int
    anon: int
    limit: int = (1 << 63) - 4096
    swap_cached: int = 0  # of `anon`: written to swap, still charged and in RAM


class FakeHost:
    """A host tree: meminfo, vmstat, PSI, and memory cgroups (v2 files, or v1 with `v1=True`)."""

    def __init__(self, root: Path, *, v1: bool = False, swap_free: int = 0) -> None:
        self.root = root
        self.fs = HostFS(root)
        self.v1 = v1
        self.swap_free = swap_free
        self.pswpout = 0  # pages
        self.groups: dict[str, FakeGroup] = {}
        self.cgroup_root = "/sys/fs/cgroup/memory" if v1 else "/sys/fs/cgroup"
        self.put("/proc/pressure/memory", QUIET)
        self.put("/proc/pressure/io", QUIET)
        self.put("/proc/vmstat", "pswpout 0\npgsteal_direct 0\npgsteal_proactive 0\n")
        base = self.cgroup_root
        if v1:
            self.put(f"{base}/memory.limit_in_bytes", "9223372036854771712\n")
            self.put(f"{base}/memory.force_empty", "")
        else:
            self.put(f"{base}/cgroup.controllers", "cpu io memory pids\n")
            self.put(f"{base}/memory.reclaim", "")
        self.write_meminfo()

    def put(self, absolute: str, text: str) -> None:
        path = self.fs.path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="ascii")

    def read(self, absolute: str) -> str:
        return self.fs.read_text(absolute)

    def add(self, name: str, *, file: int, anon: int = 0, swap_reclaim: bool = False) -> None:
        self.groups[name] = FakeGroup(file, anon)
        base = f"{self.cgroup_root}/{name}"
        self.put(f"{base}/cgroup.procs", "")
        if self.v1:
            self.put(f"{base}/memory.force_empty", "")
        else:
            self.put(f"{base}/memory.reclaim", "")
            self.put(f"{base}/memory.pressure", QUIET)
        if swap_reclaim:
            self.put(f"{base}/memory.swap.reclaim", "0\n")
        self.sync(name)

    def sync(self, name: str) -> None:
        """Rewrite the cgroup's counters from the model."""
        group, base = self.groups[name], f"{self.cgroup_root}/{name}"
        total = group.file + group.anon
        half_file, half_anon = group.file // 2, group.anon // 2
        if self.v1:
            self.put(f"{base}/memory.usage_in_bytes", f"{total}\n")
            self.put(f"{base}/memory.limit_in_bytes", f"{group.limit}\n")
            stat = (
                f"cache {group.file}\nrss {group.anon}\n"
                f"total_inactive_file {half_file}\ntotal_active_file {group.file - half_file}\n"
                f"total_inactive_anon {half_anon}\ntotal_active_anon {group.anon - half_anon}\n"
            )
        else:
            self.put(f"{base}/memory.current", f"{total}\n")
            stat = (
                f"anon {group.anon}\nfile {group.file}\n"
                f"inactive_anon {half_anon}\nactive_anon {group.anon - half_anon}\n"
                f"inactive_file {half_file}\nactive_file {group.file - half_file}\n"
            )
        self.put(f"{base}/memory.stat", stat)

    def write_meminfo(self, *, total: int = 8192 * MIB, free: int = 4096 * MIB) -> None:
        file = sum(g.file for g in self.groups.values())
        anon = sum(g.anon for g in self.groups.values())
        rows = {
            "MemTotal": total,
            "MemFree": free,
            "Cached": file,
            "SReclaimable": 64 * MIB,
            "Active(anon)": anon // 2,
            "Inactive(anon)": anon - anon // 2,
            "Active(file)": file // 2,
            "Inactive(file)": file - file // 2,
            "SwapCached": sum(g.swap_cached for g in self.groups.values()),
            "SwapTotal": self.swap_free,
            "SwapFree": self.swap_free,
        }
        self.put("/proc/meminfo", "".join(f"{k}: {v // 1024} kB\n" for k, v in rows.items()))

    def cgroup_path(self, name: str) -> Path:
        return self.fs.path(f"{self.cgroup_root}/{name}")


Hook = Callable[[Path, str], None]


@dataclass
class FakeKernel:
    """A FileWriter with the kernel's answers: reclaim shrinks the model, errno as documented.

    `swappiness` False: the ``swappiness=`` key gives EINVAL (an older kernel). `anon_first`:
    a plain reclaim is met from anonymous memory first (6.1 on an anon-heavy cgroup). `fail`
    maps a file name to the OSError its next writes raise. `before` runs before every write
    (advance a clock, set a cancel, remove a cgroup...).
    """

    host: FakeHost
    swappiness: bool = True
    anon_first: bool = False
    swap_cache: float = 0.0  # of what a reclaim swaps out, the share left in swap cache
    fail: dict[str, OSError] = field(default_factory=dict)
    before: Hook | None = None
    writes: list[tuple[str, str]] = field(default_factory=list)

    def write(self, path: Path, data: str) -> None:
        if self.before is not None:
            self.before(path, data)
        if not path.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        cgroups = self.host.cgroup_path("")
        name = path.parent.relative_to(cgroups).as_posix() if path.is_relative_to(cgroups) else ""
        self.writes.append((f"{name}/{path.name}", data))
        if path.name in self.fail:
            raise self.fail[path.name]
        if path.name == "memory.reclaim":
            self._check_keys(path, data)
        handler = {
            "memory.reclaim": self._reclaim,
            "memory.swap.reclaim": self._swap_reclaim,
            "memory.limit_in_bytes": self._limit,
            "memory.force_empty": self._force_empty,
        }.get(path.name)
        if handler is None or name not in self.host.groups:
            path.write_text(data, encoding="ascii")
            return
        handler(name, path, data)
        self.host.sync(name)

    def _take(self, name: str, asked: int, anon_too: bool, droppable: int | None = None) -> int:
        """Clean swap cache first (no I/O; what this write swapped is still under writeback:
        `droppable`), then page cache and anon in the kernel's order."""
        group = self.host.groups[name]
        cache = group.swap_cached if droppable is None else min(droppable, group.swap_cached)
        dropped = min(asked, cache) if anon_too else 0
        group.swap_cached -= dropped
        group.anon -= dropped
        asked -= dropped
        from_anon = 0
        if anon_too and self.anon_first:
            from_anon = min(asked, group.anon - group.swap_cached, self.host.swap_free)
        from_file = min(asked - from_anon, group.file)
        if anon_too and not self.anon_first:
            from_anon = min(asked - from_file, group.anon - group.swap_cached, self.host.swap_free)
        cached = int(from_anon * self.swap_cache)
        group.file -= from_file
        group.anon -= from_anon - cached
        group.swap_cached += cached
        self.host.swap_free -= from_anon
        if from_anon or dropped:
            self.host.pswpout += from_anon // 4096
            self.host.put("/proc/vmstat", f"pswpout {self.host.pswpout}\npgsteal_direct 0\n")
            self.host.write_meminfo()
        return dropped + from_file + from_anon - cached

    def _check_keys(self, path: Path, data: str) -> None:
        keys = {w.split("=", 1)[0] for w in data.split()[1:]}
        if keys and (not self.swappiness or keys != {"swappiness"}):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))

    def _reclaim(self, name: str, path: Path, data: str) -> None:
        """Like the kernel, go on until as much as asked was freed, or nothing more is."""
        asked, anon_too = int(data.split(maxsplit=1)[0]), "swappiness=0" not in data
        group = self.host.groups[name]
        freed, clean_cache = 0, group.swap_cached  # what this write swaps is still in writeback
        while freed < asked:
            droppable = min(clean_cache, group.swap_cached)
            got = self._take(name, asked - freed, anon_too, droppable)
            clean_cache -= min(asked - freed, droppable) if anon_too else 0
            if not got:
                break
            freed += got
        if freed < asked:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable", str(path))

    def _swap_reclaim(self, name: str, path: Path, data: str) -> None:
        got = self._take(name, int(data), anon_too=True)
        path.write_text(f"{got}\n", encoding="ascii")

    def _limit(self, name: str, path: Path, data: str) -> None:
        group = self.host.groups[name]
        wanted = int(data)
        over = group.file + group.anon - wanted
        if over > 0 and self._take(name, over, anon_too=True) < over:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        group.limit = wanted

    def _force_empty(self, name: str, path: Path, data: str) -> None:
        self._take(name, 1 << 62, anon_too=True)


V1_MEMORY = Path("/sys/fs/cgroup/memory")

# Joins its cgroup first, so the page cache it writes (fsynced: clean, reclaimable) and the
# anonymous memory it touches are charged there; then waits for stdin to close.
_WORKLOAD = """
import os, sys
cgroup, data, file_mib, anon_mib = sys.argv[1:]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
chunk = os.urandom(1 << 20)
with open(data, "wb") as out:
    for _ in range(int(file_mib)):
        out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
anon = bytearray(int(anon_mib) << 20)
for i in range(0, len(anon), 4096):
    anon[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


class Sandbox:
    """spotguard-test-XXXX under the v1 memory hierarchy: ours to fill, reclaim and remove."""

    def __init__(self, data_dir: Path, base: Path = V1_MEMORY) -> None:
        self.root = base / f"spotguard-test-{uuid.uuid4().hex[:8]}"
        self.root.mkdir()
        self._data_dir = data_dir
        self._procs: list[subprocess.Popen[str]] = []
        self._files: list[Path] = []

    @staticmethod
    def unavailable(base: Path = V1_MEMORY) -> str | None:
        """Why real-cgroup tests cannot run here, or None."""
        if not (base / "memory.limit_in_bytes").exists():
            return f"no cgroup v1 memory hierarchy at {base}"
        if not os.access(base, os.W_OK):
            return f"{base} is not writable (needs root)"
        return None

    def group(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def usage(self, name: str) -> int:
        return int((self.root / name / "memory.usage_in_bytes").read_text())

    def workload(self, name: str, *, file_mib: int, anon_mib: int = 0) -> None:
        """A process in cgroup `name` holding `file_mib` of page cache and `anon_mib` of anon."""
        data = self._data_dir / f"{self.root.name}-{name}-{len(self._files)}.dat"
        self._files.append(data)
        sizes = (str(file_mib), str(anon_mib))
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKLOAD, str(self.group(name)), str(data), *sizes],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"workload in {name} did not start (exit {proc.wait()})")

    def close(self) -> None:
        """Kill our processes, remove our cgroups (deepest first) and data files."""
        for proc in self._procs:
            proc.kill()
            proc.communicate()
        for path in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                path.rmdir()
        self.root.rmdir()
        for data in self._files:
            data.unlink(missing_ok=True)


@contextmanager
def sandbox_or_skip(data_dir: Path) -> Iterator[Sandbox]:
    """A Sandbox for one test, removed afterwards; the test is skipped where there is none."""
    if reason := Sandbox.unavailable():
        pytest.skip(reason)
    box = Sandbox(data_dir)
    try:
        yield box
    finally:
        box.close()
