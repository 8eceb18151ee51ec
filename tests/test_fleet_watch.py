"""`spotguard fleet watch` and `fleet drill` against moto on 127.0.0.1: the module's rules from
the shared pattern file route EC2's and the agents' events to the queue; the watcher reads
them with SQS's duplicates and disorder and reports the drill."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotguard.cli import main
from spotguard.fleet.events import Kind
from tests.fixtures_aws import MotoServer
from tests.fixtures_fleet import FLEET, DrillQueue, agent_event, ec2_event, make_drill_queue

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20


def fleet_instances(moto: MotoServer, count: int) -> list[str]:
    answer = moto.ec2().run_instances(
        ImageId="ami-12c6146b",
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "spotguard:fleet", "Value": FLEET}]}
        ],
    )
    return [i["InstanceId"] for i in answer["Instances"]]


def first_wave(ids: list[str], t0: float) -> list:  # type: ignore[type-arg]
    """A hibernates in time, B takes the graceful path, C hibernates too late."""
    a, b, c = ids
    return [
        ec2_event(Kind.WARNING, a, t0, **{"instance-action": "stop"}),
        agent_event(
            Kind.NOTICE_SEEN,
            a,
            t0 + 0.4,
            kind="spot-interruption",
            action="stop",
            deadline=t0 + 120.0,
        ),
        agent_event(
            Kind.RECLAIM_DONE, a, t0 + 3.0, reclaimed_bytes=GIB, seconds=2.5, stop_reason="target"
        ),
        agent_event(
            Kind.HIBERNATION_ISSUED,
            a,
            t0 + 3.2,
            image_bytes=334 * MIB,
            predicted_seconds=13.3,
            seconds_left=116.4,
        ),
        ec2_event(Kind.STATE, a, t0 + 4, state="stopping"),
        ec2_event(Kind.WARNING, b, t0, **{"instance-action": "stop"}),
        agent_event(
            Kind.NOTICE_SEEN,
            b,
            t0 + 0.5,
            kind="spot-interruption",
            action="stop",
            deadline=t0 + 120,
        ),
        agent_event(Kind.GRACEFUL, b, t0 + 0.6, reason="swap too small for the image"),
        ec2_event(Kind.WARNING, c, t0 + 1, **{"instance-action": "terminate"}),
        agent_event(
            Kind.NOTICE_SEEN,
            c,
            t0 + 1.3,
            kind="spot-interruption",
            action="terminate",
            deadline=t0 + 121,
        ),
        agent_event(Kind.HIBERNATION_ISSUED, c, t0 + 100, image_bytes=2 * GIB, seconds_left=21.0),
        ec2_event(Kind.STATE, c, t0 + 118, state="stopping"),
    ]


def outsiders(ids: list[str], t0: float) -> list:  # type: ignore[type-arg]
    """What the rules must keep out of the queue."""
    return [
        ec2_event(Kind.WARNING, "i-0fffffffffffffff0", t0, **{"instance-action": "stop"}),
        ec2_event(Kind.STATE, ids[0], t0 + 5, state="terminated"),
        {
            "Source": "someone.else",
            "DetailType": Kind.RESUMED.value,
            "Detail": json.dumps({"instance-id": ids[0]}),
        },
    ]


def second_wave(ids: list[str], t0: float) -> list:  # type: ignore[type-arg]
    a, b, c = ids
    return [
        ec2_event(Kind.STATE, a, t0 + 30, state="stopped"),
        ec2_event(Kind.STATE, b, t0 + 119, state="stopped"),
        ec2_event(Kind.STATE, c, t0 + 125, state="stopped"),  # 4 s after its deadline
    ]


def play(drill: DrillQueue, ids: list[str], t0: float, duplicates: int) -> int:
    """EC2 and the agents, as the queue sees them: the first wave in shuffled order, some of
    it delivered twice, then the stops. Returns how many messages the watcher will read."""
    wave = first_wave(ids, t0)
    random.Random(7).shuffle(wave)  # noqa: S311 - a fixed shuffle, not a secret
    drill.put(wave + outsiders(ids, t0))
    bodies = drill.tapped(len(wave))
    assert {json.loads(b)["detail"]["instance-id"] for b in bodies} == set(ids)
    drill.redeliver(random.Random(8).sample(bodies, duplicates))  # noqa: S311
    stops = second_wave(ids, t0)
    drill.put(stops[::-1])
    drill.tapped(len(stops))
    time.sleep(1.0)  # the outsiders have had every chance to arrive
    leaked = drill.sqs.receive_message(QueueUrl=drill.tap_url, WaitTimeSeconds=0)
    assert "Messages" not in leaked, leaked["Messages"]
    return len(wave) + duplicates + len(stops)


def test_drill_reports_hibernated_graceful_and_missed(
    fleet_env: MotoServer, tmp_path: Path
) -> None:
    ids = fleet_instances(fleet_env, 3)
    drill = make_drill_queue(fleet_env, ids)
    template = drill.create_template("ALL", "PT2M")
    results, timeline = tmp_path / "drill.json", tmp_path / "drill.png"
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spotguard",
            "fleet",
            "drill",
            "--template",
            template,
            "--queue",
            drill.url,
            "--json",
            "--wait",
            "1",
            "--timeout",
            "90s",
            "--results",
            str(results),
            "--timeline",
            str(timeline),
        ],
        env={**os.environ, "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml")},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 30
        while not drill.fis.list_experiments()["experiments"]:
            assert watcher.poll() is None, watcher.communicate()
            assert time.monotonic() < end, "the drill started no experiment"
            time.sleep(0.2)
        [experiment] = drill.fis.list_experiments()["experiments"]
        assert experiment["experimentTemplateId"] == template
        t0 = float(math.ceil(time.time()))
        read = play(drill, ids, t0, duplicates=4)
        out, errors = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 1, errors  # a miss and a graceful path: the drill failed
    report = json.loads(out)
    assert report == json.loads(results.read_text())
    assert report["summary"] == {
        "warned": 3,
        "hibernated": 1,
        "graceful": 1,
        "missed": 1,
        "pending": 0,
        "warning_to_stopped_p50_s": 119.0,
        "warning_to_stopped_p99_s": 124.0,
        "settled": True,
        "passed": False,
    }
    assert report["messages"] == {"events": read - 4, "duplicates": 4, "stale": 0}
    assert report["watch"]["received"] == read
    a, b, c = ids
    by_id = {i["instance_id"]: i for i in report["instances"]}
    assert [by_id[i]["outcome"] for i in ids] == ["hibernated", "graceful", "missed"]
    assert by_id[a]["hibernate"]["image_bytes"] == 334 * MIB
    assert by_id[a]["reclaims"][0]["stop_reason"] == "target"
    assert by_id[a]["stopped_at"] is not None
    assert by_id[b]["graceful_reason"] == "swap too small for the image"
    assert by_id[c]["action"] == "terminate"
    assert timeline.read_bytes().startswith(b"\x89PNG")
    assert f"drill {experiment['id']} started from {template}" in errors


@pytest.mark.usefixtures("cli_logging")
def test_watch_table_summary_and_exit_code_when_all_hibernate(
    fleet_env: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = fleet_instances(fleet_env, 2)
    drill = make_drill_queue(fleet_env, ids)
    t0 = float(math.floor(time.time())) - 300  # a drill that is over
    events = []
    for n, instance in enumerate(ids):
        events += [
            ec2_event(Kind.WARNING, instance, t0 + n, **{"instance-action": "stop"}),
            agent_event(
                Kind.HIBERNATION_ISSUED, instance, t0 + n + 2.5, image_bytes=GIB, seconds_left=117.5
            ),
            ec2_event(Kind.STATE, instance, t0 + n + 3, state="stopping"),
            ec2_event(Kind.STATE, instance, t0 + n + 20 + 10 * n, state="stopped"),
            ec2_event(Kind.STATE, instance, t0 + 200, state="pending"),
            ec2_event(Kind.STATE, instance, t0 + 230, state="running"),
        ]
    drill.put(events[::-1])
    drill.tapped(len(events))
    code = main(
        [
            *("fleet", "watch", "--queue", drill.url, "--until-settled", "--wait", "1"),
            *("--timeout", "60s", "--endpoint-url", fleet_env.url),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "instance",
        "warning",
        "at",
        "action",
        "deadline",
        "reclaim",
        "hibernate",
        "issued",
        "stopping",
        "stopped",
        "resumed",
        "outcome",
    ]
    first = lines[1].split()
    assert first[0] == ids[0]
    assert first[2:5] == ["stop", "+120.0s", "-"]
    assert first[5:8] == ["+2.5s", "1.0", "GiB"]
    assert first[-4:] == ["+3.0s", "+20.0s", "+230.0s", "hibernated"]
    assert lines[2].split()[0] == ids[1]
    assert lines[-1] == (
        "2 warned, 2 hibernated before their deadline, 0 graceful, 0 missed; "
        "warning->stopped p50 20.0 s, p99 30.0 s"
    )
    assert "Messages" not in drill.sqs.receive_message(QueueUrl=drill.url, WaitTimeSeconds=0)


@pytest.mark.usefixtures("cli_logging")
def test_watch_times_out_unsettled_with_a_pending_instance(
    fleet_env: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = fleet_instances(fleet_env, 1)
    drill = make_drill_queue(fleet_env, ids)
    now = time.time()
    drill.put([ec2_event(Kind.WARNING, ids[0], now, **{"instance-action": "stop"})])
    drill.tapped(1)
    code = main(
        [
            *("fleet", "watch", "--queue", drill.url, "--until-settled", "--json", "--wait", "1"),
            *("--timeout", "3s", "--endpoint-url", fleet_env.url),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 3
    assert report["summary"]["pending"] == 1
    assert report["watch"]["timed_out"] is True
    assert report["instances"][0]["outcome"] == "pending"


@pytest.mark.usefixtures("cli_logging")
def test_drill_refuses_a_template_without_the_spot_action(
    fleet_env: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    drill = make_drill_queue(fleet_env, fleet_instances(fleet_env, 1))
    template = drill.fis.create_experiment_template(
        clientToken="not-a-drill",
        description="not a spot drill",
        roleArn="arn:aws:iam::123456789012:role/x",
        stopConditions=[{"source": "none"}],
        actions={"wait": {"actionId": "aws:fis:wait", "parameters": {"duration": "PT1M"}}},
    )["experimentTemplate"]["id"]
    code = main(["fleet", "drill", "--template", template, "--queue", drill.url])
    assert code == 2
    assert "no aws:ec2:send-spot-instance-interruptions action" in capsys.readouterr().err
    assert drill.fis.list_experiments()["experiments"] == []
