"""`spotguard status` and the state file's format (issue 10, "status" rows).

Liveness is checked on root-prefixed /proc trees we plant (a dead pid, a reused pid) and on the
real /proc (this test process is a live writer); malformed states come from hypothesis.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotguard import __version__
from spotguard.cli import main
from spotguard.config import Config, from_mapping
from spotguard.hostfs import HostFS
from spotguard.process import start_ticks
from spotguard.state import StateFile
from spotguard.status import (
    EXIT_BAD_STATE,
    EXIT_NOT_RUNNING,
    EXIT_RUNNING,
    EXIT_UNHEALTHY,
    show,
)

NOTICE = {
    "kind": "spot-interruption",
    "id": "notice-1",
    "action": "stop",
    "deadline": "2026-12-01T10:00:00Z",
    "description": "",
}
SNAPSHOT: dict[str, Any] = {
    "phase": "armed",
    "reason": "resumed",
    "healthy": True,
    "health_problem": "",
    "idle_since_s": 12.5,
    "reclaim_running": None,
    "facts": {
        "instance_id": "i-1",
        "region": "us-east-1",
        "life_cycle": "spot",
        "hibernation_configured": True,
    },
    "events": [NOTICE],
    "estimate": {
        "expected_bytes": 3 << 30,
        "floor_bytes": 1 << 29,
        "swap_free_bytes": 8 << 30,
        "predicted_write_s": 30.7,
    },
    "last_reclaim": {
        "reclaimed_bytes": 1 << 30,
        "duration_s": 2.5,
        "intensity": "deep",
        "stop_reason": "target",
    },
    "hibernate_mode": "ec2",
}


def config_for(tmp_path: Path, root: Path | None = None) -> Config:
    agent = {"state_file": str(tmp_path / "state.json"), "root": str(root or "/")}
    return from_mapping({"agent": agent}, env={})


def run_status(
    config: Config, *, as_json: bool = False, now: float | None = None
) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = show(config, as_json=as_json, out=out, err=err, now=lambda: now or time.time())
    return code, out.getvalue() + err.getvalue()


def plant_process(root: Path, pid: int, started: int) -> None:
    """A /proc/<pid>/stat as the kernel writes it (a comm with a space and a parenthesis)."""
    fields = ["S", "1", *["0"] * 17, str(started), *["0"] * 10]
    stat = root / f"proc/{pid}/stat"
    stat.parent.mkdir(parents=True, exist_ok=True)
    stat.write_text(f"{pid} (spot guard) {' '.join(fields)}\n")


def fake_proc(tmp_path: Path) -> Path:
    """A root whose /proc lists processes: pid 1 only."""
    root = tmp_path / "host"
    plant_process(root, 1, 5)
    return root


# -- the file format --------------------------------------------------------------------------


def test_the_state_says_who_wrote_it_and_when(tmp_path: Path) -> None:
    StateFile(tmp_path / "state.json", wall=lambda: 1_800_000_000.0).write(SNAPSHOT)
    written = json.loads((tmp_path / "state.json").read_text())
    assert written["writer"] == {
        "pid": os.getpid(),
        "process_start": start_ticks(HostFS(), os.getpid()),
        "version": __version__,
        "at": "2027-01-15T08:00:00Z",
        "at_s": 1_800_000_000.0,
    }
    assert {k: v for k, v in written.items() if k != "writer"} == SNAPSHOT


def test_an_unchanged_state_is_touched_not_rewritten(tmp_path: Path) -> None:
    """The mtime is the heartbeat; the content (and its write time) only changes with it."""
    now = [1_800_000_000.0]
    state = StateFile(tmp_path / "state.json", wall=lambda: now[0])
    state.write(SNAPSHOT)
    first = (tmp_path / "state.json").read_text()
    now[0] += 60
    state.write(SNAPSHOT)
    assert (tmp_path / "state.json").read_text() == first
    assert state.modified() == now[0]
    now[0] += 5
    state.write({**SNAPSHOT, "phase": "idle"})
    assert json.loads((tmp_path / "state.json").read_text())["writer"]["at_s"] == now[0]


# -- the table's rows: a dead agent, a handled notice -------------------------------------------


def test_a_live_agent_is_running(tmp_path: Path) -> None:
    """This test process wrote the state and is alive on the real /proc."""
    StateFile(tmp_path / "state.json").write(SNAPSHOT)
    code, out = run_status(config_for(tmp_path))
    assert code == EXIT_RUNNING, out
    assert f"running (pid {os.getpid()}, spotguard {__version__})" in out
    assert "heartbeat                0 s ago" in out
    assert "healthy                  yes" in out


def test_an_agent_that_died_long_ago_is_not_shown_as_current(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)  # pid 4242 is not there
    state = StateFile(tmp_path / "state.json", wall=lambda: time.time() - 3 * 86400)
    state.write(SNAPSHOT)
    text = (tmp_path / "state.json").read_text().replace(f'"pid": {os.getpid()}', '"pid": 4242')
    (tmp_path / "state.json").write_text(text)
    os.utime(tmp_path / "state.json", (time.time() - 3 * 86400,) * 2)
    code, out = run_status(config_for(tmp_path, root))
    assert code == EXIT_NOT_RUNNING
    assert "NOT RUNNING: process 4242 is gone (pid 4242" in out
    assert "heartbeat                3.0 d ago" in out
    assert "state written            3.0 d ago" in out
    assert "healthy                  unknown (the agent is not running; it last said yes)" in out
    assert "pending when the agent stopped" in out


def test_a_reused_pid_is_not_the_agent(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    StateFile(tmp_path / "state.json", proc=root_fs(root, os.getpid(), 100)).write(SNAPSHOT)
    plant_process(root, os.getpid(), 200)  # the same pid, started later: another process
    code, out = run_status(config_for(tmp_path, root))
    assert code == EXIT_NOT_RUNNING
    assert f"pid {os.getpid()} is now another process" in out
    plant_process(root, os.getpid(), 100)
    assert run_status(config_for(tmp_path, root))[0] == EXIT_RUNNING


def root_fs(root: Path, pid: int, started: int) -> HostFS:
    plant_process(root, pid, started)
    return HostFS(root)


def test_without_a_process_table_the_heartbeat_decides(tmp_path: Path) -> None:
    """A fake root (simulate, tests) has no /proc/1: a fresh heartbeat is a running agent."""
    StateFile(tmp_path / "state.json").write(SNAPSHOT)
    config = config_for(tmp_path, tmp_path / "empty-root")
    assert run_status(config)[0] == EXIT_RUNNING
    code, out = run_status(config, now=time.time() + 600)
    assert code == EXIT_NOT_RUNNING
    assert "no heartbeat for 10.0 min (stale after 30 s)" in out


def test_a_live_but_silent_agent_is_stuck(tmp_path: Path) -> None:
    StateFile(tmp_path / "state.json").write(SNAPSHOT)
    code, out = run_status(config_for(tmp_path), now=time.time() + 600)
    assert code == EXIT_UNHEALTHY
    assert "but stuck: no heartbeat for 10.0 min" in out


def test_an_unhealthy_agent_says_why(tmp_path: Path) -> None:
    StateFile(tmp_path / "state.json").write(
        {**SNAPSHOT, "healthy": False, "health_problem": "metadata service failed 5 polls"}
    )
    code, out = run_status(config_for(tmp_path))
    assert code == EXIT_UNHEALTHY
    assert "NO: metadata service failed 5 polls" in out


def test_handled_notices_are_marked(tmp_path: Path) -> None:
    """After a resume the notice that was handled is not pending."""
    second = {**NOTICE, "id": "notice-2", "kind": "rebalance-recommendation"}
    third = {**NOTICE, "id": "notice-3", "kind": "scheduled-event"}
    StateFile(tmp_path / "state.json").write(
        {
            **SNAPSHOT,
            "events": [NOTICE, second, third],
            "handled_notices": ["notice-2"],
            "issued_for": "notice-1",
        }
    )
    code, out = run_status(config_for(tmp_path))
    assert code == EXIT_RUNNING
    assert "stop by 2026-12-01T10:00:00Z, handled: hibernation issued for it" in out
    assert "event rebalance-recommendation  stop by 2026-12-01T10:00:00Z, handled\n" in out
    assert "event scheduled-event           stop by 2026-12-01T10:00:00Z, pending\n" in out


def test_json_adds_the_verdict_to_the_state(tmp_path: Path) -> None:
    StateFile(tmp_path / "state.json").write(SNAPSHOT)
    code, out = run_status(config_for(tmp_path), as_json=True)
    shown = json.loads(out)
    assert code == EXIT_RUNNING
    assert shown["phase"] == "armed"
    assert shown["status"]["running"] is True
    assert shown["status"]["alive"] is True
    assert shown["status"]["pid"] == os.getpid()


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    help_text = capsys.readouterr().out
    for code in ("0  the agent is running", "3  the agent is not running", "4  the state file"):
        assert code in help_text


# -- malformed states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"phase": "armed", "healthy": NaN}', "NaN is not a number"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not JSON"),
        (b'{"healthy": true}', "phase: expected a string, got nothing"),
        (b'{"phase": 7, "healthy": true}', "phase: expected a string, got 7"),
        (b'{"phase": "armed", "healthy": "yes"}', "healthy: expected true or false"),
        (b'{"phase": "a", "healthy": true, "events": [3]}', r"events\[0\]: expected an object"),
        (
            b'{"phase": "a", "healthy": true, "estimate": {"expected_bytes": "3G"}}',
            "estimate.expected_bytes: expected an integer",
        ),
        (b'{"phase": "a", "healthy": true, "writer": {"pid": -1, "at_s": 1}}', "writer: expected"),
    ],
)
def test_a_malformed_state_is_one_clear_sentence(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "state.json").write_bytes(content)
    code, out = run_status(config_for(tmp_path))
    assert code == EXIT_BAD_STATE
    assert out.startswith(f"spotguard: {tmp_path / 'state.json'} is not a spotguard state: ")
    assert re.search(message, out), out


def test_a_directory_as_the_state_is_a_clear_sentence(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    assert run_status(config_for(tmp_path)) == (
        EXIT_BAD_STATE,
        f"spotguard: {tmp_path / 'state.json'} is not a spotguard state: "
        "cannot read it: a directory where a file should be\n",
    )


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=1 << 63, max_value=10**400)  # JSON has them; floats of them overflow
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    _nest,
    max_leaves=8,
)
# The agent's own keys, each given a value of any type: the wrong-type cases that matter.
KEYS = [*SNAPSHOT, "writer", "handled_notices", "issued_for"]
NESTED = ["facts", "estimate", "last_reclaim", "writer"]


@st.composite
def wrong_states(draw: st.DrawFn) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(json.dumps(SNAPSHOT))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        state[key] = draw(JSON)
    for key in draw(st.lists(st.sampled_from(NESTED), max_size=2)):
        found = state.get(key)
        inner: dict[str, Any] = found if isinstance(found, dict) else {}
        fields = ["expected_bytes", "floor_bytes", "pid", "at_s", "duration_s", "instance_id"]
        inner[draw(st.sampled_from(fields))] = draw(JSON)
        state[key] = inner
    if draw(st.booleans()):
        state["events"] = draw(st.lists(st.dictionaries(st.sampled_from(list(NOTICE)), JSON)))
    return state


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("status")


@given(wrong_states(), st.booleans())
def test_status_of_any_wrongly_typed_state_is_never_a_traceback(
    scratch: Path, state: dict[str, Any], as_json: bool
) -> None:
    (scratch / "state.json").write_text(json.dumps(state))
    code, out = run_status(config_for(scratch), as_json=as_json)
    assert code in (EXIT_RUNNING, EXIT_UNHEALTHY, EXIT_NOT_RUNNING, EXIT_BAD_STATE)
    assert out.strip()


@given(JSON | st.binary(max_size=60))
def test_status_of_any_json_or_bytes_is_never_a_traceback(scratch: Path, content: Any) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (scratch / "state.json").write_bytes(data)
    code, out = run_status(config_for(scratch))
    assert code in (EXIT_RUNNING, EXIT_UNHEALTHY, EXIT_NOT_RUNNING, EXIT_BAD_STATE)
    assert out.strip()
