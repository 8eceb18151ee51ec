"""Process identity: a pid plus its start time and boot, checked against the real /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.process import BOOT_ID, ProcessId

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@contextmanager
def running_owner() -> Iterator[ProcessId]:
    """The identity of a real process that runs for as long as the block does."""
    proc = subprocess.Popen(SLEEPER)
    try:
        owner = ProcessId.of(HostFS(), proc.pid)
        assert owner is not None
        yield owner
    finally:
        proc.kill()
        proc.wait()


def dead_owner() -> ProcessId:
    """The identity of a real process that has exited (and been reaped)."""
    proc = subprocess.Popen(SLEEPER)
    owner = ProcessId.of(HostFS(), proc.pid)
    proc.kill()
    proc.wait()
    assert owner is not None
    return owner


def pretend_running(fs: HostFS, pid: int, start: int = 777, boot: str = "boot-b") -> ProcessId:
    """A process `pid` in a fake /proc tree (field 22 of its stat is `start`)."""
    fs.path(f"/proc/{pid}").mkdir(parents=True, exist_ok=True)
    fields = " ".join(["S", *["0"] * 18, str(start), "0"])
    fs.path(f"/proc/{pid}/stat").write_text(f"{pid} (odd) name)) {fields}\n")
    fs.path(BOOT_ID).parent.mkdir(parents=True, exist_ok=True)
    fs.path(BOOT_ID).write_text(f"{boot}\n")
    return ProcessId(pid, start, boot)


def test_this_process_is_alive_and_a_killed_one_is_not() -> None:
    me = ProcessId.current(HostFS())
    assert me.pid == os.getpid()
    assert me.start > 0
    assert me.boot == HostFS().read_text(BOOT_ID).strip()
    assert me.alive(HostFS())
    assert not dead_owner().alive(HostFS())


def test_a_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(SLEEPER)
    owner = ProcessId.of(HostFS(), proc.pid)
    assert owner is not None
    proc.kill()
    for _ in range(100):  # not reaped yet: /proc/<pid>/stat says Z
        if "Z" in Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2][:3]:
            break
        time.sleep(0.01)
    assert not owner.alive(HostFS())
    proc.wait()


def test_a_reused_pid_or_another_boot_is_not_the_owner(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    pretend_running(fs, 4242, start=777, boot="boot-b")  # a command name with spaces and ')'
    assert ProcessId.of(fs, 4242) == ProcessId(4242, 777, "boot-b")
    assert ProcessId(4242, 777, "boot-b").alive(fs)
    assert not ProcessId(4242, 776, "boot-b").alive(fs)  # same pid, a later process
    assert not ProcessId(4242, 777, "boot-a").alive(fs)
    assert not ProcessId(4242, 777, "boot-a").this_boot(fs)
    assert ProcessId.of(fs, 4243) is None
    assert not ProcessId(4242, 0, "boot-b").alive(fs)  # start unknown: never counts as alive


def test_records_round_trip_and_garbage_is_refused() -> None:
    owner = ProcessId(12, 34, "b")
    assert ProcessId.from_dict(owner.to_dict()) == owner
    garbage: list[object] = [None, [], {"pid": "12", "start": 34, "boot": "b"}, {"pid": True}]
    assert [ProcessId.from_dict(g) for g in garbage] == [None] * len(garbage)
