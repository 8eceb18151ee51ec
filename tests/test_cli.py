"""The commands people type, run in-process against the simulator, moto and a simulated host."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from spotguard.cli import main
from spotguard.config import from_mapping
from spotguard.planner import Phase
from spotguard.simhost import SimCgroup, SimHost
from spotguard.simulate import run_simulation
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from spotguard.state import StateFile
from tests.fixtures_aws import MotoServer


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    return SimHost(tmp_path / "host", cgroups={"batch.slice": SimCgroup(64 << 20, 64 << 20)})


@pytest.fixture
def env(tmp_path: Path, host: SimHost, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every path the CLI reads at the test's own tree; return the state file."""
    state = tmp_path / "state.json"
    for name, value in {
        "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml"),
        "SPOTGUARD_ROOT": str(host.root),
        "SPOTGUARD_AGENT_STATE_FILE": str(state),
        "SPOTGUARD_AGENT_HOOK_DIR": str(tmp_path / "hooks"),
        "SPOTGUARD_RECLAIM_BACKEND": "v2",
        "SPOTGUARD_IMDS_CONNECT_TIMEOUT": "0.3",
        "SPOTGUARD_IMDS_READ_TIMEOUT": "0.5",
        "SPOTGUARD_IMDS_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return state


def test_check_passes_on_a_ready_instance(
    env: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ec2 = moto_server.ec2()
    launched = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, HibernationOptions={"Configured": True}
    )
    instance_id = launched["Instances"][0]["InstanceId"]
    with MetadataSimulator(instance=SimulatedInstance(instance_id=instance_id)) as imds:
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        code = main(["check", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert code == 0, checks
    assert instance_id in checks["metadata service"]["detail"]
    assert checks["hibernate (ec2)"]["detail"].startswith("DryRun")
    assert checks["resume= set"]["ok"]


def test_check_reports_every_problem(
    tmp_path: Path, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = SimHost(tmp_path / "bare", swap=0)
    (bare.root / "proc/cmdline").write_text("root=/dev/vda\n")
    monkeypatch.setenv("SPOTGUARD_ROOT", str(bare.root))
    with MetadataSimulator(hibernation_configured=False) as imds:
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        monkeypatch.setenv("SPOTGUARD_HIBERNATE_MODE", "none")
        code = main(["check"])
    out = capsys.readouterr().out
    assert code == 1
    failing = {line.split("  ")[0] for line in out.splitlines() if "FAIL" in line}
    assert {"swap holds the image", "resume= set"} <= failing
    grub = bare.root / "etc/default/grub.d"
    grub.mkdir(parents=True)
    (grub / "99-spotguard-resume.cfg").write_text('GRUB_CMDLINE_LINUX="resume=UUID=x"\n')
    with MetadataSimulator() as imds:
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        main(["check", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["resume= set"]["ok"]
    assert "next boot" in checks["resume= set"]["detail"]


def test_check_without_metadata_service(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPOTGUARD_IMDS_URL", "http://127.0.0.1:9")  # nothing listens there
    assert main(["check"]) == 1
    assert "metadata service" in capsys.readouterr().out


def test_status_before_and_after_the_agent_ran(
    env: Path, host: SimHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 3
    assert "no state" in capsys.readouterr().out
    StateFile(env).write(
        {
            "phase": "emergency",
            "reason": "spot notice: stop",
            "healthy": True,
            "health_problem": "",
            "idle_since_s": None,
            "reclaim_running": "emergency",
            "facts": {
                "instance_id": "i-1",
                "region": "us-east-1",
                "life_cycle": "spot",
                "hibernation_configured": True,
            },
            "events": [
                {
                    "kind": "spot-interruption",
                    "id": "x",
                    "action": "stop",
                    "deadline": "2026-12-01T10:00:00Z",
                    "description": "",
                }
            ],
            "estimate": {
                "expected_bytes": 3 << 30,
                "floor_bytes": 1 << 29,
                "swap_free_bytes": 8 << 30,
                "predicted_write_s": 30.7,
            },
            "last_reclaim": None,
            "hibernate_mode": "ec2",
        }
    )
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "emergency (spot notice: stop)" in table
    assert "3.0 GiB" in table
    assert "stop by 2026-12-01T10:00:00Z" in table


def test_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[reclaim]\nstep = "lots"\n')
    assert main(["--config", str(bad), "config", "show"]) == 2
    assert "reclaim.step" in capsys.readouterr().err
    bad.write_text("[reclaim]\nsteps = 1\n")
    assert main(["status", "--config", str(bad)]) == 2  # after the command reads as well
    assert "unknown key reclaim.steps" in capsys.readouterr().err


def test_config_show_prints_every_section(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"imds", "agent", "idle", "reclaim", "hibernate", "fleet"}
    assert shown["reclaim"]["backend"] == "v2"  # the environment override


def test_hibernate_refuses_without_yes_or_without_swap(
    tmp_path: Path, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # mode local with a harmless command: nothing here may hibernate this machine
    monkeypatch.setenv("SPOTGUARD_HIBERNATE_MODE", "local")
    monkeypatch.setenv("SPOTGUARD_HIBERNATE_LOCAL_COMMAND", "true")
    assert main(["hibernate"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["hibernate", "--yes"]) == 0
    assert "true accepted" in capsys.readouterr().out
    no_swap = SimHost(tmp_path / "no-swap", swap=0)
    monkeypatch.setenv("SPOTGUARD_ROOT", str(no_swap.root))
    assert main(["hibernate", "--yes"]) == 1
    assert "does not fit" in capsys.readouterr().err


def simulation(**overrides: object) -> argparse.Namespace:
    options: dict[str, object] = {
        "action": "stop",
        "idle_after": 0.5,
        "rebalance_after": 1.0,
        "no_rebalance": False,
        "notice_after": 2.5,
        "deadline": 120.0,
        "timeout": 20.0,
        "no_hibernation": False,
        "json": False,
    }
    return argparse.Namespace(**(options | overrides))


@pytest.mark.parametrize(
    ("overrides", "phase", "shows"),
    [
        ({}, Phase.HIBERNATING, "hibernate.issued"),
        ({"action": "hibernate", "no_rebalance": True}, Phase.EC2_HIBERNATING, "action=hibernate"),
        ({"no_hibernation": True}, Phase.GRACEFUL, "hibernate.unavailable"),
    ],
)
def test_simulate_timeline(overrides: dict[str, object], phase: Phase, shows: str) -> None:
    out = io.StringIO()
    assert run_simulation(simulation(**overrides), from_mapping({}, env={}), out) is phase
    timeline = out.getvalue()
    assert "notice.received" in timeline
    assert shows in timeline
    assert f"result: {phase.value}" in timeline


def test_simulate_json_is_the_agents_log() -> None:
    out = io.StringIO()
    run_simulation(simulation(json=True, no_rebalance=True), from_mapping({}, env={}), out)
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert "notice.received" in events
    assert "hibernate.issued" in events
