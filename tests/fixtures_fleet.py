"""A drill's plumbing on the moto server: the fleet's queue and the module's rules, built from
the very pattern file Terraform deploys (terraform/event-patterns.json), and the events AWS
and the agents would put on the bus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from mypy_boto3_events import EventBridgeClient
from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef
from mypy_boto3_fis import FISClient
from mypy_boto3_sqs import SQSClient

from spotguard.fleet.events import SOURCE, Kind
from tests.fixtures_aws import MotoServer

PATTERNS = Path(__file__).resolve().parent.parent / "terraform" / "event-patterns.json"
FLEET = "spotguard-ci"


def patterns() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = json.loads(PATTERNS.read_text())
    return loaded


def fleet_pattern(pattern: Mapping[str, Any], instance_ids: Sequence[str]) -> dict[str, Any]:
    """What main.tf makes of a pattern: narrowed to the fleet's instances."""
    detail = {**pattern.get("detail", {}), "instance-id": list(instance_ids)}
    return {**pattern, "detail": detail}


def client(moto: MotoServer, name: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        name,
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
    )


def ec2_event(
    detail_type: Kind, instance_id: str, at: float, **detail: Any
) -> PutEventsRequestEntryTypeDef:
    """An event as EC2 sends it: its time is EventBridge's (whole seconds)."""
    return {
        "Source": "aws.ec2",
        "DetailType": detail_type.value,
        "Time": datetime.fromtimestamp(at, UTC),
        "Detail": json.dumps({"instance-id": instance_id, **detail}),
    }


def agent_event(
    detail_type: Kind, instance_id: str, at: float, **detail: Any
) -> PutEventsRequestEntryTypeDef:
    """An event as FleetReporter sends it: its own sub-second time in the detail."""
    return {
        "Source": SOURCE,
        "DetailType": detail_type.value,
        "Detail": json.dumps({"instance-id": instance_id, "at": at, **detail}),
        "EventBusName": "default",
    }


@dataclass(frozen=True)
class DrillQueue:
    """The fleet's queue, and a tap queue every rule also delivers to, so a test can read the
    exact bodies SQS would deliver again (duplicates) without taking them from the watcher."""

    moto: MotoServer
    url: str
    tap_url: str
    instance_ids: tuple[str, ...]

    @property
    def events(self) -> EventBridgeClient:
        return client(self.moto, "events")  # type: ignore[no-any-return]

    @property
    def sqs(self) -> SQSClient:
        return client(self.moto, "sqs")  # type: ignore[no-any-return]

    @property
    def fis(self) -> FISClient:
        return client(self.moto, "fis")  # type: ignore[no-any-return]

    def put(self, entries: Sequence[PutEventsRequestEntryTypeDef]) -> list[str]:
        ids = []
        for start in range(0, len(entries), 10):
            answer = self.events.put_events(Entries=list(entries[start : start + 10]))
            assert answer["FailedEntryCount"] == 0, answer
            ids += [e["EventId"] for e in answer["Entries"]]
        return ids

    def tapped(self, count: int, limit_s: float = 20.0) -> list[str]:
        """At least `count` bodies from the tap queue (deleted there), in arrival order."""
        bodies: list[str] = []
        end = time.monotonic() + limit_s
        while len(bodies) < count:
            assert time.monotonic() < end, f"{len(bodies)} of {count} events reached the tap"
            got = self.sqs.receive_message(
                QueueUrl=self.tap_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in got.get("Messages", []):
                bodies.append(message["Body"])
                self.sqs.delete_message(
                    QueueUrl=self.tap_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return bodies

    def redeliver(self, bodies: Sequence[str]) -> None:
        """What SQS does after a lost delete: the same message body, once more."""
        for body in bodies:
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body)

    def create_template(self, selection: str = "ALL", duration: str = "PT2M") -> str:
        """The drill template as main.tf declares it."""
        answer = self.fis.create_experiment_template(
            clientToken=FLEET,
            description="spotguard ci drill",
            roleArn=f"arn:aws:iam::123456789012:role/{FLEET}-fis",
            stopConditions=[{"source": "none"}],
            targets={
                "fleet": {
                    "resourceType": "aws:ec2:spot-instance",
                    "resourceTags": {"spotguard:fleet": FLEET},
                    "filters": [{"path": "State.Name", "values": ["running"]}],
                    "selectionMode": selection,
                }
            },
            actions={
                "interrupt": {
                    "actionId": "aws:ec2:send-spot-instance-interruptions",
                    "parameters": {"durationBeforeInterruption": duration},
                    "targets": {"SpotInstances": "fleet"},
                }
            },
        )
        return answer["experimentTemplate"]["id"]


def make_drill_queue(moto: MotoServer, instance_ids: Sequence[str]) -> DrillQueue:
    """The queue and one rule per pattern, as the module creates them."""
    sqs: SQSClient = client(moto, "sqs")
    events: EventBridgeClient = client(moto, "events")
    url = sqs.create_queue(QueueName=f"{FLEET}-ec2-events")["QueueUrl"]
    tap_url = sqs.create_queue(QueueName=f"{FLEET}-tap")["QueueUrl"]
    arns = [
        sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for u in (url, tap_url)
    ]
    for name, pattern in patterns().items():
        rule = f"{FLEET}-{name}"
        events.put_rule(Name=rule, EventPattern=json.dumps(fleet_pattern(pattern, instance_ids)))
        events.put_targets(
            Rule=rule, Targets=[{"Id": f"q{n}", "Arn": arn} for n, arn in enumerate(arns)]
        )
    return DrillQueue(moto, url, tap_url, tuple(instance_ids))


@pytest.fixture
def fleet_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Every AWS client of this process and its children goes to moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    return moto_server


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`main()` configures structlog for the process (level, and the captured stderr of the
    test): put the defaults back, or later tests log into a closed stream at level error."""
    yield
    structlog.reset_defaults()
