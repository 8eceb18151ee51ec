"""Check a test fleet against what EC2 holds, not against what Terraform planned.

    terraform output -json > outputs.json
    python check_fleet.py outputs.json --count 2 [--endpoint-url http://127.0.0.1:5000]

Prints one line per problem and exits 1 if there is any.

moto (5.2) launches an instance from a launch template without the template's
HibernationOptions, MetadataOptions, InstanceMarketOptions and IamInstanceProfile: it keeps
the image, type, security groups, user data, block devices and tags, and opens no spot
request. So against a local endpoint those four are checked on the template version the
instance records in its ``aws:ec2launchtemplate:version`` tag, and on real AWS on the
instances and their spot requests as well.

Drills (AWS FIS, EventBridge): moto keeps the experiment template whole (action, parameters,
target with its tags, filters and selection mode, stop conditions, role), the rules' event
patterns and targets, and the roles' policies, so all of those are checked as stored. It drops
what happens at run time: it resolves no tag target and sends no interruption, emits no
EC2 event of its own (no warning, no state change on StopInstances) and enforces no IAM
policy, so the `events:source` condition is only checked as written. Against moto a sample
event per rule is also put on the bus and must reach the queue (and one of an instance outside
the fleet must not): EventBridge routing is something moto does.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions

if TYPE_CHECKING:  # type stubs only: running the check needs nothing but boto3
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef, ResponseLaunchTemplateDataTypeDef
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_fis import FISClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sqs import SQSClient

MIB_PER_GIB = 1024
INTERRUPTION_BEHAVIORS = ("hibernate", "stop")
PATTERNS = Path(__file__).resolve().parents[2] / "event-patterns.json"
SPOT_ACTION = "aws:ec2:send-spot-instance-interruptions"


@dataclass(frozen=True)
class Fleet:
    """The fleet as `terraform output -json` of the example names it."""

    instance_ids: list[str]
    launch_template_id: str
    name: str = ""
    queue_url: str = ""
    role_arn: str = ""
    drill_template_id: str | None = None

    @classmethod
    def from_outputs(cls, path: Path) -> Fleet:
        outputs = json.loads(path.read_text())
        template = outputs.get("drill_template_id", {}).get("value")
        return cls(
            instance_ids=list(outputs["instance_ids"]["value"]),
            launch_template_id=str(outputs["launch_template_id"]["value"]),
            name=str(outputs.get("fleet_name", {}).get("value", "")),
            queue_url=str(outputs.get("queue_url", {}).get("value", "")),
            role_arn=str(outputs.get("role_arn", {}).get("value", "")),
            drill_template_id=None if template is None else str(template),
        )


def template_problems(data: ResponseLaunchTemplateDataTypeDef, memory_mib: int) -> list[str]:
    """What keeps instances launched from this template from hibernating."""
    problems = []
    if not data.get("HibernationOptions", {}).get("Configured"):
        problems.append("template: hibernation is not configured")
    metadata = data.get("MetadataOptions", {})
    if metadata.get("HttpTokens") != "required" or metadata.get("HttpEndpoint") != "enabled":
        problems.append(f"template: IMDSv2 is not required: {metadata}")
    market = data.get("InstanceMarketOptions", {})
    spot = market.get("SpotOptions", {})
    if (
        market.get("MarketType") != "spot"
        or spot.get("SpotInstanceType") != "persistent"
        or spot.get("InstanceInterruptionBehavior") not in INTERRUPTION_BEHAVIORS
    ):
        problems.append(f"template: not a persistent spot request that hibernates: {market}")
    if not data.get("IamInstanceProfile", {}).get("Arn"):
        problems.append("template: no instance profile")
    mappings = data.get("BlockDeviceMappings", [])
    ebs = mappings[0].get("Ebs", {}) if len(mappings) == 1 else {}
    if not ebs.get("Encrypted"):
        problems.append(f"template: the root volume is not encrypted: {mappings}")
    if ebs.get("VolumeSize", 0) * MIB_PER_GIB <= memory_mib:
        problems.append(
            f"template: a {ebs.get('VolumeSize')} GiB root cannot hold {memory_mib} MiB"
        )
    return problems


def instance_problems(
    ec2: EC2Client,
    instance: InstanceTypeDef,
    fleet: Fleet,
    template: ResponseLaunchTemplateDataTypeDef,
) -> list[str]:
    """What moto keeps too: state, template tag, and the template's root volume."""
    name = instance["InstanceId"]
    problems = []
    if instance["State"]["Name"] not in ("pending", "running"):
        problems.append(f"{name}: state {instance['State']['Name']}")
    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
    if tags.get("aws:ec2launchtemplate:id") != fleet.launch_template_id:
        problems.append(f"{name}: not launched from {fleet.launch_template_id}")
    root = template["BlockDeviceMappings"][0]
    volume_ids = [
        mapping["Ebs"]["VolumeId"]
        for mapping in instance.get("BlockDeviceMappings", [])
        if mapping["DeviceName"] == root["DeviceName"]
    ]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"] if volume_ids else []
    if [(v["Size"], v["Encrypted"]) for v in volumes] != [(root["Ebs"]["VolumeSize"], True)]:
        problems.append(f"{name}: {root['DeviceName']} is not the template's encrypted volume")
    return problems


def launched_settings_problems(ec2: EC2Client, instance: InstanceTypeDef) -> list[str]:
    """The settings moto drops, on the instance itself and its spot request (real AWS)."""
    name = instance["InstanceId"]
    problems = []
    if not instance.get("HibernationOptions", {}).get("Configured"):
        problems.append(f"{name}: hibernation is not configured")
    if instance.get("MetadataOptions", {}).get("HttpTokens") != "required":
        problems.append(f"{name}: IMDSv2 is not required")
    request_id = instance.get("SpotInstanceRequestId")
    if instance.get("InstanceLifecycle") != "spot" or request_id is None:
        return [*problems, f"{name}: not a spot instance"]
    request = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])
    spot = request["SpotInstanceRequests"][0]
    if spot.get("Type") != "persistent" or spot.get("InstanceInterruptionBehavior") not in (
        INTERRUPTION_BEHAVIORS
    ):
        problems.append(f"{name}: {request_id} is not persistent with hibernate/stop")
    return problems


def check(ec2: EC2Client, fleet: Fleet, count: int, *, local_endpoint: bool) -> list[str]:
    if len(fleet.instance_ids) != count:
        return [f"expected {count} instances, terraform reports {fleet.instance_ids}"]
    reservations = ec2.describe_instances(InstanceIds=fleet.instance_ids)["Reservations"]
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if sorted(i["InstanceId"] for i in instances) != sorted(fleet.instance_ids):
        return [f"EC2 knows {[i['InstanceId'] for i in instances]}, not {fleet.instance_ids}"]
    problems = []
    for version in sorted({_template_version(i) for i in instances}):
        template = ec2.describe_launch_template_versions(
            LaunchTemplateId=fleet.launch_template_id, Versions=[version]
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        if "InstanceType" not in template:
            problems.append(f"template version {version}: no instance type")
            continue
        types = ec2.describe_instance_types(InstanceTypes=[template["InstanceType"]])
        memory_mib = types["InstanceTypes"][0].get("MemoryInfo", {}).get("SizeInMiB", 0)
        problems += template_problems(template, memory_mib)
        for instance in (i for i in instances if _template_version(i) == version):
            problems += instance_problems(ec2, instance, fleet, template)
            if not local_endpoint:
                problems += launched_settings_problems(ec2, instance)
    return problems


def drill_problems(fis: FISClient, fleet: Fleet) -> list[str]:
    """The FIS template interrupts the fleet's tagged spot instances, and nothing else."""
    if fleet.drill_template_id is None:
        return []
    template = fis.get_experiment_template(id=fleet.drill_template_id)["experimentTemplate"]
    problems = []
    actions = list(template.get("actions", {}).values())
    if [a.get("actionId") for a in actions] != [SPOT_ACTION]:
        problems.append(f"drill: actions {actions}, not one {SPOT_ACTION}")
    elif "durationBeforeInterruption" not in actions[0].get("parameters", {}):
        problems.append("drill: no durationBeforeInterruption")
    for name, target in template.get("targets", {}).items():
        if (
            target.get("resourceType") != "aws:ec2:spot-instance"
            or target.get("resourceTags") != {"spotguard:fleet": fleet.name}
            or target.get("resourceArns")
        ):
            problems.append(f"drill: target {name} is not the fleet's spot instances by tag")
    if not template.get("roleArn", "").endswith(f"role/{fleet.name}-fis"):
        problems.append(f"drill: runs as {template.get('roleArn')}, not the fleet's FIS role")
    return problems


def rule_problems(events: EventBridgeClient, fleet: Fleet, queue_arn: str) -> list[str]:
    """Every rule of the pattern file, narrowed to the fleet, delivering to the queue."""
    expected = json.loads(PATTERNS.read_text())
    if fleet.drill_template_id is None:
        expected = {k: v for k, v in expected.items() if k in ("interruption", "rebalance")}
    problems = []
    for name, pattern in expected.items():
        rule = f"{fleet.name}-{name}"
        try:
            stored = json.loads(events.describe_rule(Name=rule)["EventPattern"])
        except botocore.exceptions.ClientError as exc:
            problems.append(f"rule {rule}: {exc}")
            continue
        want = {
            **pattern,
            "detail": {**pattern.get("detail", {}), "instance-id": fleet.instance_ids},
        }
        if _sorted_lists(stored) != _sorted_lists(want):
            problems.append(f"rule {rule}: pattern {stored}, expected {want}")
        targets = [t["Arn"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]]
        if targets != [queue_arn]:
            problems.append(f"rule {rule}: targets {targets}, not the queue")
    return problems


def routing_problems(events: EventBridgeClient, sqs: SQSClient, fleet: Fleet) -> list[str]:
    """Local endpoint only: one sample event per rule reaches the queue, a stranger's does not."""
    expected = json.loads(PATTERNS.read_text())
    if fleet.drill_template_id is None:
        expected = {k: v for k, v in expected.items() if k in ("interruption", "rebalance")}
    instance = fleet.instance_ids[0]
    entries = []
    for pattern in expected.values():
        states = pattern.get("detail", {}).get("state", [])
        detail = {"instance-id": instance, **({"state": states[0]} if states else {})}
        entries.append((pattern["source"][0], pattern["detail-type"][0], detail))
    stranger = ("aws.ec2", "EC2 Spot Instance Interruption Warning", {"instance-id": "i-0"})
    answer = events.put_events(
        Entries=[
            {"Source": s, "DetailType": t, "Detail": json.dumps(d)}
            for s, t, d in [*entries, stranger]
        ]
    )
    ids = [e.get("EventId") for e in answer["Entries"]]
    arrived: set[str] = set()
    for _ in range(5):
        got = sqs.receive_message(
            QueueUrl=fleet.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for message in got.get("Messages", []):
            arrived.add(json.loads(message["Body"])["id"])
            sqs.delete_message(QueueUrl=fleet.queue_url, ReceiptHandle=message["ReceiptHandle"])
        if set(ids[:-1]) <= arrived:
            break
    problems = [
        f"routing: a {t} of {instance} did not reach the queue"
        for (_, t, _), event_id in zip(entries, ids[:-1], strict=True)
        if event_id not in arrived
    ]
    if ids[-1] in arrived:
        problems.append("routing: a warning of an instance outside the fleet reached the queue")
    return problems


def agent_role_problems(iam: IAMClient, fleet: Fleet) -> list[str]:
    role = fleet.role_arn.rsplit("/", 1)[-1]
    document = iam.get_role_policy(RoleName=role, PolicyName="stop-only-itself")["PolicyDocument"]
    statements = document["Statement"] if isinstance(document, dict) else []
    actions = [s.get("Action") for s in statements]
    expected = ["ec2:StopInstances"] + (["events:PutEvents"] if fleet.drill_template_id else [])
    if actions != expected:
        return [f"agent role: allows {actions}, expected {expected}"]
    return []


def _sorted_lists(value: object) -> object:
    if isinstance(value, dict):
        return {k: _sorted_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted(str(v) for v in value)
    return value


def _template_version(instance: InstanceTypeDef) -> str:
    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
    return tags.get("aws:ec2launchtemplate:version", "$Default")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("outputs", type=Path, help="`terraform output -json` of the example")
    parser.add_argument("--count", type=int, required=True, help="instances the fleet must have")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--endpoint-url", help="a local EC2 endpoint such as moto (default: AWS)")
    args = parser.parse_args(argv)

    def client(name: str) -> Any:
        return boto3.client(name, region_name=args.region, endpoint_url=args.endpoint_url)  # type: ignore[call-overload]

    ec2 = client("ec2")
    fleet = Fleet.from_outputs(args.outputs)
    problems = check(ec2, fleet, args.count, local_endpoint=args.endpoint_url is not None)
    if fleet.queue_url:
        sqs = client("sqs")
        queue_arn = sqs.get_queue_attributes(QueueUrl=fleet.queue_url, AttributeNames=["QueueArn"])
        problems += rule_problems(client("events"), fleet, queue_arn["Attributes"]["QueueArn"])
        problems += drill_problems(client("fis"), fleet)
        problems += agent_role_problems(client("iam"), fleet)
        if args.endpoint_url is not None:
            problems += routing_problems(client("events"), sqs, fleet)
    for problem in problems:
        print(f"check_fleet: {problem}")
    if not problems:
        drills = "with drills" if fleet.drill_template_id else "without drills"
        print(
            f"check_fleet: {len(fleet.instance_ids)} hibernation-ready spot instances ok, {drills}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
