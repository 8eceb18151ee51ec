"""Idle signals on fake /proc and /sys trees, and once on the real /proc."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from spotguard.hostfs import HostFS
from spotguard.signals import Pressure
from spotguard.signals.cpu import CpuIdle
from spotguard.signals.diskstats import DiskThroughput
from spotguard.signals.host import HostSignals
from spotguard.signals.loadavg import LoadAverage
from spotguard.signals.psi import PsiFile, PsiReading, parse_psi


def write(fs: HostFS, path: str, text: str) -> None:
    target = fs.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.fixture
def fs(tmp_path: Path) -> HostFS:
    return HostFS(tmp_path)


def stat(*cpus: tuple[int, int, int, int, int]) -> str:
    """A /proc/stat with per-CPU (user, system, idle, iowait, steal) ticks."""
    lines = ["cpu  1 2 3 4 5 0 0 0 0 0"]
    for n, (user, system, idle, iowait, steal) in enumerate(cpus):
        lines.append(f"cpu{n} {user} 0 {system} {idle} {iowait} 0 0 {steal} 7 0")
    return "\n".join([*lines, "intr 12345 0 0", "ctxt 999", "btime 1700000000", ""])


def test_cpu_idle_is_the_least_idle_cpu_between_reads(fs: HostFS) -> None:
    cpu = CpuIdle(fs)
    write(fs, "/proc/stat", stat((100, 100, 1000, 0, 0), (100, 100, 1000, 0, 0)))
    assert cpu.read() is None
    # cpu0: 2 busy of 100 ticks (98 % idle, iowait counts as idle); cpu1: 40 busy of 100.
    write(fs, "/proc/stat", stat((101, 100, 1090, 8, 1), (130, 110, 1060, 0, 0)))
    assert cpu.read() == pytest.approx(60.0)
    write(fs, "/proc/stat", stat((101, 100, 1190, 8, 1), (130, 110, 1150, 0, 10)))
    assert cpu.read() == pytest.approx(90.0)


def test_cpu_skips_malformed_lines_and_logs_once(fs: HostFS) -> None:
    cpu = CpuIdle(fs)
    good = stat((0, 0, 100, 0, 0))
    write(fs, "/proc/stat", good + "cpu1 x y z\ncpu2 1\n")
    with capture_logs() as logs:
        cpu.read()
        write(fs, "/proc/stat", stat((0, 10, 190, 0, 0)) + "cpu1 x y z\n")
        assert cpu.read() == pytest.approx(90.0)
    assert [entry["event"] for entry in logs] == ["signals.malformed"]


def test_cpu_missing_or_unchanged_stat_is_none(fs: HostFS) -> None:
    cpu = CpuIdle(fs)
    assert cpu.read() is None
    write(fs, "/proc/stat", stat((5, 5, 5, 5, 5)))
    cpu.read()
    assert cpu.read() is None  # no CPU ticked


PSI_MEMORY = """some avg10=1.25 avg60=0.50 avg300=0.10 total=12345
full avg10=0.75 avg60=0.20 avg300=0.05 total=6789
"""


def test_parse_psi_reads_avg10_of_some_and_full() -> None:
    assert parse_psi(PSI_MEMORY) == PsiReading(some=1.25, full=0.75)
    assert parse_psi("some avg10=3.00 avg60=0.00 avg300=0.00 total=0\n") == PsiReading(3.0, None)


def test_parse_psi_reports_bad_lines() -> None:
    bad: list[str] = []
    text = "some avg10=oops avg60=1\nfull avg10=2.50 total=1\nwhat avg10=1.0\n\n"
    assert parse_psi(text, bad.append) == PsiReading(some=None, full=2.5)
    assert bad == ["some avg10=oops avg60=1", "what avg10=1.0"]


def test_psi_file_reads_a_cgroup_memory_pressure_file(tmp_path: Path) -> None:
    pressure = tmp_path / "memory.pressure"
    psi = PsiFile(pressure)
    assert psi.read() == PsiReading()
    pressure.write_text(PSI_MEMORY)
    assert psi.read() == PsiReading(some=1.25, full=0.75)


def disk_line(major: int, minor: int, name: str, sectors_read: int, sectors_written: int) -> str:
    return f"{major:4d} {minor:7d} {name} 10 0 {sectors_read} 5 20 0 {sectors_written} 7 0 9 12"


def diskstats(read: int, written: int) -> str:
    """nvme0n1 and sda move; their partitions, a dm volume, loop and zram repeat or fake it."""
    return "\n".join(
        [
            disk_line(259, 0, "nvme0n1", read, written),
            disk_line(259, 1, "nvme0n1p1", read, written),
            disk_line(8, 0, "sda", read, 0),
            disk_line(8, 1, "sda1", read, 0),
            disk_line(253, 0, "dm-0", read, written),
            disk_line(7, 0, "loop0", read, written),
            disk_line(252, 0, "zram0", read, written),
            "",
        ]
    )


def test_disk_rate_counts_whole_physical_disks_from_sysfs(fs: HostFS) -> None:
    for name in ("nvme0n1", "sda"):
        fs.path(f"/sys/block/{name}/device").mkdir(parents=True)
    for name in ("dm-0", "loop0", "zram0"):
        fs.path(f"/sys/block/{name}").mkdir(parents=True)
    disks = DiskThroughput(fs)
    write(fs, "/proc/diskstats", diskstats(1000, 2000))
    assert disks.read(100.0) is None
    write(fs, "/proc/diskstats", diskstats(1000 + 2048, 2000 + 1024))
    # nvme0n1 moved 3072 sectors, sda 2048: 5120 sectors of 512 bytes in 2 s.
    assert disks.read(102.0) == pytest.approx(5120 * 512 / 2)


def test_disk_rate_without_sysfs_goes_by_name(fs: HostFS) -> None:
    disks = DiskThroughput(fs)
    write(fs, "/proc/diskstats", diskstats(0, 0))
    disks.read(10.0)
    write(fs, "/proc/diskstats", diskstats(100, 100))
    assert disks.read(11.0) == pytest.approx((200 + 100) * 512)


def test_disk_rate_survives_resets_bad_lines_and_no_time(fs: HostFS) -> None:
    fs.path("/sys/block/sda/device").mkdir(parents=True)
    disks = DiskThroughput(fs)
    assert disks.read(1.0) is None  # no /proc/diskstats at all
    write(fs, "/proc/diskstats", disk_line(8, 0, "sda", 500, 500))
    disks.read(2.0)
    assert disks.read(2.0) is None  # no time passed
    write(fs, "/proc/diskstats", disk_line(8, 0, "sda", 10, 10) + "\n 8 0 sda garbage\n")
    with capture_logs() as logs:
        assert disks.read(3.0) == 0.0  # counters went backwards: no movement counted
    assert [entry["event"] for entry in logs] == ["signals.malformed"]


def test_load_average(fs: HostFS) -> None:
    load = LoadAverage(fs)
    assert load.read() is None
    write(fs, "/proc/loadavg", "0.74 0.34 0.13 3/106 5899\n")
    assert load.read() == pytest.approx(0.74)
    write(fs, "/proc/loadavg", "nonsense\n")
    assert load.read() is None


def test_host_signals_on_a_fake_tree(fs: HostFS) -> None:
    fs.path("/sys/block/vda/device").mkdir(parents=True)
    write(fs, "/proc/pressure/cpu", "some avg10=4.00 avg60=0 avg300=0 total=1\n")
    write(fs, "/proc/pressure/memory", PSI_MEMORY)
    write(fs, "/proc/pressure/io", "some avg10=0.50 avg60=0 avg300=0 total=1\nfull avg10=0.25\n")
    write(fs, "/proc/loadavg", "1.50 1.00 0.50 1/100 42\n")
    write(fs, "/proc/stat", stat((0, 0, 0, 0, 0)))
    write(fs, "/proc/diskstats", disk_line(254, 0, "vda", 0, 0))
    signals = HostSignals(fs)
    first = signals.sample(50.0)
    assert (first.cpu_min_idle_percent, first.io_bytes_per_s) == (None, None)
    write(fs, "/proc/stat", stat((1, 1, 98, 0, 0)))
    write(fs, "/proc/diskstats", disk_line(254, 0, "vda", 2048, 0))
    second = signals.sample(51.0)
    assert second.cpu_min_idle_percent == pytest.approx(98.0)
    assert second.io_bytes_per_s == pytest.approx(1 << 20)
    assert second.load1 == pytest.approx(1.5)
    assert second.pressure == Pressure(
        cpu_some=4.0, memory_some=1.25, memory_full=0.75, io_some=0.5, io_full=0.25
    )


def test_host_signals_on_an_empty_tree_is_all_none(fs: HostFS) -> None:
    signals = HostSignals(fs)
    signals.sample(1.0)
    sample = signals.sample(2.0)
    assert sample.cpu_min_idle_percent is None
    assert sample.io_bytes_per_s is None
    assert sample.load1 is None
    assert sample.pressure == Pressure()


def test_host_signals_on_the_real_proc() -> None:
    signals = HostSignals(HostFS())
    signals.sample(0.0)
    # Burn a little CPU so at least one CPU ticks between the two reads.
    sum(i * i for i in range(2_000_000))
    sample = signals.sample(1.0)
    assert sample.cpu_min_idle_percent is not None
    assert 0.0 <= sample.cpu_min_idle_percent <= 100.0
    assert sample.load1 is not None
    assert sample.load1 >= 0.0
    assert sample.io_bytes_per_s is None or sample.io_bytes_per_s >= 0.0
    for value in (sample.pressure.cpu_some, sample.pressure.memory_some, sample.pressure.io_some):
        assert value is None or 0.0 <= value <= 100.0
