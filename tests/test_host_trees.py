"""Host parsers on hostile trees: truncated, empty, garbage, huge, NaN, non-ASCII, directories,
FIFOs and symlink loops where /proc, /sys and cgroup files should be (issue 10, "host trees").

Hypothesis builds root-prefixed fake trees; the agent's start-up path (backend detection,
host signal sampling, the image estimate, and the agent's first ticks) must never raise
anything but the named errors, and an unusable backend must say why.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotguard.assemble import build_agent
from spotguard.clock import FakeClock
from spotguard.config import Config, HibernateConfig, ReclaimConfig, from_mapping
from spotguard.estimator import EstimateError, ImageEstimator
from spotguard.hostfs import MAX_READ, HostFileError, HostFS, read_kernel_text
from spotguard.reclaim.cgroup import Cgroup, CgroupError
from spotguard.reclaim.detect import detect_backends
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo, read_vmstat
from spotguard.reclaim.writer import LibcWriter
from spotguard.signals.host import HostSignals

CG = "/sys/fs/cgroup"
GOOD = {
    "/proc/stat": "cpu  10 0 10 300 5 0 0 0 0 0\ncpu0 5 0 5 150 2 0 0 0 0 0\n"
    "cpu1 5 0 5 150 3 0 0 0 0 0\nintr 1 2 3\nctxt 99\nbtime 1700000000\n",
    "/proc/meminfo": "MemTotal: 8000000 kB\nMemFree: 1000000 kB\nMemAvailable: 3000000 kB\n"
    "SReclaimable: 100000 kB\nActive(anon): 2000000 kB\nInactive(anon): 500000 kB\n"
    "Active(file): 1500000 kB\nInactive(file): 1500000 kB\nSwapCached: 10000 kB\n"
    "SwapTotal: 8000000 kB\nSwapFree: 7000000 kB\nHugePages_Total: 0\n",
    "/proc/vmstat": "pswpout 10\npgsteal_kswapd 20\npgsteal_direct 0\n",
    "/proc/loadavg": "0.52 0.40 0.30 1/300 12345\n",
    "/proc/diskstats": "   8       0 sda 100 0 2000 10 50 0 1000 5 0 10 15\n"
    "   8       1 sda1 90 0 1800 9 40 0 900 4 0 9 13\n",
    "/proc/pressure/cpu": "some avg10=0.10 avg60=0.05 avg300=0.01 total=1234\n",
    "/proc/pressure/memory": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "/proc/pressure/io": "some avg10=1.50 avg60=0.50 avg300=0.10 total=999\n"
    "full avg10=0.50 avg60=0.20 avg300=0.05 total=555\n",
    "/sys/power/image_size": "3276800000\n",
    "/sys/block/sda/device": "",
    "/proc/sys/vm/drop_caches": "0\n",
    f"{CG}/cgroup.controllers": "cpuset cpu io memory pids\n",
    f"{CG}/memory.reclaim": "",
    f"{CG}/batch.slice/memory.reclaim": "",
    f"{CG}/batch.slice/memory.current": "104857600\n",
    f"{CG}/batch.slice/memory.stat": "anon 50000000\nfile 40000000\nactive_file 20000000\n"
    "inactive_file 20000000\nactive_anon 25000000\ninactive_anon 25000000\n",
    f"{CG}/batch.slice/memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    f"{CG}/memory/memory.limit_in_bytes": "9223372036854771712\n",
    f"{CG}/memory/batch.slice/memory.limit_in_bytes": "9223372036854771712\n",
    f"{CG}/memory/batch.slice/memory.usage_in_bytes": "104857600\n",
    f"{CG}/memory/batch.slice/memory.stat": "total_inactive_file 20000000\n"
    "total_active_file 20000000\ntotal_inactive_anon 25000000\ntotal_active_anon 25000000\n",
    f"{CG}/memory/batch.slice/memory.swap.reclaim": "0\n",
}
# What can sit where a kernel file should be, besides bytes.
MISSING, DIRECTORY, FIFO, LOOP, HUGE = "missing", "directory", "fifo", "loop", "huge"
BAD_NUMBERS = ["nan", "inf", "-1", "9" * 5000, "1e999", "\u0663\u0664", "\xff\xfe", "0x10"]
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@st.composite
def mutated(draw: st.DrawFn, good: str) -> bytes:
    """The good text with one number replaced by something a parser must refuse."""
    numbers = list(NUMBER.finditer(good))
    if not numbers:
        return good.encode()
    hit = numbers[draw(st.integers(0, len(numbers) - 1))]
    bad = draw(st.sampled_from(BAD_NUMBERS))
    return (good[: hit.start()] + bad + good[hit.end() :]).encode("utf-8", "surrogateescape")


def content(good: str) -> st.SearchStrategy[str | bytes]:
    data = good.encode()
    return st.one_of(
        st.just(data),
        st.sampled_from([MISSING, DIRECTORY, FIFO, LOOP, HUGE, b""]),
        st.integers(0, max(len(data) - 1, 0)).map(lambda n: data[:n]),  # truncated
        st.binary(max_size=120),  # garbage, mostly not ASCII
        mutated(good),
    )


TREES = st.fixed_dictionaries({path: content(good) for path, good in GOOD.items()})


def plant(root: Path, absolute: str, what: str | bytes) -> None:
    """Put `what` at `absolute` under `root`, replacing whatever was there."""
    path = root / absolute.lstrip("/")
    if path.is_symlink() or path.is_file() or path.is_fifo():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if what == MISSING:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a parent is itself a planted oddity (a file, a FIFO, a loop)
    if what == DIRECTORY:
        path.mkdir()
    elif what == FIFO:
        os.mkfifo(path)
    elif what == LOOP:
        path.symlink_to(path.name)
    elif what == HUGE:
        with path.open("wb") as out:
            out.truncate(8 << 20)  # sparse: cheap to make, 8 MiB to read
    else:
        assert isinstance(what, bytes)
        path.write_bytes(what)


def plant_odd_name(root: Path) -> None:
    """A cgroup whose name is not UTF-8, with a reclaim file."""
    weird = os.path.join(os.fsencode(root / CG.lstrip("/")), b"\xff\xfe.slice")
    os.makedirs(weird, exist_ok=True)
    with open(os.path.join(weird, b"memory.reclaim"), "wb"):
        pass


@contextmanager
def planted(tree: dict[str, str | bytes], odd_name: bool = False) -> Iterator[HostFS]:
    with tempfile.TemporaryDirectory(prefix="spotguard-tree-") as tmp:
        root = Path(tmp)
        for absolute, what in tree.items():
            plant(root, absolute, what)
        if odd_name:
            plant_odd_name(root)
        yield HostFS(root)


# Counters a second later: CPU 0 and 1 idle 100 more ticks, the disk moved 512 KiB.
LATER = {
    "/proc/stat": GOOD["/proc/stat"].replace(" 150 ", " 250 ").replace(" 300 ", " 500 "),
    "/proc/diskstats": GOOD["/proc/diskstats"].replace(" 2000 ", " 3024 "),
}


@settings(max_examples=50)  # ~25 files an example: the costliest fuzz test, kept to seconds
@given(
    TREES,
    st.fixed_dictionaries({path: content(good) for path, good in LATER.items()}),
    st.booleans(),
    st.sampled_from(["auto", "v2", "v1", "drop_caches"]),
)
def test_start_up_path_survives_any_tree(
    tree: dict[str, str | bytes], later: dict[str, str | bytes], odd_name: bool, backend: str
) -> None:
    reclaim = ReclaimConfig(backend=backend, cgroup_root=CG, allow_drop_caches=True)
    with planted(tree, odd_name) as fs, tempfile.TemporaryDirectory() as state:
        # Backend detection exactly as the agent starts it (journal restore included).
        report = StagedReclaimer(fs, reclaim, FakeClock(), Path(state)).report
        if report.chosen is None:
            assert report.notes, "an unusable backend must say why"
        # Host signals: two samples, so that the rates are computed too.
        host = HostSignals(fs)
        host.sample(0.0)
        for absolute, what in later.items():
            plant(fs.root, absolute, what)
        sample = host.sample(1.0)
        idle = sample.cpu_min_idle_percent
        assert idle is None or 0.0 <= idle <= 100.0
        pressure = sample.pressure
        for value in (
            sample.load1,
            sample.io_bytes_per_s,
            pressure.cpu_some,
            pressure.memory_some,
            pressure.memory_full,
            pressure.io_some,
            pressure.io_full,
        ):
            assert value is None or (math.isfinite(value) and value >= 0)
        # The image estimate: numbers that make sense, or the named error.
        try:
            estimate = ImageEstimator(fs, HibernateConfig()).estimate()
        except EstimateError:
            return
        assert 0 <= estimate.floor_bytes <= estimate.expected_bytes
        assert estimate.swap_free_bytes <= estimate.swap_total_bytes
        assert math.isfinite(estimate.predicted_write_s)


def test_the_good_tree_is_read_as_written() -> None:
    """The fuzz tree's "good" files really are good: the property above tests something."""
    with (
        planted({path: text.encode() for path, text in GOOD.items()}) as fs,
        tempfile.TemporaryDirectory() as state,
    ):
        report = StagedReclaimer(fs, ReclaimConfig(cgroup_root=CG), FakeClock(), Path(state)).report
        assert (report.hierarchy, report.chosen) == ("v2", "v2")
        host = HostSignals(fs)
        host.sample(0.0)
        for absolute, text in LATER.items():
            plant(fs.root, absolute, text.encode())
        sample = host.sample(1.0)
        assert sample.cpu_min_idle_percent == pytest.approx(100.0)
        assert sample.io_bytes_per_s == 1024 * 512
        assert sample.load1 == 0.52
        assert sample.pressure.io_some == 1.5
        assert ImageEstimator(fs, HibernateConfig()).estimate().swap_free_bytes == 7000000 * 1024


@settings(max_examples=12)
@given(TREES, st.booleans())
def test_the_agent_keeps_ticking_on_any_tree(tree: dict[str, str | bytes], odd_name: bool) -> None:
    """The whole agent, built as `spotguard run` builds it: its ticks never raise."""
    with planted(tree, odd_name) as fs, tempfile.TemporaryDirectory() as state:
        config = agent_config(fs.root, Path(state))
        clock = FakeClock()
        agent = build_agent(config, clock, fs=fs)
        try:
            for _ in range(2):
                agent.tick()
                clock.sleep(config.agent.slow_poll_interval)
        finally:
            agent.shutdown()
        assert (Path(state) / "state.json").is_file()


def agent_config(root: Path, state: Path) -> Config:
    return from_mapping(
        {
            "imds": {"url": "http://127.0.0.1:9", "attempts": 1, "connect_timeout": 0.2},
            "agent": {
                "root": str(root),
                "state_file": str(state / "state.json"),
                "hook_dir": str(state / "hooks"),
            },
            "reclaim": {"cgroup_root": CG},
            "hibernate": {"mode": "none"},
        },
        env={},
    )


# -- one reader at a time: the named error and the fallback --------------------------------


def test_the_shared_reader_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: a blocking open would hang forever
    with (tmp_path / "huge").open("wb") as out:
        out.truncate(MAX_READ + 1)
    (tmp_path / "text").write_bytes(b"some avg10=\xff1.0\n")
    for name, code in (("dir", errno.EISDIR), ("fifo", errno.EINVAL), ("huge", errno.EFBIG)):
        with pytest.raises(HostFileError) as caught:
            read_kernel_text(tmp_path / name)
        assert caught.value.errno == code
        assert name in str(caught.value)
    assert read_kernel_text(tmp_path / "text") == "some avg10=\ufffd1.0\n"


def test_non_ascii_cgroup_controllers_no_longer_crash_detection(tmp_path: Path) -> None:
    """The issue's 33 start-up crashes: a strict ASCII read of cgroup.controllers."""
    fs = HostFS(tmp_path)
    plant(tmp_path, f"{CG}/cgroup.controllers", b"cpu \xe2\x80\x8b io memory\n")
    plant(tmp_path, f"{CG}/memory.reclaim", b"")
    report = detect_backends(fs, ReclaimConfig(cgroup_root=CG))
    assert (report.hierarchy, report.chosen) == ("v2", "v2")


def test_an_unreadable_hierarchy_is_reported_unusable_with_the_reason(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    plant(tmp_path, f"{CG}/cgroup.controllers", DIRECTORY)
    report = detect_backends(fs, ReclaimConfig(cgroup_root=CG))
    assert report.chosen is None
    assert any("cgroup.controllers" in note and "directory" in note for note in report.notes)
    plant(tmp_path, f"{CG}/cgroup.controllers", b"memory\n")
    plant(tmp_path, f"{CG}/memory.reclaim", DIRECTORY)
    report = detect_backends(fs, ReclaimConfig(cgroup_root=CG))
    assert report.chosen is None
    assert any("memory.reclaim is not a file" in note for note in report.notes)


@pytest.mark.parametrize(
    ("meminfo", "message"),
    [
        ("MemTotal: " + "9" * 5000 + " kB\n", "line 1: cannot parse"),
        ("MemTotal: nan kB\n", "line 1: cannot parse"),
        ("MemTotal: 100 kB\nMemFree: 200 kB\n", "MemFree 204800 exceeds MemTotal 102400"),
        ("SwapTotal: 0 kB\nSwapFree: 8 kB\n", "SwapFree 8192 exceeds SwapTotal 0"),
    ],
)
def test_meminfo_that_cannot_be_true_is_a_named_error(
    tmp_path: Path, meminfo: str, message: str
) -> None:
    plant(tmp_path, "/proc/meminfo", meminfo.encode())
    with pytest.raises(ProcFormatError, match=message):
        read_meminfo(HostFS(tmp_path))


def test_vmstat_skips_numbers_it_cannot_trust(tmp_path: Path) -> None:
    plant(
        tmp_path, "/proc/vmstat", f"pswpout {'9' * 5000}\npswpin nan\npgsteal_direct 7\n".encode()
    )
    assert read_vmstat(HostFS(tmp_path)) == {"pgsteal_direct": 7}


def test_nan_pressure_and_load_are_no_signal(tmp_path: Path) -> None:
    """A NaN compares false with every threshold: it must not read as "no pressure"."""
    fs = HostFS(tmp_path)
    for name in ("cpu", "memory", "io"):
        plant(tmp_path, f"/proc/pressure/{name}", b"some avg10=nan avg60=0 avg300=0 total=0\n")
    plant(tmp_path, "/proc/loadavg", b"inf 0.1 0.1 1/1 1\n")
    sample = HostSignals(fs).sample(0.0)
    assert sample.pressure.memory_some is None
    assert sample.pressure.io_some is None
    assert sample.load1 is None


@pytest.mark.parametrize("what", [b"9" * 5000 + b"\n", b"nan\n", b"-1\n", DIRECTORY, HUGE])
def test_cgroup_files_that_are_no_number_end_the_stage(tmp_path: Path, what: str | bytes) -> None:
    plant(tmp_path, f"{CG}/batch.slice/memory.current", what)
    cgroup = Cgroup.under(HostFS(tmp_path), CG, "batch.slice", LibcWriter())
    with pytest.raises(CgroupError, match=r"memory\.current"):
        cgroup.current()


def test_a_joined_path_is_kept_so_its_parts_stay_interned(tmp_path: Path) -> None:
    """Issue 9's soak: rebuilding the same paths every poll churned the interpreter's intern
    table until it doubled (0.5 MiB of RSS at ~30 s). One Path per host file, reused."""
    fs = HostFS(tmp_path)
    first = fs.path("/sys/fs/cgroup/batch.slice/memory.pressure")
    assert fs.path("/sys/fs/cgroup/batch.slice/memory.pressure") is first
    assert first == tmp_path / "sys/fs/cgroup/batch.slice/memory.pressure"
    assert HostFS(tmp_path / "other").path("/proc/stat") == tmp_path / "other/proc/stat"
