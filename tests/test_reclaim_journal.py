"""The v1 limit journal: originals recorded once, owners tracked, restored only when orphaned."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import structlog

from spotguard.hostfs import HostFS
from spotguard.process import ProcessId
from spotguard.reclaim.journal import JOURNAL_NAME, Entry, LimitJournal
from spotguard.reclaim.v1 import restore_journal
from tests.test_owner import dead_owner, running_owner
from tests.test_reclaim_support import MIB, FakeHost, FakeKernel

ME = ProcessId.current(HostFS())


def leave(path: Path, entries: dict[str, tuple[int, list[ProcessId]]]) -> None:
    """A journal as other processes (live, dead, of another boot) would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        key: {"original": original, "owners": [o.to_dict() for o in owners]}
        for key, (original, owners) in entries.items()
    }
    path.write_text(json.dumps({"version": 2, "entries": data}))


def test_the_first_original_is_kept_and_the_entry_lives_while_an_owner_does(
    tmp_path: Path,
) -> None:
    journal = LimitJournal(tmp_path / "state")
    assert journal.claim("/m/a", lambda: 8 << 30) == 8 << 30
    assert journal.claim("/m/a", lambda: 3 << 30) == 8 << 30  # a lowered value never wins
    journal.release("/m/a")
    assert not (tmp_path / "state" / JOURNAL_NAME).exists()
    # another process lowered it and still works on it: its original is ours too
    with running_owner() as other:
        leave(journal.path, {"/m/a": (8 << 30, [dead_owner(), other])})
        assert journal.claim("/m/a", lambda: 3 << 30) == 8 << 30
        assert [o.pid for o in journal.pending()["/m/a"].owners][1:] == [other.pid, ME.pid]
        journal.release("/m/a")  # the dead owner goes too: its lowering is undone as well
        assert journal.pending() == {"/m/a": Entry(8 << 30, (other,))}


def test_a_corrupt_journal_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    for text in ("{not json", '["a list"]', "[" * 100_000 + "]" * 100_000):
        path.write_text(text)
        assert LimitJournal(tmp_path).pending() == {}
    path.write_text('{"/a": "text", "/b": 5, "/c": true}')  # the first format: path -> limit
    assert LimitJournal(tmp_path).pending() == {"/b": Entry(5)}
    entries = {"/d": {"original": 7, "owners": [{"pid": "x"}]}, "/e": {"original": "7"}}
    path.write_text(json.dumps({"version": 2, "entries": entries}))
    assert LimitJournal(tmp_path).pending() == {"/d": Entry(7)}


def test_recover_skips_live_owners_drops_older_boots_and_keeps_failures(
    tmp_path: Path,
) -> None:
    journal = LimitJournal(tmp_path)
    gone = dead_owner()
    leave(
        journal.path,
        {
            "/live": (1, [gone, ME]),
            "/dead": (2, [gone]),
            "/old-boot": (3, [ProcessId(1, 1, "another-boot")]),
            "/fails": (4, [gone]),
        },
    )
    restored: list[tuple[str, int]] = []

    def restore(key: str, original: int) -> bool:
        restored.append((key, original))
        return key != "/fails"

    journal.recover(restore)
    assert sorted(restored) == [("/dead", 2), ("/fails", 4)]
    assert sorted(journal.pending()) == ["/fails", "/live"]


def test_restore_puts_limits_back_and_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root", v1=True)
    host.add("a", file=MIB)
    host.put(f"{host.cgroup_root}/a/memory.limit_in_bytes", f"{64 * MIB}\n")
    journal = LimitJournal(tmp_path / "state")
    gone = [dead_owner()]
    paths = (f"{host.cgroup_root}/a", f"{host.cgroup_root}/gone", "/etc/passwd")
    leave(journal.path, dict.fromkeys(paths, (1 << 40, gone)))
    kernel = FakeKernel(host)
    with structlog.testing.capture_logs() as logs:
        restore_journal(journal, host.fs, host.cgroup_root, kernel)
    assert host.read(f"{host.cgroup_root}/a/memory.limit_in_bytes").strip() == str(1 << 40)
    assert kernel.writes == [("a/memory.limit_in_bytes", str(1 << 40))]
    assert journal.pending() == {}
    assert sorted(e["event"] for e in logs) == [
        "reclaim.journal_outside_root",
        "reclaim.limit_restored",
    ]


def test_restore_leaves_a_live_owners_entry_alone(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root", v1=True)
    host.add("a", file=MIB)
    journal = LimitJournal(tmp_path / "state")
    leave(journal.path, {f"{host.cgroup_root}/a": (1 << 40, [ME])})
    kernel = FakeKernel(host)
    restore_journal(journal, host.fs, host.cgroup_root, kernel)
    assert kernel.writes == []
    assert list(journal.pending()) == [f"{host.cgroup_root}/a"]


def test_a_failed_restore_stays_in_the_journal_for_next_time(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root", v1=True)
    host.add("a", file=MIB)
    journal = LimitJournal(tmp_path / "state")
    leave(journal.path, {f"{host.cgroup_root}/a": (1 << 40, [dead_owner()])})
    kernel = FakeKernel(host, fail={"memory.limit_in_bytes": OSError(errno.EIO, "I/O error")})
    restore_journal(journal, host.fs, host.cgroup_root, kernel)
    assert [e.original for e in journal.pending().values()] == [1 << 40]


def test_recover_never_fails_a_start(tmp_path: Path) -> None:
    LimitJournal(tmp_path / "none").recover(lambda key, original: True)
    assert not (tmp_path / "none").exists()  # no journal: the state dir is not even made
    leave(tmp_path / "ro" / JOURNAL_NAME, {"/m/a": (1, [dead_owner()])})
    (tmp_path / "ro" / "reclaim-v1-limits.lock").mkdir()  # the lock cannot be opened
    with structlog.testing.capture_logs() as logs:
        LimitJournal(tmp_path / "ro").recover(lambda key, original: True)
    assert [e["event"] for e in logs] == ["reclaim.journal_unusable"]
