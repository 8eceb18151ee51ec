"""Reclaims that overlap on one real cgroup v1 (in a sandbox of our own): the agent's reclaimer,
`spotguard reclaim` processes, engines with no lock at all, and one killed mid-stage.

Every case ends with the workload's memory.limit_in_bytes at its original value and nothing
left in the journal: the promise is that no reclaim ever leaves a limit lowered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotguard.assemble import agent_reclaimer
from spotguard.clock import SystemClock
from spotguard.config import AgentConfig, Bytes, Config, ReclaimConfig, Seconds
from spotguard.hostfs import HostFS
from spotguard.hostlock import HostLock
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.journal import LimitJournal
from spotguard.reclaim.writer import LibcWriter
from tests.test_reclaim_support import MIB, Sandbox, sandbox_or_skip

pytestmark = pytest.mark.cgroup
ORIGINAL = 8 << 30  # the workload's own limit, as an operator set it
FILE_MIB = 64  # page cache refilled before every round: bounded, and reclaimed each time

# A reclaim engine in a process of its own, with no host lock: it stops right after its first
# lowered limit (the window in which the other reclaims start) until told to go on.
ENGINE = """
import sys
from pathlib import Path
from spotguard.clock import SystemClock
from spotguard.config import Bytes, ReclaimConfig, Seconds
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.writer import LibcWriter
import threading
import structlog

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: ours
root, state, original = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

class Holding(LibcWriter):
    held = False
    def write(self, path, data):
        super().write(path, data)
        if path.name == "memory.limit_in_bytes" and data != original and not self.held:
            self.held = True
            print("lowered", flush=True)
            sys.stdin.readline()

config = ReclaimConfig(
    cgroup_root=root, step=Bytes(8 << 20), idle_psi=100.0, emergency_psi=100.0,
    write_timeout=Seconds(60.0),
)
engine = StagedReclaimer(HostFS(), config, SystemClock(), state, writer=Holding())
result = engine.reclaim(ReclaimRequest(Intensity.DEEP, 60.0, cgroups=("work",)), threading.Event())
print(result.stop_reason, result.reclaimed_bytes, flush=True)
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandbox_or_skip(tmp_path) as box:
        box.group("work")
        (box.root / "work" / "memory.limit_in_bytes").write_text(str(ORIGINAL))
        yield box


def limit(box: Sandbox) -> int:
    return int((box.root / "work" / "memory.limit_in_bytes").read_text())


def reclaim_config(box: Sandbox) -> ReclaimConfig:
    """Host PSI is the shared machine's: do not let it decide these tests."""
    return ReclaimConfig(
        cgroup_root=str(box.root),
        step=Bytes(8 * MIB),
        idle_psi=100.0,
        emergency_psi=100.0,
        write_timeout=Seconds(60.0),
    )


def cli_env(box: Sandbox, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SPOTGUARD_CONFIG": str(state / "absent.toml"),
        "SPOTGUARD_AGENT_STATE_FILE": str(state / "state.json"),
        "SPOTGUARD_RECLAIM_CGROUP_ROOT": str(box.root),
        "SPOTGUARD_RECLAIM_STEP": "8M",
        "SPOTGUARD_RECLAIM_IDLE_PSI": "100",
        "SPOTGUARD_RECLAIM_EMERGENCY_PSI": "100",
    }


def spotguard_reclaim(
    box: Sandbox, state: Path, *argv: str, stderr: int | None = subprocess.PIPE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spotguard", "reclaim", *argv, "--timeout", "60s"],
        env=cli_env(box, state),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def engine_process(box: Sandbox, state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ENGINE, str(box.root), str(state), str(ORIGINAL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "lowered"
    return proc


class HoldingWriter(LibcWriter):
    """The agent's writer, stopping after its first lowered limit until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.lowered = threading.Event()
        self.go = threading.Event()

    def write(self, path: Path, data: str) -> None:
        super().write(path, data)
        lowering = path.name == "memory.limit_in_bytes" and data != str(ORIGINAL)
        if lowering and not self.lowered.is_set():
            self.lowered.set()
            assert self.go.wait(60)


def test_the_agent_and_spotguard_reclaim_take_turns_on_one_cgroup(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """8 rounds. Odd rounds: the agent is mid-step (limit lowered) when `spotguard reclaim
    --wait` starts, so the CLI's start must not restore the agent's live entry and must wait.
    Even rounds: the CLI goes first and the agent's deep reclaim waits for it."""
    state = tmp_path / "state"
    config = Config(
        agent=AgentConfig(root="/", state_file=str(state / "state.json")),
        reclaim=reclaim_config(sandbox),
    )
    writer = HoldingWriter()
    engine = StagedReclaimer(HostFS(), config.reclaim, SystemClock(), state, writer=writer)
    agent = agent_reclaimer(engine, config, SystemClock())
    absolute = str(sandbox.root / "work")
    waited = 0
    for round_ in range(8):
        sandbox.workload("work", file_mib=FILE_MIB)
        writer.lowered.clear()
        writer.go.clear()
        results: list[ReclaimResult] = []

        def run_agent(into: list[ReclaimResult] = results) -> None:
            request = ReclaimRequest(Intensity.DEEP, 60.0, cgroups=("work",))
            into.append(agent.reclaim(request, threading.Event()))

        agent_thread = threading.Thread(target=run_agent)
        name = absolute if round_ % 2 else "work"  # both forms of --cgroup, one cgroup
        if round_ % 2:
            agent_thread.start()
            assert writer.lowered.wait(30)
            assert limit(sandbox) < ORIGINAL
            cli = spotguard_reclaim(sandbox, state, "--cgroup", name, "--wait")
            assert cli.stderr is not None
            line = cli.stderr.readline()
            assert "waiting: another reclaim holds" in line
            assert f"pid {os.getpid()}, the agent (spotguard run)" in line
            waited += 1
            writer.go.set()
        else:
            writer.go.set()
            cli = spotguard_reclaim(sandbox, state, "--cgroup", name, "--wait")
            lock = HostLock(state)
            while cli.poll() is None and (lock.holder() is None):
                threading.Event().wait(0.01)
            agent_thread.start()
        out, err = cli.communicate(timeout=120)
        agent_thread.join(120)
        assert cli.returncode == 0, (round_, out, err)
        assert [r.stop_reason for r in results] == ["complete"], round_
        assert limit(sandbox) == ORIGINAL, round_
        assert LimitJournal(state).pending() == {}, round_
    assert waited == 4


def test_engines_without_the_lock_still_restore_the_original(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The journal alone: a second engine starting (and reclaiming) while the first holds the
    limit lowered takes the journalled original, not the live lowered one."""
    state = tmp_path / "state"
    for round_ in range(8):
        sandbox.workload("work", file_mib=FILE_MIB)
        first = engine_process(sandbox, state)
        lowered = limit(sandbox)
        assert lowered < ORIGINAL
        assert [e.original for e in LimitJournal(state).pending().values()] == [ORIGINAL]
        engine = StagedReclaimer(HostFS(), reclaim_config(sandbox), SystemClock(), state)
        assert limit(sandbox) == lowered, "a start must not restore a live owner's entry"
        request = ReclaimRequest(Intensity.DEEP, 60.0, cgroups=("work",))
        second = engine.reclaim(request, threading.Event())
        assert second.stop_reason == "complete", round_
        assert limit(sandbox) == ORIGINAL, round_  # not the first engine's lowered value
        assert first.stdin is not None
        first.stdin.write("go\n")
        first.stdin.flush()
        out, _ = first.communicate(timeout=60)
        assert out.split()[0] == "complete", out
        assert limit(sandbox) == ORIGINAL, round_
        assert LimitJournal(state).pending() == {}, round_


def test_a_reclaim_killed_mid_stage_is_undone_by_the_next_start(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    sandbox.workload("work", file_mib=FILE_MIB)
    crashed = engine_process(sandbox, state)
    assert limit(sandbox) < ORIGINAL
    owners = [o.pid for e in LimitJournal(state).pending().values() for o in e.owners]
    assert owners == [crashed.pid]
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.communicate()
    assert limit(sandbox) < ORIGINAL  # nobody put it back: the process died mid-stage
    cli = spotguard_reclaim(sandbox, state, "--cgroup", "work")
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    assert limit(sandbox) == ORIGINAL
    assert LimitJournal(state).pending() == {}


def test_an_emergency_stops_a_persons_reclaim_and_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    """The agent's emergency preempts `spotguard reclaim`, which puts its limit back."""
    state = tmp_path / "state"
    config = Config(
        agent=AgentConfig(root="/", state_file=str(state / "state.json")),
        reclaim=reclaim_config(sandbox),
    )
    engine = StagedReclaimer(HostFS(), config.reclaim, SystemClock(), state)
    agent = agent_reclaimer(engine, config, SystemClock())
    holder = HostLock(state)
    assert holder.try_acquire("reclaim", 0.0)  # a person's reclaim that holds the host...
    cli = spotguard_reclaim(sandbox, state, "--cgroup", "work")  # ...and one that finds it busy
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 3, err
    assert "busy" in out.splitlines()[-1]
    assert f"another reclaim holds {state / 'reclaim.lock'}: pid {os.getpid()}" in err
    assert "add --wait" in err
    holder.release()
    sandbox.workload("work", file_mib=FILE_MIB)
    person = spotguard_reclaim(sandbox, state, "--cgroup", "work", "--bytes", "max")
    lock = HostLock(state)
    while person.poll() is None and lock.holder() is None:
        threading.Event().wait(0.01)
    result = agent.reclaim(ReclaimRequest(Intensity.EMERGENCY, 30.0), threading.Event())
    _, err = person.communicate(timeout=60)
    assert result.stop_reason != "busy"
    assert person.returncode in (0, 4), err  # 4: it was told to stop; 0: it was done first
    assert limit(sandbox) == ORIGINAL
    assert LimitJournal(state).pending() == {}
