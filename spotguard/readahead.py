"""Swap-in readahead after resume: the workload's swapped memory comes back in large reads.

A small image leaves the workload's anonymous memory in swap at resume, and each page then
comes back on its own fault, a few pages per read: 26-30 MB/s in the testbed, where its disk
gives 100 MiB/s (results/2026-12-02-table). ``process_madvise(MADV_WILLNEED)`` over the
swapped ranges starts those reads at once, ahead of the faults. Foreground cgroups go first
(the reclaim took them last), and only what free memory holds is asked back: readahead must
not push out the page cache the workload is about to read again.

It needs CAP_SYS_NICE and ptrace-read access to the workload (CAP_SYS_PTRACE), which the
network-facing agent does not hold: ``spotguard readahead`` runs in a one-shot unit of its own
(systemd/spotguard-readahead.service) that the system-sleep hook starts after each resume.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import structlog

from spotguard.assemble import host_fs
from spotguard.clock import Clock, SystemClock
from spotguard.config import Config, ReclaimConfig
from spotguard.hostfs import HostFileError, HostFS, read_kernel_text
from spotguard.reclaim.detect import memory_root
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo
from spotguard.units import human_bytes

log = structlog.get_logger("spotguard.readahead")

# pidfd_open and process_madvise have the same numbers on x86_64 and arm64 (asm-generic).
SYS_PROCESS_MADVISE = 440
MADV_WILLNEED = 3
IOV_MAX = 1024  # ranges per call (UIO_MAXIOV)
PAGE = os.sysconf("SC_PAGE_SIZE")
# What the kernel takes of one call's ranges in all (INT_MAX & PAGE_MASK): it cuts the rest
# off without an error and returns what it took (2 of 4.8 GB asked, 2026-12-03's table).
MAX_RW_COUNT = (1 << 31) - PAGE
SMAPS_LIMIT = 64 << 20  # ~1 KiB per mapping: 64 MiB is some 60,000 mappings
# What stays free after the readahead: the page cache the workload reads again, and the
# kernel's own watermarks, come back into this.
KEEP_FREE_PERCENT = 10.0

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$")
_ANON_NAMES = ("", "[heap]", "[stack]")


class ReadaheadError(Exception):
    """Readahead cannot work on this host at all (no permission, an old kernel)."""


@dataclass(frozen=True, slots=True)
class SwappedRange:
    start: int
    length: int
    swapped: int  # bytes of the range in swap (smaps "Swap:")


@dataclass(frozen=True, slots=True)
class ReadaheadReport:
    processes: int  # asked to read back
    asked: int  # swapped bytes asked back
    swapped: int  # swapped bytes found in the cgroups' private anonymous mappings
    budget: int  # what free memory allowed
    seconds: float
    skipped: tuple[str, ...] = field(default=())


class Advisor(Protocol):
    def willneed(self, pid: int, ranges: Sequence[SwappedRange]) -> int:
        """Ask the kernel to read `ranges` of process `pid` back; the bytes of them it took
        (less when a range went away meanwhile); OSError as the kernel said."""


class ProcessMadvise:
    """``process_madvise(pidfd, ranges, MADV_WILLNEED)``: Linux 5.10+, CAP_SYS_NICE."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def willneed(self, pid: int, ranges: Sequence[SwappedRange]) -> int:
        pidfd = os.pidfd_open(pid)
        took = 0
        try:
            for batch in _calls(ranges):
                iovecs = (_Iovec * len(batch))(*(_Iovec(*piece) for piece in batch))
                done = self._libc.syscall(
                    SYS_PROCESS_MADVISE, pidfd, iovecs, len(batch), MADV_WILLNEED, 0
                )
                if done < 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
                took += done
        finally:
            os.close(pidfd)
        return took


def _calls(ranges: Sequence[SwappedRange]) -> Iterator[list[tuple[int, int]]]:
    """(start, length) pieces of `ranges`, in calls the kernel takes whole: at most IOV_MAX
    pieces and MAX_RW_COUNT bytes each, a range split where a call fills up."""
    batch: list[tuple[int, int]] = []
    room = MAX_RW_COUNT
    for r in ranges:
        start, length = r.start, r.length
        while length > 0:
            piece = min(length, room)
            batch.append((start, piece))
            start, length, room = start + piece, length - piece, room - piece
            if room == 0 or len(batch) == IOV_MAX:
                yield batch
                batch, room = [], MAX_RW_COUNT
    if batch:
        yield batch


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_size_t), ("iov_len", ctypes.c_size_t))


def swapped_ranges(smaps: str) -> list[SwappedRange]:
    """The private anonymous mappings with pages in swap, from a /proc/PID/smaps text.

    File mappings are left out: WILLNEED there reads the file, not the swapped copies.
    """
    found: list[SwappedRange] = []
    current: tuple[int, int] | None = None
    for line in smaps.splitlines():
        header = _HEADER.match(line)
        if header:
            start, end, perms, inode, name = header.groups()
            anonymous = inode == "0" and (name in _ANON_NAMES or name.startswith("[anon:"))
            current = (int(start, 16), int(end, 16)) if anonymous and perms[3] == "p" else None
        elif current and line.startswith("Swap:"):
            fields = line.split()
            swapped = int(fields[1]) * 1024 if len(fields) == 3 and fields[1].isdigit() else 0
            if swapped:
                found.append(SwappedRange(current[0], current[1] - current[0], swapped))
            current = None
    return found


def cgroup_pids(fs: HostFS, config: ReclaimConfig) -> list[int]:
    """The processes of the configured cgroups and their children: protected ones first."""
    root, _ = memory_root(fs, config.cgroup_root)
    if root is None:
        return []
    pids: dict[int, None] = {}
    for name in (*config.protected, *config.background):
        top = fs.path(f"{root.rstrip('/')}/{name.strip('/')}")
        for folder, _, files in os.walk(top):
            if "cgroup.procs" in files:
                for word in _read_or_empty(os.path.join(folder, "cgroup.procs")).split():
                    if word.isdigit():
                        pids.setdefault(int(word))
    return list(pids)


def _read_or_empty(path: str) -> str:
    try:
        return read_kernel_text(path)
    except OSError:
        return ""  # a cgroup or process that went away meanwhile


def read_back(
    fs: HostFS,
    pids: Iterable[int],
    advisor: Advisor,
    clock: Clock,
    keep_free_percent: float = KEEP_FREE_PERCENT,
) -> ReadaheadReport:
    """Ask the swapped ranges of `pids` back, in order, until free memory is spoken for."""
    start = clock.monotonic()
    try:
        mem = read_meminfo(fs)
        free, total = mem["MemFree"], mem["MemTotal"]
    except (ProcFormatError, KeyError) as exc:
        raise ReadaheadError(f"cannot tell free memory: {exc}") from None
    budget = max(0, free - int(total * keep_free_percent / 100))
    left, asked, swapped, processes = budget, 0, 0, 0
    skipped: list[str] = []
    for pid in pids:
        try:
            ranges = swapped_ranges(read_kernel_text(fs.path(f"/proc/{pid}/smaps"), SMAPS_LIMIT))
        except HostFileError as exc:
            skipped.append(f"pid {pid}: {exc}")
            continue
        except PermissionError:
            raise ReadaheadError(_NEEDS) from None
        except OSError:
            skipped.append(f"pid {pid}: exited")
            continue
        swapped += sum(r.swapped for r in ranges)
        chosen = _within(ranges, left)
        if not chosen:
            continue
        try:
            took = advisor.willneed(pid, chosen)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise ReadaheadError(_NEEDS) from None
            if exc.errno in (errno.ENOSYS, errno.EINVAL):
                raise ReadaheadError(
                    f"this kernel has no process_madvise(MADV_WILLNEED): {exc.strerror}"
                ) from None
            skipped.append(f"pid {pid}: {exc.strerror or exc}")  # exited, or unmapped meanwhile
            continue
        length = sum(r.length for r in chosen)
        if took < length:  # a range unmapped meanwhile ends the call there
            skipped.append(f"pid {pid}: the kernel took {took} of {length} bytes of ranges")
        taken = sum(r.swapped for r in chosen)
        left -= taken
        asked += taken
        processes += 1
    return ReadaheadReport(
        processes=processes,
        asked=asked,
        swapped=swapped,
        budget=budget,
        seconds=round(clock.monotonic() - start, 3),
        skipped=tuple(skipped),
    )


_NEEDS = (
    "process_madvise needs CAP_SYS_NICE, and CAP_SYS_PTRACE for processes with other "
    "credentials (systemd/spotguard-readahead.service grants both)"
)


def _within(ranges: Sequence[SwappedRange], budget: int) -> list[SwappedRange]:
    """The ranges, in address order, whose swapped bytes fit `budget`; the last one cut short
    in proportion (swapped pages are spread through a range as the reclaim found them)."""
    chosen: list[SwappedRange] = []
    for r in ranges:
        if budget <= 0:
            break
        if r.swapped <= budget:
            chosen.append(r)
        else:
            length = r.length * budget // r.swapped // PAGE * PAGE
            if length:
                chosen.append(SwappedRange(r.start, length, budget))
        budget -= r.swapped
    return chosen


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    readahead = commands.add_parser(
        "readahead",
        help="after a resume: read the workload's swapped memory back now, in large reads",
        description="Runs from spotguard-readahead.service, which the system-sleep hook "
        "starts after each resume. Exit 0 when done (or nothing was swapped), 1 when this "
        "host does not allow it (permissions, kernel).",
    )
    readahead.add_argument(
        "--keep-free",
        type=float,
        default=KEEP_FREE_PERCENT,
        metavar="PERCENT",
        help=f"%% of memory left free for page cache (default {KEEP_FREE_PERCENT:g})",
    )
    readahead.add_argument("--json", action="store_true")
    readahead.set_defaults(func=_readahead)


def _readahead(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    fs = host_fs(config)
    try:
        pids = cgroup_pids(fs, config.reclaim)
        report = read_back(fs, pids, ProcessMadvise(), SystemClock(), args.keep_free)
    except ReadaheadError as exc:
        log.warning("readahead.unavailable", why=str(exc))
        print(f"spotguard readahead: {exc}", file=sys.stderr)
        return 1
    log.info("readahead.done", **asdict(report))
    if args.json:
        print(json.dumps(asdict(report)))
        return 0
    print(
        f"asked {human_bytes(report.asked)} of {human_bytes(report.swapped)} swapped back "
        f"from {report.processes} of {len(pids)} processes in {report.seconds:.1f} s "
        f"(free memory allowed {human_bytes(report.budget)})"
    )
    for why in report.skipped:
        print(f"  skipped {why}")
    return 0
