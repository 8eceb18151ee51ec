"""The workload cgroups' own CPU and PSI on fake cgroup v2 trees, and the idle test using them."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotguard.config import from_mapping
from spotguard.hostfs import HostFS
from spotguard.planner import is_idle
from spotguard.signals import HostSample, Pressure
from spotguard.signals.host import HostSignals
from spotguard.signals.workload import WorkloadActivity, WorkloadCgroups, WorkloadPressure
from tests.test_reclaim_support import psi

ROOT = "/sys/fs/cgroup"


def write(fs: HostFS, path: str, text: str) -> None:
    target = fs.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def cpu(fs: HostFS, name: str, usec: int) -> None:
    write(fs, f"{ROOT}/{name}/cpu.stat", f"usage_usec {usec}\nuser_usec 1\nsystem_usec 2\n")


@pytest.fixture
def fs(tmp_path: Path) -> HostFS:
    """A systemd-like tree with the agent in system.slice/spotguard.service."""
    fs = HostFS(tmp_path)
    for name in ("init.scope", "load.slice", "fg.slice", "system.slice/journald.service"):
        cpu(fs, name, 0)
    cpu(fs, "system.slice/spotguard.service", 0)
    write(fs, "/proc/self/cgroup", "0::/system.slice/spotguard.service\n")
    return fs


def test_every_cgroup_but_our_own_branch(fs: HostFS) -> None:
    assert WorkloadCgroups(fs, ROOT).paths() == [
        f"{ROOT}/fg.slice",
        f"{ROOT}/init.scope",
        f"{ROOT}/load.slice",
        f"{ROOT}/system.slice/journald.service",
    ]


def test_named_cgroups_leave_out_ours_and_the_missing(fs: HostFS) -> None:
    named = WorkloadCgroups(fs, ROOT, ("system.slice", "load.slice", "gone.slice"))
    assert named.paths() == [f"{ROOT}/load.slice", f"{ROOT}/system.slice/journald.service"]


def test_without_our_cgroup_known_everything_counts(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    cpu(fs, "a.slice", 0)
    cpu(fs, "b.slice/inner", 0)
    assert WorkloadCgroups(fs, ROOT).paths() == [f"{ROOT}/a.slice", f"{ROOT}/b.slice"]
    assert WorkloadCgroups(HostFS(tmp_path / "none"), ROOT).paths() == []


def test_workload_cpu_is_its_own_usage_between_reads(fs: HostFS) -> None:
    activity = WorkloadActivity(WorkloadCgroups(fs, ROOT), fs)
    assert activity.read(100.0) is None
    cpu(fs, "load.slice", 200_000)  # 0.2 s of CPU over 10 s
    cpu(fs, "fg.slice", 100_000)
    cpu(fs, "system.slice/spotguard.service", 9_000_000)  # ours: left out
    assert activity.read(110.0) == pytest.approx(3.0)
    cpu(fs, "new.slice", 5_000_000)  # appeared meanwhile: says nothing about the interval
    assert activity.read(120.0) == pytest.approx(0.0)
    assert activity.read(120.0) is None  # no time passed


def test_no_cpu_controller_is_no_reading(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    write(fs, f"{ROOT}/load.slice/memory.current", "0\n")
    activity = WorkloadActivity(WorkloadCgroups(fs, ROOT), fs)
    assert activity.read(1.0) is None
    assert activity.read(2.0) is None


def test_pressure_is_the_highest_cgroups_else_the_hosts(fs: HostFS) -> None:
    write(fs, "/proc/pressure/memory", psi(50.0))
    write(fs, "/proc/pressure/io", psi(70.0))
    pressure = WorkloadPressure(WorkloadCgroups(fs, ROOT, ("fg.slice",)), fs)
    assert pressure.read().memory_some == 50.0  # no PSI files in the cgroup: the host's
    write(fs, f"{ROOT}/fg.slice/memory.pressure", psi(0.5))
    write(fs, f"{ROOT}/fg.slice/io.pressure", psi(0.25))
    write(fs, f"{ROOT}/load.slice/memory.pressure", psi(9.0))  # not protected: not counted
    got = pressure.read()
    assert (got.memory_some, got.io_some, got.io_full) == (0.5, 0.25, 0.0)
    every = WorkloadPressure(WorkloadCgroups(fs, ROOT), fs).read()
    assert every.memory_some == 9.0


def test_host_signals_carry_the_workloads_cpu(fs: HostFS) -> None:
    signals = HostSignals(fs, WorkloadActivity(WorkloadCgroups(fs, ROOT), fs))
    assert signals.sample(0.0).workload_cpu_percent is None
    cpu(fs, "load.slice", 1_000_000)
    assert signals.sample(10.0).workload_cpu_percent == pytest.approx(10.0)
    assert HostSignals(fs).sample(20.0).workload_cpu_percent is None


def test_host_signals_take_the_workloads_pressure_where_given(fs: HostFS) -> None:
    write(fs, "/proc/pressure/memory", psi(40.0))  # e.g. our own reclaim's stalls
    write(fs, f"{ROOT}/load.slice/memory.pressure", psi(0.2))
    cgroups = WorkloadCgroups(fs, ROOT, ("load.slice",))
    sample = HostSignals(fs, pressure=WorkloadPressure(cgroups, fs)).sample(0.0)
    assert sample.pressure.memory_some == 0.2
    assert HostSignals(fs).sample(0.0).pressure.memory_some == 40.0


@pytest.mark.parametrize(
    ("cpu_idle", "workload", "idle"),
    [
        (40.0, 2.0, True),  # emulation keeps a vCPU busy; the workload is quiet
        (40.0, 30.0, False),
        (40.0, None, False),  # no cgroup figures: the RFC's CPU test alone
        (99.0, 30.0, True),
    ],
)
def test_idle_when_the_workload_is_quiet_though_a_cpu_is_not(
    cpu_idle: float, workload: float | None, idle: bool
) -> None:
    sample = HostSample(cpu_idle, Pressure(0.0, 0.0, 0.0, 0.0, 0.0), 0.0, 0.1, workload)
    assert is_idle(sample, from_mapping({}, env={})) is idle
    busy_psi = HostSample(cpu_idle, Pressure(0.0, 30.0, 0.0, 0.0, 0.0), 0.0, 0.1, workload)
    assert not is_idle(busy_psi, from_mapping({}, env={}))
