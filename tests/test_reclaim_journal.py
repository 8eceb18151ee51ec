"""The v1 limit journal: what survives a crash, and how the next start uses it."""

from __future__ import annotations

import errno
from pathlib import Path

import structlog

from spotguard.reclaim.journal import JOURNAL_NAME, LimitJournal
from spotguard.reclaim.v1 import restore_journal
from tests.test_reclaim_support import MIB, FakeHost, FakeKernel


def test_record_and_forget(tmp_path: Path) -> None:
    journal = LimitJournal(tmp_path / "state")
    journal.record("/sys/fs/cgroup/memory/a", 100)
    journal.record("/sys/fs/cgroup/memory/b", 200)
    assert LimitJournal(tmp_path / "state").pending() == {
        "/sys/fs/cgroup/memory/a": 100,
        "/sys/fs/cgroup/memory/b": 200,
    }
    journal.forget("/sys/fs/cgroup/memory/a")
    journal.forget("/sys/fs/cgroup/memory/b")
    assert not (tmp_path / "state" / JOURNAL_NAME).exists()


def test_a_corrupt_journal_is_ignored(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_text("{not json")
    assert LimitJournal(tmp_path).pending() == {}
    (tmp_path / JOURNAL_NAME).write_text('["a list"]')
    assert LimitJournal(tmp_path).pending() == {}
    (tmp_path / JOURNAL_NAME).write_text('{"/a": "text", "/b": 5}')
    assert LimitJournal(tmp_path).pending() == {"/b": 5}


def test_restore_puts_limits_back_and_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root", v1=True)
    host.add("a", file=MIB)
    host.put(f"{host.cgroup_root}/a/memory.limit_in_bytes", f"{64 * MIB}\n")
    journal = LimitJournal(tmp_path / "state")
    journal.record(f"{host.cgroup_root}/a", 1 << 40)
    journal.record(f"{host.cgroup_root}/gone", 1 << 40)
    journal.record("/etc/passwd", 1 << 40)
    kernel = FakeKernel(host)
    with structlog.testing.capture_logs() as logs:
        restore_journal(journal, host.fs, host.cgroup_root, kernel)
    assert host.read(f"{host.cgroup_root}/a/memory.limit_in_bytes").strip() == str(1 << 40)
    assert kernel.writes == [("a/memory.limit_in_bytes", str(1 << 40))]
    assert journal.pending() == {}
    assert [e["event"] for e in logs] == ["reclaim.journal_outside_root", "reclaim.limit_restored"]


def test_a_failed_restore_stays_in_the_journal_for_next_time(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "root", v1=True)
    host.add("a", file=MIB)
    journal = LimitJournal(tmp_path / "state")
    journal.record(f"{host.cgroup_root}/a", 1 << 40)
    kernel = FakeKernel(host, fail={"memory.limit_in_bytes": OSError(errno.EIO, "I/O error")})
    restore_journal(journal, host.fs, host.cgroup_root, kernel)
    assert journal.pending() == {f"{host.cgroup_root}/a": 1 << 40}
