"""Cgroup files on fake v1 and v2 trees: usage, paths kept under the root, errors named."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from spotguard.reclaim.cgroup import (
    Cgroup,
    CgroupError,
    CgroupPathError,
    CgroupPermissionError,
    CgroupVanished,
    Usage,
    resolve,
)
from tests.test_reclaim_support import MIB, FakeHost, FakeKernel


def test_v2_usage_from_memory_current_and_the_lru_split(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("app.slice", file=30 * MIB, anon=10 * MIB)
    cgroup = Cgroup.under(host.fs, host.cgroup_root, "app.slice", FakeKernel(host))
    assert cgroup.name == "app.slice"
    assert cgroup.usage() == Usage(total=40 * MIB, file=30 * MIB, anon=10 * MIB)


def test_v1_usage_from_usage_in_bytes_and_hierarchical_totals(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, v1=True)
    host.add("batch", file=64 * MIB, anon=8 * MIB)
    cgroup = Cgroup.under(host.fs, host.cgroup_root, "batch", FakeKernel(host))
    assert cgroup.usage() == Usage(total=72 * MIB, file=64 * MIB, anon=8 * MIB)
    assert cgroup.limit() == (1 << 63) - 4096
    assert cgroup.pressure() is None  # v1 has no memory.pressure


def test_minimal_memory_stat_falls_back_to_the_v2_totals(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=0)
    host.put(f"{host.cgroup_root}/a/memory.stat", "anon 5\nfile 7\n")
    assert Cgroup.under(host.fs, host.cgroup_root, "a", FakeKernel(host)).usage().file == 7


def test_writes_name_what_they_write(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=64 * MIB, swap_reclaim=True)
    kernel = FakeKernel(host)
    cgroup = Cgroup.under(host.fs, host.cgroup_root, "a", kernel)
    cgroup.reclaim(MIB, swappiness=0)
    cgroup.reclaim(MIB)
    cgroup.swap_reclaim(2 * MIB)
    assert cgroup.swap_reclaimed() == 2 * MIB
    assert kernel.writes == [
        ("a/memory.reclaim", f"{MIB} swappiness=0"),
        ("a/memory.reclaim", f"{MIB}"),
        ("a/memory.swap.reclaim", f"{2 * MIB}"),
    ]


def test_pressure_from_memory_pressure(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=0)
    host.put(f"{host.cgroup_root}/a/memory.pressure", "some avg10=2.50 avg60=0 avg300=0 total=1\n")
    assert Cgroup.under(host.fs, host.cgroup_root, "a", FakeKernel(host)).pressure() == 2.5


def test_a_removed_cgroup_is_vanished_for_reads_and_writes(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=MIB)
    cgroup = Cgroup.under(host.fs, host.cgroup_root, "a", FakeKernel(host))
    for child in host.cgroup_path("a").iterdir():
        child.unlink()
    host.cgroup_path("a").rmdir()
    with pytest.raises(CgroupVanished):
        cgroup.usage()
    with pytest.raises(CgroupVanished):
        cgroup.reclaim(MIB)
    with pytest.raises(CgroupVanished):
        cgroup.children()
    assert not cgroup.exists()


def test_permission_and_garbage_give_clear_errors(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=MIB)
    kernel = FakeKernel(host, fail={"memory.reclaim": PermissionError(errno.EACCES, "denied")})
    cgroup = Cgroup.under(host.fs, host.cgroup_root, "a", kernel)
    with pytest.raises(CgroupPermissionError, match=r"memory\.reclaim.*run as root"):
        cgroup.reclaim(MIB)
    host.put(f"{host.cgroup_root}/a/memory.current", "lots\n")
    with pytest.raises(CgroupError, match="expected a number"):
        cgroup.current()


def test_children_are_sorted_directories_not_symlinks(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    for name in ("b", "a", "c/d"):
        host.add(name, file=0)
    host.cgroup_path("link").symlink_to(host.cgroup_path("a"))
    root = Cgroup.under(host.fs, host.cgroup_root, "", FakeKernel(host))
    assert root.name == "/"
    assert root.children() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a", "/sys/fs/cgroup/a"),
        ("a/b/", "/sys/fs/cgroup/a/b"),
        ("/sys/fs/cgroup/a", "/sys/fs/cgroup/a"),
        ("./a", "/sys/fs/cgroup/a"),
        ("", "/sys/fs/cgroup"),
    ],
)
def test_resolve_keeps_names_under_the_root(tmp_path: Path, name: str, expected: str) -> None:
    host = FakeHost(tmp_path)
    host.add("a/b", file=0)
    assert resolve(host.fs, host.cgroup_root, name) == expected


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc", "/sys/fs/cgroupx/a", "escape/x"])
def test_resolve_refuses_escapes(tmp_path: Path, name: str) -> None:
    host = FakeHost(tmp_path)
    host.add("a", file=0)
    (tmp_path / "outside" / "x").mkdir(parents=True)
    host.cgroup_path("escape").symlink_to(tmp_path / "outside")
    with pytest.raises(CgroupPathError):
        resolve(host.fs, host.cgroup_root, name)
