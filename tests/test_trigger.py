"""The hibernation trigger against a real moto server, a scripted EC2 front and fake trees."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from mypy_boto3_ec2 import EC2Client

from spotguard.assemble import HibernatorFactory
from spotguard.config import from_mapping
from spotguard.hostfs import HostFS
from spotguard.monitors import InstanceFacts
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from spotguard.trigger import (
    DryRunHibernator,
    Ec2Hibernator,
    LocalHibernator,
    TriggerResult,
    ec2_client,
    make_hibernator,
)
from tests.fixtures_aws import MotoServer, _free_port

IMAGE = "ami-12c6146b"  # one of moto's built-in images (listing them all takes seconds)


def launch(ec2: EC2Client, **options: Any) -> str:
    answer = ec2.run_instances(ImageId=IMAGE, MinCount=1, MaxCount=1, **options)
    return answer["Instances"][0]["InstanceId"]


def state(ec2: EC2Client, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def recorded_stops(moto: MotoServer) -> list[dict[str, list[str]]]:
    """The StopInstances requests moto received, as decoded form fields."""
    stops = []
    for line in moto.recorded().splitlines():
        entry = json.loads(line)
        body = entry["body"]
        text = base64.b64decode(body).decode() if entry.get("body_encoded") else body
        fields = parse_qs(text)
        if fields.get("Action") == ["StopInstances"]:
            stops.append(fields)
    return stops


def test_hibernate_sends_stop_instances_with_hibernate_true(moto_server: MotoServer) -> None:
    ec2 = moto_server.ec2()
    instance_id = launch(ec2)
    hibernator = make_hibernator("ec2", fs=HostFS(), region="us-east-1", instance_id=instance_id)
    moto_server.start_recording()
    result = hibernator.hibernate()
    assert result.issued, result.reason
    [stop] = recorded_stops(moto_server)
    assert stop["InstanceId.1"] == [instance_id]
    assert stop["Hibernate"] == ["true"]
    assert "DryRun" not in stop or stop["DryRun"] == ["false"]
    assert state(ec2, instance_id) == "stopped"


def test_preflight_is_a_dry_run(moto_server: MotoServer) -> None:
    ec2 = moto_server.ec2()
    instance_id = launch(ec2)
    moto_server.start_recording()
    result = Ec2Hibernator(ec2_client("us-east-1"), instance_id).preflight()
    assert result == TriggerResult(issued=True, reason="DryRun: StopInstances would be allowed")
    [stop] = recorded_stops(moto_server)
    assert stop["DryRun"] == ["true"]
    assert stop["Hibernate"] == ["true"]
    assert state(ec2, instance_id) == "running"


def test_unknown_instance_is_a_clean_refusal(moto_server: MotoServer) -> None:
    result = Ec2Hibernator(ec2_client("us-east-1"), "i-0123456789abcdef0").hibernate()
    assert not result.issued
    assert result.error_code == "InvalidInstanceID.NotFound"
    assert "does not know this instance id" in result.reason


def test_stop_protection_is_a_clean_refusal(moto_server: MotoServer) -> None:
    ec2 = moto_server.ec2()
    instance_id = launch(ec2, DisableApiStop=True)
    result = Ec2Hibernator(ec2_client("us-east-1"), instance_id).hibernate()
    assert (result.issued, result.error_code) == (False, "OperationNotPermitted")
    assert "DisableApiStop" in result.reason
    assert state(ec2, instance_id) == "running"


def test_unreachable_endpoint_is_a_clean_refusal(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{_free_port()}")
    client = ec2_client("us-east-1", connect_timeout=0.5, read_timeout=0.5, attempts=2)
    result = Ec2Hibernator(client, "i-0123456789abcdef0").hibernate()
    assert not result.issued
    assert result.error_code == "EndpointConnectionError"
    assert "the EC2 call did not go through" in result.reason


@dataclass
class ScriptedEc2:
    """A front for moto that first answers with scripted EC2 errors, then passes requests on."""

    url: str
    errors: list[tuple[int, str]] = field(default_factory=list)
    requests_seen: int = 0


@pytest.fixture
def scripted_ec2(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEc2]:
    front = ScriptedEc2(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            front.requests_seen += 1
            if front.errors:
                status, code = front.errors.pop(0)
                xml = (
                    f"<Response><Errors><Error><Code>{code}</Code><Message>scripted {code}"
                    "</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
                )
                self.answer(status, xml.encode(), "text/xml")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream = requests.post(moto_server.url, data=body, headers=headers, timeout=5)
            self.answer(upstream.status_code, upstream.content, upstream.headers["Content-Type"])

        def answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    front.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", front.url)
    try:
        yield front
    finally:
        server.shutdown()
        server.server_close()


def test_throttling_is_retried(moto_server: MotoServer, scripted_ec2: ScriptedEc2) -> None:
    instance_id = launch(moto_server.ec2())
    scripted_ec2.errors = [(503, "RequestLimitExceeded"), (503, "RequestLimitExceeded")]
    moto_server.start_recording()
    result = Ec2Hibernator(ec2_client("us-east-1", attempts=3), instance_id).hibernate()
    assert result.issued, result.reason
    assert scripted_ec2.requests_seen == 3
    assert len(recorded_stops(moto_server)) == 1


def test_throttling_beyond_the_attempts_is_a_clean_refusal(
    moto_server: MotoServer, scripted_ec2: ScriptedEc2
) -> None:
    scripted_ec2.errors = [(503, "RequestLimitExceeded")] * 3
    result = Ec2Hibernator(ec2_client("us-east-1", attempts=2), "i-0123456789abcdef0").hibernate()
    assert (result.issued, result.error_code) == (False, "RequestLimitExceeded")
    assert "throttled" in result.reason
    assert scripted_ec2.requests_seen == 2


def test_hibernation_not_configured_is_not_retried(
    moto_server: MotoServer, scripted_ec2: ScriptedEc2
) -> None:
    scripted_ec2.errors = [(400, "UnsupportedHibernationConfiguration")]
    result = Ec2Hibernator(ec2_client("us-east-1"), "i-0123456789abcdef0").hibernate()
    assert (result.issued, result.error_code) == (False, "UnsupportedHibernationConfiguration")
    assert "HibernationOptions.Configured=true" in result.reason
    assert scripted_ec2.requests_seen == 1


@dataclass
class RecordingRunner:
    """Stands in for subprocess.run so the default command is checked without running it."""

    calls: list[tuple[list[str], dict[str, Any]]] = field(default_factory=list)

    def __call__(self, command: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(command), options))
        return subprocess.CompletedProcess(list(command), 0, "", "")


def test_local_default_is_systemctl_hibernate_without_a_shell(tmp_path: Path) -> None:
    runner = RecordingRunner()
    result = LocalHibernator(HostFS(tmp_path), runner=runner).hibernate()
    assert result.issued
    [(command, options)] = runner.calls
    assert command == ["systemctl", "hibernate"]
    assert options["timeout"] > 0
    assert not options.get("shell", False)


def test_local_runs_the_command(tmp_path: Path) -> None:
    result = LocalHibernator(HostFS(tmp_path), command=("true",)).hibernate()
    assert result.issued
    assert "true accepted" in result.reason


@pytest.mark.parametrize(
    ("command", "timeout_s", "error_code", "says"),
    [
        (("sh", "-c", "echo no swap >&2; exit 3"), 5.0, "exit 3", "no swap"),
        (("sleep", "10"), 0.2, "Timeout", "no answer within 0.2 s"),
        (("/nonexistent/hibernate",), 5.0, "OSError", "could not run"),
    ],
)
def test_local_failures_are_clean_refusals(
    tmp_path: Path, command: tuple[str, ...], timeout_s: float, error_code: str, says: str
) -> None:
    result = LocalHibernator(HostFS(tmp_path), command=command, timeout_s=timeout_s).hibernate()
    assert (result.issued, result.error_code) == (False, error_code)
    assert says in result.reason


@pytest.mark.parametrize(
    ("power_state", "cmdline", "error_code"),
    [
        ("freeze mem disk\n", "root=/dev/nvme0n1p1 resume=UUID=abcd resume_offset=34816\n", ""),
        ("freeze mem\n", "root=/dev/nvme0n1p1 resume=UUID=abcd\n", "NoHibernation"),
        ("freeze mem disk\n", "root=/dev/nvme0n1p1 quiet noresume\n", "NoResumeDevice"),
        (None, None, "NoHibernation"),
    ],
)
def test_local_preflight_reads_the_kernel(
    tmp_path: Path, power_state: str | None, cmdline: str | None, error_code: str
) -> None:
    fs = HostFS(tmp_path)
    for path, text in (("/sys/power/state", power_state), ("/proc/cmdline", cmdline)):
        if text is not None:
            fs.path(path).parent.mkdir(parents=True, exist_ok=True)
            fs.path(path).write_text(text)
    runner = RecordingRunner()
    result = LocalHibernator(fs, runner=runner).preflight()
    assert (result.issued, result.error_code) == (error_code == "", error_code)
    assert runner.calls == []


def test_dry_run_issues_nothing_and_says_so() -> None:
    hibernator = DryRunHibernator()
    assert hibernator.preflight().issued
    result = hibernator.hibernate()
    assert result.issued
    assert "nothing issued" in result.reason


def test_make_hibernator_picks_the_mode(tmp_path: Path, moto_server: MotoServer) -> None:
    fs = HostFS(tmp_path)
    made = {
        mode: make_hibernator(mode, fs=fs, region="us-east-1", instance_id="i-1")
        for mode in ("ec2", "local", "none")
    }
    assert {mode: type(h) for mode, h in made.items()} == {
        "ec2": Ec2Hibernator,
        "local": LocalHibernator,
        "none": DryRunHibernator,
    }
    assert all(h.mode == mode for mode, h in made.items())
    with pytest.raises(ValueError, match="unknown hibernate mode"):
        make_hibernator("suspend", fs=fs, region="us-east-1", instance_id="i-1")


def test_ec2_without_a_region_refuses_cleanly(
    tmp_path: Path, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    hibernator = make_hibernator("ec2", fs=HostFS(tmp_path), region="", instance_id="i-1")
    for result in (hibernator.preflight(), hibernator.hibernate()):
        assert (result.issued, result.error_code) == (False, "NoRegionError")
        assert "region" in result.reason


# -- the instance role's credentials come from the agent's metadata endpoint -----------------
NO_OTHER_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def recorded_headers(moto: MotoServer, action: str) -> list[dict[str, str]]:
    found = []
    for line in moto.recorded().splitlines():
        entry = json.loads(line)
        body = entry["body"]
        text = base64.b64decode(body).decode() if entry.get("body_encoded") else body
        if parse_qs(text).get("Action") == [action]:
            found.append({k.lower(): v for k, v in entry["headers"].items()})
    return found


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_the_role_credentials_come_from_the_agents_metadata_service(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """Only the simulator can hand boto3 credentials here: no keys in the environment or in
    files, and boto3's default metadata address is not the one configured. StopInstances then
    reaches moto signed with exactly the simulator's role credentials."""
    ec2 = moto_server.ec2()  # explicit test keys, for the setup only
    instance_id = launch(ec2)
    for name in NO_OTHER_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    with MetadataSimulator(address=address) as sim:
        role = sim.instance.iam_role
        # As the agent builds it: from the config, whose imds.url is the simulator.
        config = from_mapping({"imds": {"url": sim.url}, "hibernate": {"mode": "ec2"}}, env={})
        facts = InstanceFacts(instance_id, "us-east-1", "spot", hibernation_configured=True)
        hibernator = HibernatorFactory(config, HostFS())(facts)
        moto_server.start_recording()
        result = hibernator.hibernate()
        assert result.issued, result.reason
        assert sim.count("PUT", "/latest/api/token", 200) >= 1  # IMDSv2, as the agent does
        credentials = f"/latest/meta-data/iam/security-credentials/{role}"
        assert sim.count("GET", credentials, 200) >= 1
    [stop] = recorded_headers(moto_server, "StopInstances")
    assert "Credential=ASIAFAKESIMULATOR000/" in stop["authorization"]
    assert stop["x-amz-security-token"] == (
        "fake-session-token-from-the-spotguard-metadata-simulator"
    )
    assert state(ec2, instance_id) == "stopped"
    # Set on the client's own botocore session: the process environment is as it was.
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" not in os.environ


def test_without_role_credentials_the_refusal_says_so(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in NO_OTHER_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    instance = SimulatedInstance(iam_role="")  # launched without an instance profile
    with MetadataSimulator(instance=instance) as sim:
        hibernator = make_hibernator(
            "ec2",
            fs=HostFS(),
            region="us-east-1",
            instance_id="i-0123456789abcdef0",
            imds_url=sim.url,
        )
        result = hibernator.hibernate()
        assert sim.count("GET", "/latest/meta-data/iam/security-credentials/") >= 1
    assert not result.issued
    assert result.error_code == "NoCredentialsError"
