"""Which backend a host gets, on fake trees for each kernel interface."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

from spotguard.clock import FakeClock
from spotguard.config import ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.reclaim.detect import detect_backends, memory_root
from spotguard.reclaim.drop_caches import DROP_CACHES
from spotguard.reclaim.engine import StagedReclaimer
from tests.test_reclaim_support import MIB, FakeHost, FakeKernel


def test_v2_with_swappiness(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, swap_free=2 * MIB)
    kernel = FakeKernel(host)
    report = detect_backends(host.fs, ReclaimConfig(), kernel)
    assert (report.hierarchy, report.memory_root) == ("v2", "/sys/fs/cgroup")
    assert (report.available, report.chosen, report.usable) == (("v2",), "v2", True)
    assert report.swappiness
    assert report.swap_free_bytes == 2 * MIB
    assert kernel.writes == [("./memory.reclaim", "0 swappiness=0")]  # the probe: 0 bytes
    assert report.describe().startswith("v2 (v2 at /sys/fs/cgroup; page cache first")


def test_v2_without_swappiness_says_so(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    report = detect_backends(host.fs, ReclaimConfig(), FakeKernel(host, swappiness=False))
    assert report.chosen == "v2"
    assert not report.swappiness
    assert any("no swappiness" in note for note in report.notes)


def test_a_failing_probe_is_a_note_not_a_crash(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    kernel = FakeKernel(host, fail={"memory.reclaim": OSError(errno.EIO, "I/O error")})
    report = detect_backends(host.fs, ReclaimConfig(), kernel)
    assert report.chosen == "v2"
    assert any("probe failed" in note for note in report.notes)


def test_v1_under_the_default_root_is_found_in_memory(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, v1=True)
    assert memory_root(host.fs, "/sys/fs/cgroup") == ("/sys/fs/cgroup/memory", "v1")
    report = detect_backends(host.fs, ReclaimConfig(), FakeKernel(host))
    assert (report.available, report.chosen, report.swappiness) == (("v1",), "v1", False)
    assert "no swap" in report.describe()


def test_the_rfc_interface_where_only_children_have_it(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, v1=True)
    host.add("a", file=MIB, swap_reclaim=True)
    report = detect_backends(host.fs, ReclaimConfig(backend="swap.reclaim"), FakeKernel(host))
    assert report.available == ("swap.reclaim", "v1")
    assert report.chosen == "swap.reclaim"


def test_configured_backend_missing(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, v1=True)
    report = detect_backends(host.fs, ReclaimConfig(backend="v2"), FakeKernel(host))
    assert not report.usable
    assert "reclaim.backend=v2 is not available here" in report.describe()


def test_nothing_at_all(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    report = detect_backends(fs, ReclaimConfig(allow_drop_caches=True))
    assert (report.hierarchy, report.memory_root, report.chosen) == ("none", None, None)
    assert "no memory cgroup hierarchy under /sys/fs/cgroup" in report.describe()
    assert report.to_dict()["available"] == ()


def test_drop_caches_is_off_unless_allowed(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.put(DROP_CACHES, "0\n")
    off = detect_backends(host.fs, ReclaimConfig(), FakeKernel(host))
    assert off.available == ("v2",)
    assert any("allow_drop_caches" in note for note in off.notes)
    on = detect_backends(host.fs, ReclaimConfig(allow_drop_caches=True), FakeKernel(host))
    assert on.available == ("v2", "drop_caches")


def test_drop_caches_syncs_then_drops_page_cache_only_on_the_fake_tree(tmp_path: Path) -> None:
    """Only ever on a fake tree: never the host's /proc/sys/vm/drop_caches."""
    host = FakeHost(tmp_path)
    host.add("x", file=512 * MIB)
    host.put(DROP_CACHES, "0\n")
    host.write_meminfo(free=4096 * MIB)
    synced: list[str] = []

    def drop(path: Path, data: str) -> None:
        if path == host.fs.path(DROP_CACHES):
            synced.append(f"drop {data}")
            host.groups["x"].file = 0
            host.write_meminfo(free=4608 * MIB)

    config = ReclaimConfig(backend="drop_caches", allow_drop_caches=True)
    reclaimer = StagedReclaimer(
        host.fs,
        config,
        FakeClock(),
        tmp_path / "state",
        writer=FakeKernel(host, before=drop),
        sync=lambda: synced.append("sync"),
    )
    light = reclaimer.reclaim(ReclaimRequest(Intensity.LIGHT, 10.0), threading.Event())
    assert (light.stop_reason, light.stages) == ("no-targets", ())  # global: never when idle
    deep = reclaimer.reclaim(ReclaimRequest(Intensity.DEEP, 10.0), threading.Event())
    assert synced == ["sync", "drop 1"]
    assert [(s.cgroup, s.backend, s.stop_reason) for s in deep.stages] == [
        ("(host)", "drop_caches", "done")
    ]
    assert deep.reclaimed_bytes == deep.stages[0].file_bytes == 512 * MIB
    assert host.read(DROP_CACHES) == "1"
