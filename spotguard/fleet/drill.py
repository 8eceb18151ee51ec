"""Start a drill: the fleet's AWS FIS experiment template, read back for what to expect."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_fis import FISClient

ACTION = "aws:ec2:send-spot-instance-interruptions"
DEFAULT_DURATION = "PT2M"  # what FIS assumes without the parameter
_DURATION = re.compile(r"^PT(?:(\d+)M)?(?:(\d+)S)?$")
_COUNT = re.compile(r"^COUNT\((\d+)\)$")


class DrillError(RuntimeError):
    """The template cannot drive a drill, or FIS refused to start it; the message says why."""


@dataclass(frozen=True, slots=True)
class Drill:
    experiment_id: str
    notice_s: (
        float  # durationBeforeInterruption: how far ahead of the interruption the warning comes
    )
    expect: int  # instances COUNT(n) selects; 0 when the template says ALL or PERCENT
    started_at: float  # epoch, as FIS reports it


def fis_client(region: str = "", endpoint_url: str | None = None) -> FISClient:
    import boto3  # noqa: PLC0415
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    config = BotoConfig(connect_timeout=5, read_timeout=30, retries={"mode": "standard"})
    return boto3.client("fis", region_name=region or None, endpoint_url=endpoint_url, config=config)


def start(fis: FISClient, template_id: str) -> Drill:
    template = fis.get_experiment_template(id=template_id)["experimentTemplate"]
    actions = [a for a in template.get("actions", {}).values() if a.get("actionId") == ACTION]
    if not actions:
        raise DrillError(f"template {template_id} has no {ACTION} action")
    duration = actions[0].get("parameters", {}).get("durationBeforeInterruption", DEFAULT_DURATION)
    notice_s = parse_iso_duration(duration)
    expect = 0
    for name in actions[0].get("targets", {}).values():
        mode = template.get("targets", {}).get(name, {}).get("selectionMode", "")
        if match := _COUNT.match(mode):
            expect += int(match.group(1))
    answer = fis.start_experiment(
        experimentTemplateId=template_id,
        clientToken=str(uuid.uuid4()),
        tags={"spotguard:drill": "fleet drill"},
    )
    experiment = answer["experiment"]
    return Drill(
        experiment_id=experiment["id"],
        notice_s=notice_s,
        expect=expect,
        started_at=experiment["startTime"].timestamp()
        if "startTime" in experiment
        else experiment["creationTime"].timestamp(),
    )


def status(fis: FISClient, experiment_id: str) -> str:
    state = fis.get_experiment(id=experiment_id)["experiment"].get("state", {})
    return f"{state.get('status', '?')}: {state.get('reason', '')}".rstrip(": ")


def parse_iso_duration(text: str) -> float:
    """FIS's "PT2M" / "PT90S" as seconds."""
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise DrillError(f"durationBeforeInterruption {text!r} is not like PT2M")
    minutes, seconds = match.groups()
    return 60.0 * int(minutes or 0) + int(seconds or 0)
