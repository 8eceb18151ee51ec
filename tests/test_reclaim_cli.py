"""`spotguard reclaim` and `spotguard estimate`, through their argparse wiring."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from spotguard import cli_reclaim
from spotguard.config import AgentConfig, Config, ReclaimConfig
from spotguard.reclaim.api import StageResult
from tests.test_estimator import MEMINFO
from tests.test_reclaim_support import MIB, FakeHost, Sandbox, sandbox_or_skip


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
    assert call(config, "reclaim", "--cgroup", str(sandbox.root / "other")) == 0
    assert "total" in capsys.readouterr().out
