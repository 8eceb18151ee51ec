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
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:  # type stubs only: running the check needs nothing but boto3
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef, ResponseLaunchTemplateDataTypeDef

MIB_PER_GIB = 1024
INTERRUPTION_BEHAVIORS = ("hibernate", "stop")


@dataclass(frozen=True)
class Fleet:
    """The fleet as `terraform output -json` of the example names it."""

    instance_ids: list[str]
    launch_template_id: str

    @classmethod
    def from_outputs(cls, path: Path) -> Fleet:
        outputs = json.loads(path.read_text())
        return cls(
            instance_ids=list(outputs["instance_ids"]["value"]),
            launch_template_id=str(outputs["launch_template_id"]["value"]),
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

    ec2 = boto3.client("ec2", region_name=args.region, endpoint_url=args.endpoint_url)
    fleet = Fleet.from_outputs(args.outputs)
    problems = check(ec2, fleet, args.count, local_endpoint=args.endpoint_url is not None)
    for problem in problems:
        print(f"check_fleet: {problem}")
    if not problems:
        print(f"check_fleet: {len(fleet.instance_ids)} hibernation-ready spot instances ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
