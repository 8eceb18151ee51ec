"""Hooks are real small scripts in tmp_path, run by the real HookRunner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from spotguard.clock import FakeClock
from spotguard.hooks import HookResult, HookRunner

EVENT = {
    "SPOTGUARD_EVENT_KIND": "spot-interruption",
    "SPOTGUARD_EVENT_ID": "spot-2026-12-01T08:22:00Z",
    "SPOTGUARD_ACTION": "hibernate",
    "SPOTGUARD_DEADLINE": "1800000120",
    "SPOTGUARD_REASON": "notice",
}


def hook(hook_dir: Path, kind: str, name: str, body: str, mode: int = 0o755) -> Path:
    path = hook_dir / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def alive(pid: int) -> bool:
    """Running or sleeping; a killed process may linger as a zombie until init reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_hooks_run_in_name_order_with_the_event(tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    for name in ("20-second", "10-first"):
        hook(
            tmp_path,
            "pre-hibernate",
            name,
            f'echo "$0 $SPOTGUARD_HOOK $SPOTGUARD_ACTION" >> {trail}',
        )
    hook(tmp_path, "pre-hibernate", "30-env", "echo $SPOTGUARD_EVENT_ID $SPOTGUARD_DEADLINE")
    with capture_logs() as logs:
        results = HookRunner(tmp_path, timeout_s=5).run("pre-hibernate", EVENT)
    assert [r.hook for r in results] == ["10-first", "20-second", "30-env"]
    assert all(r.ok for r in results)
    assert results[2].output == "spot-2026-12-01T08:22:00Z 1800000120\n"
    assert trail.read_text().splitlines() == [
        f"{tmp_path}/pre-hibernate/10-first pre-hibernate hibernate",
        f"{tmp_path}/pre-hibernate/20-second pre-hibernate hibernate",
    ]
    assert [e["event"] for e in logs] == ["hook.ran"] * 3


def test_failures_are_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    hook(tmp_path, "on-notice", "a-fails", "echo disk full >&2; exit 4")
    hook(tmp_path, "on-notice", "b-plain-file", "exit 0", mode=0o644)
    hook(tmp_path, "on-notice", "c-works", "true")
    with capture_logs() as logs:
        results = HookRunner(tmp_path, timeout_s=5).run("on-notice", EVENT)
    assert results == [
        HookResult("a-fails", 4, output="disk full\n", error="exited 4"),
        HookResult("c-works", 0),
    ]
    assert [e["event"] for e in logs] == ["hook.not_executable", "hook.failed", "hook.ran"]


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook(tmp_path, "graceful", "hangs", f"sleep 30 & echo $! > {pids}; echo started; wait")
    with capture_logs() as logs:
        [result] = HookRunner(tmp_path, timeout_s=0.5).run("graceful", EVENT)
    assert (result.returncode, result.timed_out) == (None, True)
    assert result.output == "started\n"
    assert logs[-1]["event"] == "hook.timeout"
    child = int(pids.read_text())
    # SIGKILL to another process lands asynchronously: give it a moment to die.
    for _ in range(500):
        if not alive(child):
            break
        time.sleep(0.01)
    assert not alive(child)


def test_the_budget_bounds_every_hook(tmp_path: Path) -> None:
    for name in ("1", "2"):
        hook(tmp_path, "pre-reclaim", name, "true")
    clock = FakeClock()
    # A budget already spent before the first hook: nothing runs, both are reported.
    results = HookRunner(tmp_path, timeout_s=5, clock=clock).run("pre-reclaim", EVENT, budget_s=0)
    assert [(r.hook, r.returncode, r.error) for r in results] == [
        ("1", None, "skipped: the budget was spent"),
        ("2", None, "skipped: the budget was spent"),
    ]


def test_the_budget_cuts_a_hook_short(tmp_path: Path) -> None:
    hook(tmp_path, "pre-hibernate", "slow", "sleep 30")
    hook(tmp_path, "pre-hibernate", "zz-next", "true")
    results = HookRunner(tmp_path, timeout_s=60).run("pre-hibernate", EVENT, budget_s=0.5)
    assert results[0].timed_out
    assert results[0].error == "killed after 0.5 s"
    assert results[1].error == "skipped: the budget was spent"


def test_missing_folder_means_no_hooks(tmp_path: Path) -> None:
    assert HookRunner(tmp_path / "nowhere", timeout_s=1).run("post-resume", EVENT) == []


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown hook kind"):
        HookRunner(tmp_path, timeout_s=1).run("pre-lunch", EVENT)
