"""The host reclaim lock and the Reclaimer that honours it, with real flocks and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spotguard.clock import SystemClock
from spotguard.hostlock import HostLock
from spotguard.reclaim.api import Intensity, ProgressFn, ReclaimRequest, ReclaimResult
from spotguard.reclaim.exclusive import ExclusiveReclaimer, Wait, agent_policy

# Holds the lock until stdin closes; on SIGTERM lets go and exits 0, as `spotguard reclaim` does.
HOLDER = """
import signal, sys, time
from pathlib import Path
from spotguard.hostlock import HostLock
lock = HostLock(Path(sys.argv[1]))
assert lock.try_acquire(sys.argv[2], time.time())
def stop(*_):
    lock.release()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder_process(state: Path, role: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.communicate()


@dataclass
class Recorder:
    """A Reclaimer that only notes what it was asked (and can fail)."""

    fail: bool = False
    requests: list[ReclaimRequest] = field(default_factory=list)

    def reclaim(
        self, request: ReclaimRequest, cancel: threading.Event, progress: ProgressFn | None = None
    ) -> ReclaimResult:
        self.requests.append(request)
        if self.fail:
            raise RuntimeError("backend bug")
        return ReclaimResult(request.intensity, 1, 0.0, "complete")


def exclusive(
    state: Path, inner: Recorder, policy: Wait, kills: list[tuple[int, int]] | None = None
) -> ExclusiveReclaimer:
    def kill(pid: int, signum: int) -> None:
        if kills is None:
            os.kill(pid, signum)
        else:
            kills.append((pid, signum))

    lock = HostLock(state)
    return ExclusiveReclaimer(
        inner, lock, SystemClock(), role="agent", policy=lambda _: policy, kill=kill
    )


def test_one_holder_at_a_time_and_who_it_is(tmp_path: Path) -> None:
    first, second = HostLock(tmp_path), HostLock(tmp_path)
    assert second.holder() is None
    assert first.try_acquire("reclaim", time.time())
    assert not second.try_acquire("agent", time.time())  # flock: per open file, same process
    holder = second.holder()
    assert holder is not None
    assert holder.owner.pid == os.getpid()
    assert f"pid {os.getpid()}, spotguard reclaim, since " in holder.describe()
    first.release()
    assert second.holder() is None
    assert second.try_acquire("agent", time.time())
    agent = first.holder()
    assert agent is not None
    assert "the agent (spotguard run)" in agent.describe()
    second.release()


def test_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    lock = HostLock(tmp_path)
    with holder_process(tmp_path, "reclaim") as proc:
        assert not lock.try_acquire("agent", time.time())
        proc.kill()
        proc.wait()
        assert lock.holder() is None  # its record is still in the file; its process is not
        assert lock.try_acquire("agent", time.time())
    lock.release()


def test_skip_says_who_holds_it_and_does_not_reclaim(tmp_path: Path) -> None:
    inner = Recorder()
    with holder_process(tmp_path, "reclaim") as proc:
        result = exclusive(tmp_path, inner, Wait.SKIP).reclaim(
            ReclaimRequest(Intensity.LIGHT, 10.0), threading.Event()
        )
    assert result.stop_reason == "busy"
    assert f"pid {proc.pid}, spotguard reclaim" in result.stop_detail
    assert str(tmp_path / "reclaim.lock") in result.stop_detail
    assert inner.requests == []


def test_wait_takes_the_lock_when_it_is_freed_and_spends_the_budget_waiting(
    tmp_path: Path,
) -> None:
    inner = Recorder()
    other = HostLock(tmp_path)
    assert other.try_acquire("reclaim", time.time())
    threading.Timer(0.4, other.release).start()
    result = exclusive(tmp_path, inner, Wait.WAIT).reclaim(
        ReclaimRequest(Intensity.DEEP, 10.0), threading.Event()
    )
    assert result.stop_reason == "complete"
    assert [r.budget_s < 9.7 for r in inner.requests] == [True]
    assert HostLock(tmp_path).try_acquire("agent", time.time())  # released after


def test_wait_gives_up_at_the_budget_or_on_cancel(tmp_path: Path) -> None:
    inner = Recorder()
    other = HostLock(tmp_path)
    assert other.try_acquire("agent", time.time())
    began = time.monotonic()
    result = exclusive(tmp_path, inner, Wait.WAIT).reclaim(
        ReclaimRequest(Intensity.DEEP, 0.3), threading.Event()
    )
    assert result.stop_reason == "busy"
    assert 0.3 <= time.monotonic() - began < 2.0
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    result = exclusive(tmp_path, inner, Wait.WAIT).reclaim(
        ReclaimRequest(Intensity.DEEP, 30.0), cancel
    )
    assert result.stop_reason == "busy"
    assert inner.requests == []


def test_an_emergency_asks_a_persons_reclaim_to_stop_but_never_the_agent(
    tmp_path: Path,
) -> None:
    inner = Recorder()
    with holder_process(tmp_path, "reclaim") as proc:
        result = exclusive(tmp_path, inner, agent_policy(Intensity.EMERGENCY)).reclaim(
            ReclaimRequest(Intensity.EMERGENCY, 10.0), threading.Event()
        )
        assert proc.wait(5) == 0  # it got SIGTERM, let go and exited cleanly
    assert result.stop_reason == "complete"
    assert len(inner.requests) == 1
    kills: list[tuple[int, int]] = []
    with holder_process(tmp_path, "agent"):
        result = exclusive(tmp_path, inner, Wait.PREEMPT, kills).reclaim(
            ReclaimRequest(Intensity.EMERGENCY, 0.3), threading.Event()
        )
    assert result.stop_reason == "busy"
    assert kills == []


def test_the_agents_policy() -> None:
    assert [agent_policy(i) for i in Intensity] == [Wait.SKIP, Wait.WAIT, Wait.PREEMPT]


def test_the_lock_is_released_when_the_reclaim_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="backend bug"):
        exclusive(tmp_path, Recorder(fail=True), Wait.SKIP).reclaim(
            ReclaimRequest(Intensity.DEEP, 1.0), threading.Event()
        )
    assert HostLock(tmp_path).try_acquire("agent", time.time())


def test_preempt_survives_a_holder_that_is_gone_by_then(tmp_path: Path) -> None:
    def refuse(pid: int, signum: int) -> None:
        raise ProcessLookupError(3, "No such process")

    inner = Recorder()
    lock = HostLock(tmp_path)
    with holder_process(tmp_path, "reclaim"):
        reclaimer = ExclusiveReclaimer(
            inner, lock, SystemClock(), role="agent", policy=agent_policy, kill=refuse
        )
        result = reclaimer.reclaim(ReclaimRequest(Intensity.EMERGENCY, 0.3), threading.Event())
    assert result.stop_reason == "busy"
    assert inner.requests == []


def test_a_lock_that_cannot_be_opened_does_not_stop_the_reclaim(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    inner = Recorder()
    result = exclusive(tmp_path / "file" / "state", inner, Wait.SKIP).reclaim(
        ReclaimRequest(Intensity.EMERGENCY, 1.0), threading.Event()
    )
    assert result.stop_reason == "complete"
    assert len(inner.requests) == 1
