"""`spotguard check` and `spotguard hibernate` verdicts: against the simulator and moto's recorder.

The EC2 check must never send a DryRun about no instance, and a metadata service that does not
serve hibernation/configured gets the agent's own words and policy, not a FAIL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spotguard.cli import main
from spotguard.hostlock import HostLock
from spotguard.monitors import HIBERNATION, HIBERNATION_UNKNOWN
from spotguard.reclaim.journal import JOURNAL_NAME
from spotguard.simhost import SimCgroup, SimHost
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from tests.fixtures_aws import MotoServer
from tests.test_owner import dead_owner
from tests.test_reclaim_journal import leave
from tests.test_trigger import launch, recorded_stops


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A simulated host with swap and resume= set, EC2 mode; returns the host root."""
    host = SimHost(tmp_path / "host", cgroups={"batch.slice": SimCgroup(64 << 20, 64 << 20)})
    (host.root / "proc/cmdline").write_text("root=/dev/vda resume=/dev/vdb\n")
    for name, value in {
        "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml"),
        "SPOTGUARD_ROOT": str(host.root),
        "SPOTGUARD_AGENT_STATE_FILE": str(tmp_path / "state" / "state.json"),
        "SPOTGUARD_AGENT_HOOK_DIR": str(tmp_path / "hooks"),
        "SPOTGUARD_HIBERNATE_MODE": "ec2",
        "SPOTGUARD_IMDS_CONNECT_TIMEOUT": "0.3",
        "SPOTGUARD_IMDS_READ_TIMEOUT": "0.5",
        "SPOTGUARD_IMDS_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return host.root


def check(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, object]]]:
    code = main(["check", "--json"])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)}


def test_metadata_service_down_skips_the_dry_run(
    env: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPOTGUARD_IMDS_URL", "http://127.0.0.1:9")  # nothing listens there
    moto_server.start_recording()
    code, checks = check(capsys)
    assert code == 1
    assert checks["metadata service"]["verdict"] == "fail"
    trigger = checks["hibernate (ec2)"]
    assert trigger["verdict"] == "skip"
    assert trigger["ok"] is False
    assert trigger["detail"] == (
        "no StopInstances DryRun: instance id unknown (the metadata service is down)"
    )
    assert recorded_stops(moto_server) == []
    assert main(["check"]) == 1
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("hibernate"))
    assert row.split()[2:5] == ["SKIP", "no", "StopInstances"]


def test_hibernation_configured_not_served_is_a_warning_in_the_agents_words(
    env: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instance_id = launch(moto_server.ec2(), HibernationOptions={"Configured": True})
    with MetadataSimulator(instance=SimulatedInstance(instance_id=instance_id)) as imds:
        imds.set_fault("not_found", path=HIBERNATION)  # as AWS's mock: a 404 page
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        moto_server.start_recording()
        code, checks = check(capsys)
        assert imds.count("GET", HIBERNATION, 404) >= 1
    configured = checks["hibernation configured"]
    assert configured["verdict"] == "warn"
    assert configured["detail"] == f"hibernation/configured {HIBERNATION_UNKNOWN}"
    assert "take the graceful path if EC2 refuses" in str(configured["detail"])
    assert checks["hibernate (ec2)"]["verdict"] == "ok"
    assert code == 0, checks
    stops = recorded_stops(moto_server)
    assert [(s["InstanceId.1"], s["DryRun"]) for s in stops] == [([instance_id], ["true"])]


def test_hibernation_configured_false_fails(
    env: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instance_id = launch(moto_server.ec2(), HibernationOptions={"Configured": True})
    with MetadataSimulator(
        instance=SimulatedInstance(instance_id=instance_id), hibernation_configured=False
    ) as imds:
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        code, checks = check(capsys)
    assert code == 1
    assert checks["hibernation configured"]["verdict"] == "fail"
    assert "= false" in str(checks["hibernation configured"]["detail"])


def test_hibernate_refuses_without_an_instance_id(
    env: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPOTGUARD_IMDS_URL", "http://127.0.0.1:9")
    moto_server.start_recording()
    assert main(["hibernate", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "refusing: EC2 mode needs the instance id" in err
    assert "127.0.0.1:9" in err
    assert recorded_stops(moto_server) == []


def test_check_names_what_a_dead_reclaim_left_lowered(
    env: Path,
    tmp_path: Path,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instance_id = launch(moto_server.ec2(), HibernationOptions={"Configured": True})
    with MetadataSimulator(instance=SimulatedInstance(instance_id=instance_id)) as imds:
        monkeypatch.setenv("SPOTGUARD_IMDS_URL", imds.url)
        _, checks = check(capsys)
        assert checks["nothing left lowered"]["verdict"] == "ok"
        lock = HostLock(tmp_path / "state")
        assert lock.try_acquire("reclaim", 0.0)
        _, checks = check(capsys)
        assert f"a reclaim is running (pid {os.getpid()}" in str(
            checks["nothing left lowered"]["detail"]
        )
        lock.release()
        journal = tmp_path / "state" / JOURNAL_NAME
        leave(journal, {"/sys/fs/cgroup/memory/batch.slice": (1 << 40, [dead_owner()])})
        code, checks = check(capsys)
    assert checks["nothing left lowered"]["verdict"] == "warn"
    assert str(checks["nothing left lowered"]["detail"]).startswith(
        "/sys/fs/cgroup/memory/batch.slice left lowered by a reclaim that died"
    )
    assert code == 0, checks
