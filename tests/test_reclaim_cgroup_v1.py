"""The v1 backend on the real kernel, in cgroups this test makes (never anyone else's)."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spotguard.clock import SystemClock
from spotguard.config import Bytes, ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.reclaim.backend import Phase
from spotguard.reclaim.cgroup import Cgroup, CgroupVanished
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.journal import LimitJournal
from spotguard.reclaim.v1 import ForceEmptyBackend
from spotguard.reclaim.writer import LibcWriter
from tests.test_owner import dead_owner
from tests.test_reclaim_journal import leave
from tests.test_reclaim_support import MIB, Sandbox, sandbox_or_skip

pytestmark = pytest.mark.cgroup
UNLIMITED = 9223372036854771712


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandbox_or_skip(tmp_path) as box:
        yield box


def config_for(box: Sandbox) -> ReclaimConfig:
    """The sandbox is the whole world to the engine; PSI is the host's, so do not gate on it."""
    return ReclaimConfig(
        cgroup_root=str(box.root),
        background=("bg",),
        protected=("prot",),
        step=Bytes(32 * MIB),
        idle_psi=100.0,
        emergency_psi=100.0,
    )


class HookedWriter(LibcWriter):
    """The real writer, with a hook before every write (cancel mid-run, fail a write)."""

    def __init__(self, hook: Callable[[Path, str], None]) -> None:
        super().__init__()
        self._hook = hook

    def write(self, path: Path, data: str) -> None:
        self._hook(path, data)
        super().write(path, data)


def limit(box: Sandbox, name: str) -> int:
    return int((box.root / name / "memory.limit_in_bytes").read_text())


def test_staged_limit_lowering_reclaims_page_cache_and_restores_the_limit(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.workload("bg", file_mib=160, anon_mib=32)
    sandbox.workload("prot", file_mib=64)
    bg_before, prot_before = sandbox.usage("bg"), sandbox.usage("prot")
    state = tmp_path / "state"
    reclaimer = StagedReclaimer(HostFS(), config_for(sandbox), SystemClock(), state)
    assert reclaimer.report.chosen == "v1"
    result = reclaimer.reclaim(ReclaimRequest(Intensity.DEEP, budget_s=60.0), threading.Event())

    assert [(s.cgroup, s.backend) for s in result.stages] == [("bg", "v1")]
    stage = result.stages[0]
    assert stage.steps > 1
    assert stage.stop_reason == "no-progress"
    assert stage.reclaimed_bytes > 100 * MIB
    assert stage.file_bytes > 100 * MIB
    assert bg_before - sandbox.usage("bg") > 100 * MIB
    assert sandbox.usage("bg") > 30 * MIB  # no swap: the anonymous memory stays
    assert sandbox.usage("prot") > prot_before - 8 * MIB  # protected: untouched
    assert limit(sandbox, "bg") == UNLIMITED
    assert LimitJournal(state).pending() == {}
    assert reclaimer.last_result == result


def test_cancel_mid_stage_still_restores_the_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.workload("bg", file_mib=128)
    cancel = threading.Event()
    lowered: list[str] = []

    def cancel_after_first_lowering(path: Path, data: str) -> None:
        if path.name == "memory.limit_in_bytes" and int(data) < UNLIMITED:
            if lowered:
                cancel.set()
            lowered.append(data)

    reclaimer = StagedReclaimer(
        HostFS(),
        config_for(sandbox),
        SystemClock(),
        tmp_path,
        writer=HookedWriter(cancel_after_first_lowering),
    )
    result = reclaimer.reclaim(ReclaimRequest(Intensity.LIGHT, 60.0), cancel)
    assert result.stop_reason == "cancelled"
    assert result.stages[0].stop_reason == "cancelled"
    assert result.stages[0].reclaimed_bytes > 0
    assert limit(sandbox, "bg") == UNLIMITED


def test_a_failing_write_ends_the_stage_and_still_restores_the_limit(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.workload("bg", file_mib=128)
    writes: list[str] = []

    def fail_the_second_lowering(path: Path, data: str) -> None:
        if path.name == "memory.limit_in_bytes" and int(data) < UNLIMITED:
            writes.append(data)
            if len(writes) == 2:
                raise OSError(errno.EIO, "Input/output error", str(path))

    reclaimer = StagedReclaimer(
        HostFS(),
        config_for(sandbox),
        SystemClock(),
        tmp_path,
        writer=HookedWriter(fail_the_second_lowering),
    )
    result = reclaimer.reclaim(ReclaimRequest(Intensity.LIGHT, 60.0), threading.Event())
    assert [(s.stop_reason, s.steps) for s in result.stages] == [("error", 1)]
    assert limit(sandbox, "bg") == UNLIMITED
    assert LimitJournal(tmp_path).pending() == {}


def test_a_limit_left_lowered_by_a_dead_agent_is_restored_at_start(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.group("bg")
    (sandbox.root / "bg" / "memory.limit_in_bytes").write_text(str(512 * MIB))
    leave(LimitJournal(tmp_path).path, {str(sandbox.root / "bg"): (UNLIMITED, [dead_owner()])})
    StagedReclaimer(HostFS(), config_for(sandbox), SystemClock(), tmp_path)
    assert limit(sandbox, "bg") == UNLIMITED
    assert LimitJournal(tmp_path).pending() == {}


def test_force_empty_takes_the_page_cache_in_one_write(sandbox: Sandbox) -> None:
    sandbox.workload("bg", file_mib=128, anon_mib=16)
    cgroup = Cgroup.under(HostFS(), str(sandbox.root), "bg", LibcWriter())
    before = cgroup.usage()
    outcome = ForceEmptyBackend().step(cgroup, 0, Phase.FILE)
    after = cgroup.usage()
    assert outcome.exhausted
    assert before.file - after.file > 100 * MIB
    assert before.total - after.total > 100 * MIB
    assert after.anon >= 15 * MIB


def test_emergency_on_v1_uses_force_empty_then_protected_last(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.workload("bg", file_mib=64)
    sandbox.workload("other", file_mib=64)
    sandbox.workload("prot", file_mib=64)
    reclaimer = StagedReclaimer(HostFS(), config_for(sandbox), SystemClock(), tmp_path)
    result = reclaimer.reclaim(ReclaimRequest(Intensity.EMERGENCY, 60.0), threading.Event())
    assert [(s.cgroup, s.backend, s.stop_reason) for s in result.stages] == [
        ("bg", "v1.force_empty", "done"),
        ("other", "v1.force_empty", "done"),
        ("prot", "v1.force_empty", "done"),
    ]
    assert all(s.reclaimed_bytes > 48 * MIB for s in result.stages)


def test_a_removed_cgroup_reads_and_writes_as_vanished(sandbox: Sandbox) -> None:
    sandbox.group("gone")
    cgroup = Cgroup.under(HostFS(), str(sandbox.root), "gone", LibcWriter())
    assert cgroup.usage().total >= 0
    (sandbox.root / "gone").rmdir()
    with pytest.raises(CgroupVanished):
        cgroup.usage()
    with pytest.raises(CgroupVanished):
        cgroup.set_limit(64 * MIB)
