"""End to end: two real `spotguard run` processes, each with the metadata simulator as its
instance's metadata service and moto as EC2 and EventBridge, publish their decisions; the test
plays EC2's part on the bus (moto sends no events of its own); `fleet watch` reports both."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from spotguard.cli import main
from spotguard.fleet.events import Kind, parse
from spotguard.simhost import GIB, SimCgroup, SimHost
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from tests.fixtures_agent import REPO, agent_env
from tests.fixtures_aws import MotoServer
from tests.fixtures_fleet import FLEET, DrillQueue, ec2_event, make_drill_queue


def launch(moto: MotoServer) -> str:
    answer = moto.ec2().run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        HibernationOptions={"Configured": True},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "spotguard:fleet", "Value": FLEET}]}
        ],
    )
    return answer["Instances"][0]["InstanceId"]


def agent(tmp: Path, imds: MetadataSimulator, host: SimHost) -> subprocess.Popen[str]:
    env = agent_env(tmp, imds.url, host.root, FLEET_EVENT_BUS="default")
    return subprocess.Popen(
        [sys.executable, "-m", "spotguard", "run"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[SimHost]]:
    """One host whose image is small at once, one at 85 % use that reclaims first."""
    small = SimHost(tmp_path / "small", cgroups={"batch.slice": SimCgroup(GIB // 8, GIB // 8)})
    busy = SimHost(tmp_path / "busy")
    yield [small.start(), busy.start()]
    small.stop()
    busy.stop()


def stopped(moto: MotoServer, ids: list[str]) -> bool:
    reservations = moto.ec2().describe_instances(InstanceIds=ids)["Reservations"]
    return all(i["State"]["Name"] == "stopped" for r in reservations for i in r["Instances"])


def issued_by_both(drill: DrillQueue, ids: list[str], limit_s: float = 30.0) -> list[str]:
    """The agents' events from the tap, until both said they issued the hibernation."""
    kinds: dict[str, set[Kind]] = {i: set() for i in ids}
    end = time.monotonic() + limit_s
    while not all(Kind.HIBERNATION_ISSUED in k for k in kinds.values()):
        assert time.monotonic() < end, f"the agents reported only {kinds}"
        for body in drill.tapped(1, limit_s=end - time.monotonic()):
            event = parse(body)
            kinds[event.instance_id].add(event.kind)
    return [k.value for k in sorted(kinds[ids[1]])]


@pytest.mark.usefixtures("cli_logging")
def test_two_agents_publish_and_fleet_watch_reports_both(
    fleet_env: MotoServer,
    tmp_path: Path,
    hosts: list[SimHost],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [launch(fleet_env), launch(fleet_env)]
    drill = make_drill_queue(fleet_env, ids)
    with ExitStack() as stack:
        sims = [
            stack.enter_context(MetadataSimulator(instance=SimulatedInstance(instance_id=i)))
            for i in ids
        ]
        agents = [
            agent(tmp_path / f"agent{n}", sim, host)
            for n, (sim, host) in enumerate(zip(sims, hosts, strict=True))
        ]
        try:
            time.sleep(1.0)  # both agents armed
            warned = time.time()
            drill.put(
                [ec2_event(Kind.WARNING, i, warned, **{"instance-action": "stop"}) for i in ids]
            )
            for sim in sims:
                sim.set_notice("stop", in_seconds=120)
            end = time.monotonic() + 60
            while not stopped(fleet_env, ids):
                for proc in agents:
                    assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < end, "the agents did not hibernate within 60 s"
                time.sleep(0.2)
            busy_reported = issued_by_both(drill, ids)
            now = time.time()
            drill.put(
                [
                    ec2_event(Kind.STATE, i, now, state=s)
                    for i in ids
                    for s in ("stopping", "stopped")
                ]
            )
        finally:
            logs = []
            for proc in agents:
                proc.send_signal(signal.SIGTERM)
                logs.append(proc.communicate(timeout=20)[1])
    assert [proc.returncode for proc in agents] == [0, 0], logs
    assert all("fleet.publish_failed" not in log for log in logs), logs
    assert Kind.RECLAIM_DONE.value in busy_reported  # the busy host reclaimed first
    code = main(
        [
            *("fleet", "watch", "--queue", drill.url, "--until-settled", "--json"),
            *("--wait", "1", "--timeout", "60s"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["summary"]["warned"] == 2
    assert report["summary"]["hibernated"] == 2
    by_id = {i["instance_id"]: i for i in report["instances"]}
    for instance in ids:
        row = by_id[instance]
        assert row["outcome"] == "hibernated"
        assert row["hibernate"]["mode"] == "ec2"
        assert row["hibernate"]["seconds_left"] > 60
        assert row["hibernate"]["image_bytes"] > 0
        assert row["hibernate"]["predicted_seconds"] > 0
        assert row["stopped_at"] is not None
    assert by_id[ids[1]]["reclaims"], "the busy agent's reclaim must be in the report"
    assert by_id[ids[1]]["hibernate"]["image_bytes"] > by_id[ids[0]]["hibernate"]["image_bytes"]
