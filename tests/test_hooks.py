"""Hooks are real small scripts in tmp_path, run by the real HookRunner."""

from __future__ import annotations

import os
import pwd
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


# -- only root's hooks run as root -----------------------------------------------------------
NOBODY = pwd.getpwnam("nobody")


def run_marked(root: Path, kind: str = "on-notice") -> tuple[list[HookResult], list[str]]:
    """Run `kind`; the hooks made by `planted` leave a mark when they run."""
    with capture_logs() as logs:
        results = HookRunner(root, timeout_s=5).run(kind, EVENT)
    skipped = [e["reason"] for e in logs if e["event"] == "hook.skipped"]
    return results, skipped


def planted(root: Path, mark: Path, kind: str = "on-notice", name: str = "hook") -> Path:
    return hook(root, kind, name, f"echo ran >> {mark}")


def test_a_hook_written_by_nobody_into_a_0777_folder_does_not_run(tmp_path: Path) -> None:
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    path = planted(root, mark)
    path.parent.chmod(0o777)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    results, skipped = run_marked(root)
    assert not mark.exists()
    assert [r.returncode for r in results] == [None]
    # The file is checked first: its owner is the first reason given.
    assert skipped == [f"{path} is owned by uid {NOBODY.pw_uid}, not root"]
    assert results[0].error == f"skipped: {skipped[0]}"


@pytest.mark.parametrize("where", ["file", "kind folder", "hook root"])
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_group_or_world_writable_on_the_way_is_skipped(
    tmp_path: Path, where: str, mode: int
) -> None:
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    path = planted(root, mark)
    item = {"file": path, "kind folder": path.parent, "hook root": root}[where]
    item.chmod(mode)
    _, skipped = run_marked(root)
    assert not mark.exists()
    assert skipped == [f"{item} is writable by its group or others (mode {mode:04o})"]


@pytest.mark.parametrize("where", ["kind folder", "hook root"])
def test_a_folder_on_the_way_owned_by_someone_else_is_skipped(tmp_path: Path, where: str) -> None:
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    path = planted(root, mark)
    item = {"kind folder": path.parent, "hook root": root}[where]
    os.chown(item, NOBODY.pw_uid, NOBODY.pw_gid)
    _, skipped = run_marked(root)
    assert not mark.exists()
    assert skipped == [f"{item} is owned by uid {NOBODY.pw_uid}, not root"]


def test_what_is_above_the_hook_root_is_not_the_hooks_business(tmp_path: Path) -> None:
    above = tmp_path / "shared"
    root, mark = above / "hooks", tmp_path / "mark"
    planted(root, mark)
    above.chmod(0o777)
    results, skipped = run_marked(root)
    assert (skipped, [r.ok for r in results]) == ([], [True])
    assert mark.read_text() == "ran\n"


def test_a_symlink_to_elsewhere_is_skipped(tmp_path: Path) -> None:
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    elsewhere = planted(tmp_path / "elsewhere", mark)  # root's own, but not a hook
    link = root / "on-notice" / "link"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    _, skipped = run_marked(root)
    assert not mark.exists()
    assert skipped == [f"{link} resolves outside the hook folder {root}, to {elsewhere}"]


def test_a_kind_folder_that_is_a_symlink_to_elsewhere_is_skipped(tmp_path: Path) -> None:
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    elsewhere = planted(tmp_path / "elsewhere", mark)
    root.mkdir()
    (root / "on-notice").symlink_to(elsewhere.parent)
    _, skipped = run_marked(root)
    assert not mark.exists()
    assert len(skipped) == 1
    assert "resolves outside the hook folder" in skipped[0]


def test_a_symlink_within_the_hook_root_runs_the_file_it_names(tmp_path: Path) -> None:
    root, trail = tmp_path / "hooks", tmp_path / "trail"
    shared = hook(root, "shared", "notify", f'echo "$0" >> {trail}')
    link = root / "on-notice" / "notify"
    link.parent.mkdir()
    link.symlink_to("../shared/notify")
    results, skipped = run_marked(root)
    assert (skipped, [(r.hook, r.ok) for r in results]) == ([], [("notify", True)])
    assert trail.read_text() == f"{shared}\n"  # what was checked is what ran


def test_a_symlink_into_the_root_from_a_writable_folder_is_skipped(tmp_path: Path) -> None:
    """The link itself could be swapped by whoever may write the folder holding it."""
    root, mark = tmp_path / "hooks", tmp_path / "mark"
    target = planted(root, mark, kind="shared")
    link = root / "on-notice" / "hook"
    link.parent.mkdir()
    link.symlink_to(target)
    link.parent.chmod(0o777)
    _, skipped = run_marked(root)
    assert not mark.exists()
    assert skipped == [f"{link.parent} is writable by its group or others (mode 0777)"]


def test_a_dangling_symlink_is_skipped_as_not_executable(tmp_path: Path) -> None:
    root = tmp_path / "hooks"
    (root / "on-notice").mkdir(parents=True)
    (root / "on-notice" / "gone").symlink_to(root / "nowhere")
    with capture_logs() as logs:
        assert HookRunner(root, timeout_s=1).run("on-notice", EVENT) == []
    assert [e["event"] for e in logs] == ["hook.not_executable"]
