"""`spotguard readahead`: which ranges are asked back, in what order, within free memory, and
the real process_madvise against a real child (this host has no swap: the syscall's ABI and
its errors are what can be checked here; the read-back itself is measured in the guest)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from spotguard.clock import SystemClock
from spotguard.config import ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.readahead import (
    PAGE,
    ProcessMadvise,
    ReadaheadError,
    SwappedRange,
    cgroup_pids,
    read_back,
    swapped_ranges,
)

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def smaps_entry(
    start: int, end: int, swap_kb: int, *, perms: str = "rw-p", inode: int = 0, name: str = ""
) -> str:
    return (
        f"{start:x}-{end:x} {perms} 00000000 00:00 {inode}    {name}\n"
        f"Size:            {(end - start) // 1024} kB\n"
        f"Rss:                 4 kB\n"
        f"Swap:           {swap_kb} kB\n"
        f"SwapPss:        {swap_kb} kB\n"
        f"VmFlags: rd wr mr mw me ac\n"
    )


def test_only_private_anonymous_mappings_with_swap_are_taken() -> None:
    text = "".join(
        [
            smaps_entry(
                0x1000, 0x3000, 8, perms="r-xp", inode=4242, name="/usr/bin/python3"
            ),  # file: COW copy
            smaps_entry(0x10000, 0x20000, 16, name="[heap]"),
            smaps_entry(
                0x20000, 0x30000, 32, perms="rw-s", inode=0, name="/dev/zero (deleted)"
            ),  # shared
            smaps_entry(0x40000, 0x80000, 128),
            smaps_entry(0x80000, 0x90000, 0),  # nothing in swap
            smaps_entry(0x90000, 0x98000, 4, name="[anon:arena]"),
            smaps_entry(0xA0000, 0xA2000, 0, perms="r-xp", name="[vdso]"),
            smaps_entry(0xB0000, 0xC0000, 12, name="[stack]"),
        ]
    )
    assert swapped_ranges(text) == [
        SwappedRange(0x10000, 0x10000, 16 << 10),
        SwappedRange(0x40000, 0x40000, 128 << 10),
        SwappedRange(0x90000, 0x8000, 4 << 10),
        SwappedRange(0xB0000, 0x10000, 12 << 10),
    ]


def test_a_garbled_swap_line_counts_as_nothing_swapped() -> None:
    text = smaps_entry(0x10000, 0x20000, 16).replace("16 kB", "lots kB")
    assert swapped_ranges(text) == []


class Recorder:
    """The Advisor double: what was asked, and an error to raise for some pids."""

    def __init__(self, errors: dict[int, int] | None = None) -> None:
        self.asked: list[tuple[int, list[SwappedRange]]] = []
        self.errors = errors or {}

    def willneed(self, pid: int, ranges: Sequence[SwappedRange]) -> int:
        if pid in self.errors:
            raise OSError(self.errors[pid], os.strerror(self.errors[pid]))
        self.asked.append((pid, list(ranges)))
        return sum(r.length for r in ranges)


def host(root: Path, free: int, total: int = 1000 * MIB) -> HostFS:
    """A v2 host tree: meminfo, fg.slice (protected) and load.slice with nested cgroups."""
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text(
        f"MemTotal: {total // 1024} kB\nMemFree: {free // 1024} kB\n"
    )
    cgroups = root / "sys/fs/cgroup"
    (cgroups / "load.slice/job.service").mkdir(parents=True)
    (cgroups / "fg.slice").mkdir(parents=True)
    (cgroups / "cgroup.controllers").write_text("cpu memory\n")
    (cgroups / "load.slice/cgroup.procs").write_text("")
    (cgroups / "load.slice/job.service/cgroup.procs").write_text("30\n31\n")
    (cgroups / "fg.slice/cgroup.procs").write_text("20\n")
    return HostFS(root)


def give(root: Path, pid: int, *ranges: tuple[int, int, int]) -> None:
    """Process `pid` with anonymous ranges (start, MiB long, MiB swapped)."""
    (root / f"proc/{pid}").mkdir()
    (root / f"proc/{pid}/smaps").write_text(
        "".join(smaps_entry(s, s + n * MIB, sw * 1024) for s, n, sw in ranges)
    )


CONFIG = ReclaimConfig(background=("load.slice",), protected=("fg.slice",))


def test_the_foreground_comes_back_first_and_the_last_range_is_cut_to_free_memory(
    tmp_path: Path,
) -> None:
    # 100 MiB kept free of 1000; 300 MiB free: 200 MiB may come back.
    fs = host(tmp_path, free=300 * MIB)
    give(tmp_path, 20, (0x10000000, 150, 150))
    give(tmp_path, 30, (0x20000000, 40, 20), (0x30000000, 100, 100))
    give(tmp_path, 31, (0x40000000, 10, 10))
    pids = cgroup_pids(fs, CONFIG)
    assert pids == [20, 30, 31]
    advisor = Recorder()
    report = read_back(fs, pids, advisor, SystemClock())
    assert advisor.asked == [
        (20, [SwappedRange(0x10000000, 150 * MIB, 150 * MIB)]),
        # 50 MiB left: all of the first range (20 swapped), 30 of the second's 100.
        (
            30,
            [
                SwappedRange(0x20000000, 40 * MIB, 20 * MIB),
                SwappedRange(0x30000000, 30 * MIB, 30 * MIB),
            ],
        ),
    ]
    assert (report.processes, report.asked, report.budget) == (2, 200 * MIB, 200 * MIB)
    assert report.swapped == 280 * MIB  # pid 31's 10 MiB is counted, but did not fit


def test_a_cut_range_stays_page_aligned(tmp_path: Path) -> None:
    fs = host(tmp_path, free=101 * MIB + 12345)
    give(tmp_path, 20, (0x10000000, 7, 3))
    advisor = Recorder()
    read_back(fs, [20], advisor, SystemClock())
    [(_, [cut])] = advisor.asked
    assert cut.length % PAGE == 0
    assert 0 < cut.length < 7 * MIB


def test_processes_that_went_away_are_skipped_and_named(tmp_path: Path) -> None:
    fs = host(tmp_path, free=900 * MIB)
    give(tmp_path, 20, (0x10000000, 8, 8))
    give(tmp_path, 30, (0x10000000, 8, 8))
    advisor = Recorder(errors={20: errno.ESRCH})
    report = read_back(fs, [20, 99, 30], advisor, SystemClock())
    assert [pid for pid, _ in advisor.asked] == [30]
    assert report.skipped == ("pid 20: No such process", "pid 99: exited")
    assert (report.processes, report.asked) == (1, 8 * MIB)


def test_a_call_the_kernel_took_only_part_of_is_named(tmp_path: Path) -> None:
    class Short(Recorder):
        def willneed(self, pid: int, ranges: Sequence[SwappedRange]) -> int:
            return super().willneed(pid, ranges) // 2

    fs = host(tmp_path, free=900 * MIB)
    give(tmp_path, 20, (0x10000000, 8, 8))
    report = read_back(fs, [20], Short(), SystemClock())
    assert report.skipped == (f"pid 20: the kernel took {4 * MIB} of {8 * MIB} bytes of ranges",)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EPERM, "CAP_SYS_NICE"),
        (errno.ENOSYS, "no process_madvise"),
        (errno.EINVAL, "no process_madvise"),
    ],
)
def test_a_host_that_does_not_allow_it_is_one_clear_error(
    tmp_path: Path, code: int, says: str
) -> None:
    fs = host(tmp_path, free=900 * MIB)
    give(tmp_path, 20, (0x10000000, 8, 8))
    with pytest.raises(ReadaheadError, match=says):
        read_back(fs, [20], Recorder(errors={20: code}), SystemClock())


def test_no_memory_cgroups_means_no_processes(tmp_path: Path) -> None:
    assert cgroup_pids(HostFS(tmp_path), CONFIG) == []


def test_unreadable_meminfo_is_a_readahead_error(tmp_path: Path) -> None:
    with pytest.raises(ReadaheadError, match="free memory"):
        read_back(HostFS(tmp_path), [1], Recorder(), SystemClock())


@contextlib.contextmanager
def a_child(length: int, touched: bool) -> Iterator[tuple[int, int, int]]:
    """A live child with `length` bytes of anonymous memory: (pid, start, length)."""
    script = (
        "import mmap, ctypes, sys\n"
        # MAP_NORESERVE (0x4000 on x86_64 and arm64; not in Python's mmap): not counted
        # against overcommit, so an untouched 5 GiB maps on a small CI machine too
        f"m = mmap.mmap(-1, {length}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)\n"
        f"{f'm.write(bytes({length}))' if touched else 'pass'}\n"
        "print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    start = int(proc.stdout.readline())
    yield proc.pid, start, length
    proc.communicate("")


@pytest.fixture
def child() -> Iterator[tuple[int, int, int]]:
    """8 MiB, touched."""
    with a_child(8 << 20, touched=True) as found:
        yield found


def test_the_real_syscall_accepts_a_live_childs_anonymous_range(
    child: tuple[int, int, int],
) -> None:
    pid, start, length = child
    if os.geteuid() != 0:
        pytest.skip("process_madvise needs CAP_SYS_NICE")
    assert ProcessMadvise().willneed(pid, [SwappedRange(start, length, length)]) == length


def test_the_real_syscall_takes_ranges_past_the_kernels_cap_on_one_call() -> None:
    """The kernel takes 2 GiB less a page of one call's ranges and drops the rest silently
    (2026-12-03: 2 of 4.8 GB read back, the rest faulted in page by page). 5 GiB untouched:
    nothing to read, only the page-table walk."""
    if os.geteuid() != 0:
        pytest.skip("process_madvise needs CAP_SYS_NICE")
    with a_child(5 << 30, touched=False) as (pid, start, length):
        third = length // 3 // PAGE * PAGE
        ranges = [
            SwappedRange(start, third, third),
            SwappedRange(start + third, length - third, length - third),
        ]
        assert ProcessMadvise().willneed(pid, ranges) == length


def test_the_real_syscall_on_an_exited_process_is_esrch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with pytest.raises(ProcessLookupError):
        ProcessMadvise().willneed(int(proc.stdout), [SwappedRange(0x10000, PAGE, PAGE)])


def run_command(
    tmp_path: Path, child: tuple[int, int, int], cgroup: str, *prefix: str
) -> subprocess.CompletedProcess[str]:
    """`spotguard readahead` on a host tree whose cgroup `cgroup` holds the live child, its
    8 MiB range said to be swapped: the real syscall on the real process."""
    pid, start, length = child
    root = tmp_path / "host"
    host(root, free=900 * MIB)
    for procs in (root / "sys/fs/cgroup").rglob("cgroup.procs"):
        procs.write_text("")  # the child alone
    (root / f"sys/fs/cgroup/{cgroup}/cgroup.procs").write_text(f"{pid}\n")
    (root / f"proc/{pid}").mkdir()
    (root / f"proc/{pid}/smaps").write_text(smaps_entry(start, start + length, length // 1024))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nroot = "{root}"\n[reclaim]\nbackground = ["load.slice"]\n'
        'protected = ["fg.slice"]\n'
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "spotguard", "--config", str(config), "readahead"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )


def test_the_command_without_cap_sys_nice_says_what_it_needs(
    tmp_path: Path, child: tuple[int, int, int]
) -> None:
    """The real syscall, refused for want of the capability the readahead unit grants."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop a capability")
    drop = ("setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--")
    done = run_command(tmp_path, child, "fg.slice", *drop)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "needs CAP_SYS_NICE" in done.stderr


def test_the_command_reports_what_it_asked(tmp_path: Path, child: tuple[int, int, int]) -> None:
    if os.geteuid() != 0:
        pytest.skip("process_madvise needs CAP_SYS_NICE")
    done = run_command(tmp_path, child, "load.slice/job.service")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("asked 8.0 MiB of 8.0 MiB swapped back from 1 of 1 processes")
