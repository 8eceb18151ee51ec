"""The agent's decision sites publish through `Parts.fleet`: the graceful path and a resume,
in-process against the metadata simulator and moto (the e2e test covers notice, reclaim and
hibernation with real processes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from spotguard.agent import Agent
from spotguard.assemble import build_agent
from spotguard.clock import FakeClock
from spotguard.config import from_mapping
from spotguard.fleet.events import Kind, parse
from spotguard.hostfs import HostFS
from spotguard.planner import Phase
from spotguard.simhost import GIB, SimCgroup, SimHost
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from tests.fixtures_aws import MotoServer
from tests.fixtures_fleet import DrillQueue, make_drill_queue


def fleet_agent(tmp_path: Path, imds: MetadataSimulator, clock: FakeClock) -> Agent:
    config = from_mapping(
        {
            "imds": {"url": imds.url, "connect_timeout": 0.3, "read_timeout": 0.5, "attempts": 1},
            "agent": {
                "state_file": str(tmp_path / "state.json"),
                "hook_dir": str(tmp_path / "hooks"),
                "poll_interval": 0.2,
            },
            "idle": {"duration": "1h"},
            "reclaim": {"backend": "v2", "background": ["batch.slice"]},
            "hibernate": {"mode": "ec2", "region": "us-east-1"},
            "fleet": {"event_bus": "default"},
        },
        env={},
    )
    host = SimHost(tmp_path / "host", cgroups={"batch.slice": SimCgroup(GIB // 8, GIB // 8)})
    return build_agent(config, clock, fs=HostFS(host.root), kernel=host)


def until(condition: Callable[[], bool], agent: Agent) -> None:
    end = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < end, f"gave up waiting; phase {agent.state.phase}"
        agent.tick()
        time.sleep(0.05)


def published(drill: DrillQueue, last: Kind) -> dict[Kind, dict[str, object]]:
    """What the agent published, up to the `last` kind of event (in arrival order)."""
    events: dict[Kind, dict[str, object]] = {}
    while last not in events:
        for body in drill.tapped(1):  # at least one, and all that came with it
            event = parse(body)
            events[event.kind] = dict(event.detail)
    return events


def launch(moto: MotoServer) -> str:
    answer = moto.ec2().run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, HibernationOptions={"Configured": True}
    )
    return answer["Instances"][0]["InstanceId"]


def test_graceful_path_is_published(fleet_env: MotoServer, tmp_path: Path) -> None:
    instance = launch(fleet_env)
    drill = make_drill_queue(fleet_env, [instance])
    clock = FakeClock(wall=time.time(), monotonic=time.monotonic())
    simulated = SimulatedInstance(instance_id=instance)
    with MetadataSimulator(instance=simulated, hibernation_configured=False, clock=clock) as imds:
        agent = fleet_agent(tmp_path, imds, clock)
        until(lambda: agent.facts is not None, agent)  # as at any start: facts, then a notice
        imds.set_notice("terminate", in_seconds=120)
        until(lambda: agent.state.phase is Phase.GRACEFUL, agent)
        agent.shutdown()
    events = published(drill, Kind.GRACEFUL)
    assert set(events) == {Kind.NOTICE_SEEN, Kind.GRACEFUL}
    assert "not configured" in str(events[Kind.GRACEFUL]["reason"])
    assert events[Kind.NOTICE_SEEN]["action"] == "terminate"


def test_hibernation_and_resume_are_published(fleet_env: MotoServer, tmp_path: Path) -> None:
    instance = launch(fleet_env)
    drill = make_drill_queue(fleet_env, [instance])
    clock = FakeClock(wall=time.time(), monotonic=time.monotonic())
    with MetadataSimulator(instance=SimulatedInstance(instance_id=instance), clock=clock) as imds:
        agent = fleet_agent(tmp_path, imds, clock)
        until(lambda: agent.facts is not None, agent)  # as at any start: facts, then a notice
        imds.set_notice("stop", in_seconds=120)
        until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
        imds.clear_notice()
        clock.hibernate(3600)
        agent.tick()
        assert agent.state.phase is Phase.ARMED
        agent.shutdown()
    events = published(drill, Kind.RESUMED)
    assert {Kind.NOTICE_SEEN, Kind.HIBERNATION_ISSUED} <= set(events)
    assert events[Kind.HIBERNATION_ISSUED]["why_now"] == "image-small"
    assert float(str(events[Kind.RESUMED]["slept_seconds"])) >= 3600
