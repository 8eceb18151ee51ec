"""Emergency reclaim on the real kernel (cgroup v1, cgroups this test makes): few large steps,
against the idle steps' many small ones, and the limit always put back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotguard.clock import SystemClock
from spotguard.config import Bytes, ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.writer import LibcWriter
from tests.test_reclaim_support import MIB, Sandbox, sandbox_or_skip

pytestmark = pytest.mark.cgroup
UNLIMITED = 9223372036854771712


class CountingWriter(LibcWriter):
    def __init__(self) -> None:
        super().__init__()
        self.lowered: list[str] = []

    def write(self, path: Path, data: str) -> None:
        if path.name == "memory.limit_in_bytes" and int(data) < UNLIMITED:
            self.lowered.append(data)
        super().write(path, data)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandbox_or_skip(tmp_path) as box:
        yield box


def reclaim(box: Sandbox, tmp_path: Path, intensity: Intensity) -> tuple[int, int]:
    """(bytes reclaimed, limit-lowering writes) for 256 MiB of page cache in a fresh cgroup."""
    name = f"load-{intensity.value}"
    box.workload(name, file_mib=256)
    config = ReclaimConfig(
        cgroup_root=str(box.root), step=Bytes(32 * MIB), idle_psi=100.0, emergency_psi=100.0
    )
    writer = CountingWriter()
    reclaimer = StagedReclaimer(HostFS(), config, SystemClock(), tmp_path, writer=writer)
    target = box.usage(name)
    request = ReclaimRequest(intensity, 60.0, target_bytes=target, cgroups=(name,))
    result = reclaimer.reclaim(request, threading.Event())
    assert int((box.root / name / "memory.limit_in_bytes").read_text()) == UNLIMITED
    return result.reclaimed_bytes, len(writer.lowered)


def test_emergency_takes_it_in_a_few_large_steps(sandbox: Sandbox, tmp_path: Path) -> None:
    deep_bytes, deep_steps = reclaim(sandbox, tmp_path, Intensity.DEEP)
    emergency_bytes, emergency_steps = reclaim(sandbox, tmp_path, Intensity.EMERGENCY)
    assert emergency_bytes >= 240 * MIB
    assert deep_bytes >= 240 * MIB
    assert emergency_steps <= 3  # 256 MiB first, then sized to the rate seen
    assert deep_steps >= 8  # 32 MiB steps
