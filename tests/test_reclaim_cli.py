"""`spotguard reclaim` and `spotguard estimate`, through their argparse wiring."""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from spotguard import cli_reclaim
from spotguard.config import AgentConfig, Config, ReclaimConfig
from spotguard.hostlock import HostLock
from spotguard.reclaim.api import StageResult
from tests.test_estimator import MEMINFO
from tests.test_reclaim_support import MIB, FakeHost, Sandbox, psi, sandbox_or_skip


def call(config: Config, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_reclaim.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.config_obj = config
    with structlog.testing.capture_logs():  # the CLI logs to stderr; keep stdout for its output
        return int(args.func(args))


def on(root: Path, **reclaim: object) -> Config:
    agent = AgentConfig(root=str(root), state_file=str(root / "state" / "state.json"))
    return Config(agent=agent, reclaim=replace(ReclaimConfig(), **reclaim))  # type: ignore[arg-type]


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    host = FakeHost(tmp_path)
    host.add("batch.slice", file=64 * MIB)
    host.put("/proc/meminfo", MEMINFO)
    return host


def test_estimate_table(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(on(host.root), "estimate") == 0
    out = capsys.readouterr().out
    assert "expected image" in out
    assert "fits                 yes (margin 1.1)" in out
    assert "predicted hibernate" in out


def test_estimate_json(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(on(host.root), "estimate", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["saveable_bytes"] == (8388608 - 1048576) * 1024
    assert data["fits"] is True
    assert data["predicted_hibernate_s"] == pytest.approx(10.0 + data["predicted_write_s"])


def test_estimate_on_a_broken_meminfo(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    host.put("/proc/meminfo", "MemTotal: many\n")
    assert call(on(host.root), "estimate") == 1
    assert "cannot estimate the image: /proc/meminfo line 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bytes", "lots"], "not a size"),
        (["--timeout", "soon"], "not a duration"),
        (["--cgroup", "../etc"], "must not contain '..'"),
        (["--cgroup", "nope.slice"], "no cgroup 'nope.slice'"),
    ],
)
def test_reclaim_refuses_bad_arguments(
    host: FakeHost, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert call(on(host.root), "reclaim", *argv) == 2
    assert message in capsys.readouterr().err


def test_reclaim_without_a_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(on(tmp_path), "reclaim") == 1
    assert "no reclaim backend" in capsys.readouterr().err


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    line = cli_reclaim.ProgressLine(out)
    line(StageResult("a", "v1", MIB, steps=1))
    line(StageResult("a", "v1", 2 * MIB, steps=2))
    line.close()
    assert out.getvalue().count("\r\x1b[K") == 2
    assert out.getvalue().endswith("2 steps, 0.00 s, running\n")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandbox_or_skip(tmp_path) as box:
        yield box


@pytest.mark.cgroup
def test_reclaim_a_real_cgroup_as_json(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.workload("bg", file_mib=96)
    sandbox.workload("other", file_mib=32)
    config = on(Path("/"), cgroup_root=str(sandbox.root), idle_psi=100.0)
    config = replace(config, agent=replace(config.agent, state_file=str(tmp_path / "s.json")))
    assert call(config, "reclaim", "--cgroup", "bg", "--bytes", "48M", "--json") == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [s["cgroup"] for s in data["stages"]] == ["bg"]
    assert data["stop_reason"] == "target"
    assert data["reclaimed_bytes"] >= 48 * MIB
    assert "reclaim bg:" in captured.err  # plain progress lines: stderr is not a terminal
    # the absolute form names the same cgroup (it used to reach the planner unresolved: 0 B)
    absolute = str(sandbox.root / "other")
    assert call(config, "reclaim", "--cgroup", absolute, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["cgroup"] for s in data["stages"]] == ["other"]
    assert data["reclaimed_bytes"] > 16 * MIB
    assert data["stop_reason"] == "complete"
    # anything outside the configured root is refused, the root's own parent included
    for outside in (str(sandbox.root.parent), "/etc", str(sandbox.root)):
        assert call(config, "reclaim", "--cgroup", outside) == 2
        err = capsys.readouterr().err
        assert "is not under" in err or "the memory root itself" in err


def prefixed_tree(root: Path, box: Sandbox, io_some: float) -> Config:
    """A root prefix whose cgroups are the real v1 hierarchy but whose PSI we write: the
    host's own PSI on a shared machine is whatever the neighbours make it."""
    (root / "proc" / "pressure").mkdir(parents=True)
    for name in ("meminfo", "vmstat"):
        (root / "proc" / name).symlink_to(f"/proc/{name}")
    (root / "proc" / "pressure" / "memory").write_text(psi(0.0))
    (root / "proc" / "pressure" / "io").write_text(psi(io_some))
    (root / "sys" / "fs" / "cgroup").mkdir(parents=True)
    (root / "sys" / "fs" / "cgroup" / "memory").symlink_to("/sys/fs/cgroup/memory")
    return on(root, cgroup_root=f"/sys/fs/cgroup/memory/{box.root.name}")


@pytest.mark.cgroup
def test_pressure_says_which_signal_its_value_and_the_threshold(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.workload("bg", file_mib=96)
    root = tmp_path / "root"
    config = prefixed_tree(root, sandbox, io_some=4.2)
    before = sandbox.usage("bg")
    assert call(config, "reclaim", "--cgroup", "bg") == cli_reclaim.EXIT_STOPPED
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (
        "spotguard: stopped by pressure: host io PSI some avg10 4.20% > 0.1% "
        "(reclaim.idle_psi); add --ignore-pressure to reclaim anyway"
    )
    assert "pressure)" in captured.out
    assert sandbox.usage("bg") > before - 8 * MIB  # nothing was taken
    # a person who asks for it gets it; the host path and the prefixed path are both `bg`
    for name in (f"{config.reclaim.cgroup_root}/bg", f"{root}{config.reclaim.cgroup_root}/bg"):
        sandbox.workload("bg", file_mib=32)
        argv = ("reclaim", "--cgroup", name, "--ignore-pressure", "--json")
        assert call(config, *argv) == cli_reclaim.EXIT_DONE
        data = json.loads(capsys.readouterr().out)
        assert [s["cgroup"] for s in data["stages"]] == ["bg"]
        assert data["reclaimed_bytes"] > 24 * MIB
    assert int((sandbox.root / "bg" / "memory.limit_in_bytes").read_text()) > 1 << 60


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("batch.slice", True),
        ("/sys/fs/cgroup/batch.slice", True),
        ("{root}/sys/fs/cgroup/batch.slice", True),  # the path inside the root prefix
        ("/sys/fs/cgroup", False),
        ("/sys/fs/cgroupX/batch.slice", False),
        ("{root}/etc", False),
    ],
)
def test_cgroup_forms_on_a_prefixed_tree(
    host: FakeHost, capsys: pytest.CaptureFixture[str], name: str, ok: bool
) -> None:
    argv = ("reclaim", "--cgroup", name.format(root=host.root), "--json")
    assert call(on(host.root), *argv) == (cli_reclaim.EXIT_DONE if ok else cli_reclaim.EXIT_USAGE)
    captured = capsys.readouterr()
    if ok:
        assert [s["cgroup"] for s in json.loads(captured.out)["stages"]] == ["batch.slice"]
    else:
        assert "is not under" in captured.err or "the memory root itself" in captured.err


def test_budget_no_targets_and_busy_say_why_and_exit_non_zero(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call(on(host.root), "reclaim", "--timeout", "0s") == cli_reclaim.EXIT_STOPPED
    assert "stopped by the time budget: 0.0 s of --timeout 0 s spent" in capsys.readouterr().err
    config = on(host.root, protected=("batch.slice",))
    assert call(config, "reclaim") == cli_reclaim.EXIT_STOPPED
    assert (
        "nothing to reclaim: no cgroup under /sys/fs/cgroup outside reclaim.protected "
        "(batch.slice)" in capsys.readouterr().err
    )
    assert call(config, "reclaim", "--cgroup", "batch.slice") == cli_reclaim.EXIT_STOPPED
    assert (
        "nothing to reclaim: every cgroup asked for is protected (reclaim.protected: batch.slice)"
        in capsys.readouterr().err
    )
    lock = HostLock(host.root / "state")
    assert lock.try_acquire("agent", time.time())
    assert call(on(host.root), "reclaim") == cli_reclaim.EXIT_BUSY
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}, the agent (spotguard run)" in err
    assert "try again later, or add --wait" in err
    assert call(on(host.root), "reclaim", "--wait", "--timeout", "0.3s") == cli_reclaim.EXIT_BUSY
    err = capsys.readouterr().err
    assert "still held after 0." in err or "still held after 1." in err
    assert "s of waiting (--timeout 0.3 s, or a signal)" in err
    threading.Timer(0.3, lock.release).start()
    assert call(on(host.root), "reclaim", "--wait") == cli_reclaim.EXIT_DONE
    assert "spotguard: waiting: another reclaim holds" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        call(on(Path("/nonexistent")), "reclaim", "--help")
    out = capsys.readouterr().out
    assert "exit status:" in out
    assert "3  another reclaim holds the host" in out
    assert "--ignore-pressure" in out
