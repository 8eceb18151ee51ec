"""The hibernation trigger: EC2 StopInstances(Hibernate=True) on itself, the kernel, or a dry run.

OWNER: host helper implements the three modes here; `TriggerResult` and `Hibernator` are the
interface the agent calls and keep their names and fields.

A hibernator never raises: every failure comes back as a TriggerResult with a reason a person
can act on, because the caller is the agent's loop, racing a deadline.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from spotguard.hostfs import HostFS

if TYPE_CHECKING:  # the stubs are a dev dependency; boto3 itself loads only when needed
    from mypy_boto3_ec2 import EC2Client


@dataclass(frozen=True, slots=True)
class TriggerResult:
    issued: bool
    reason: str = ""  # why not, in words a person can act on
    error_code: str = ""  # e.g. UnsupportedHibernationConfiguration


class Hibernator(Protocol):
    mode: str

    def hibernate(self) -> TriggerResult:
        """Issue the hibernation now (retrying what is worth retrying)."""

    def preflight(self) -> TriggerResult:
        """Check that `hibernate` would be allowed, without doing it (EC2: DryRun).

        Here `issued` means "would be issued".
        """


def ec2_client(
    region: str,
    *,
    imds_url: str = "",
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    attempts: int = 4,
) -> EC2Client:
    """An EC2 client the standard way (so AWS_ENDPOINT_URL_EC2, profiles and roles apply).

    `imds_url` is the metadata service the agent polls: the instance role's credentials come
    from there too, not from boto3's default 169.254.169.254, which an IPv6-only instance
    does not have (and a test must never reach). It is set on this client's own botocore
    session, so the process environment stays as it was.

    Standard retry mode retries throttling, 5xx and connection errors with jittered backoff;
    `attempts` counts the first try too. The timeouts keep every try well inside a notice.
    """
    # 20+ MiB resident: paid at the first notice, not for days of idling.
    import boto3  # noqa: PLC0415
    import botocore.session  # noqa: PLC0415
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    config = BotoConfig(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
    )
    session = botocore.session.get_session()
    if imds_url:
        host = urlsplit(imds_url).hostname or ""
        session.set_config_variable("ec2_metadata_service_endpoint", imds_url)
        mode = "IPv6" if ":" in host else "IPv4"
        session.set_config_variable("ec2_metadata_service_endpoint_mode", mode)
    return boto3.Session(botocore_session=session).client(
        "ec2", region_name=region or None, config=config
    )


# What to do about the errors StopInstances(Hibernate=True) is known to give.
_ADVICE = {
    "UnsupportedHibernationConfiguration": (
        "hibernation is not enabled for this instance: launch it with"
        " HibernationOptions.Configured=true and an encrypted EBS root volume larger than RAM"
    ),
    "UnsupportedOperation": "this instance type or launch does not support hibernation",
    "UnauthorizedOperation": "the instance role may not call ec2:StopInstances on this instance",
    "AuthFailure": "AWS rejected the credentials",
    "IncorrectInstanceState": (
        "the instance cannot hibernate in its current state (already stopping, or hibernation"
        " not ready yet: it needs a few minutes after launch)"
    ),
    "OperationNotPermitted": "stop protection (DisableApiStop) is on for this instance",
    "InvalidInstanceID.NotFound": "EC2 does not know this instance id (wrong region?)",
    "InvalidInstanceID.Malformed": "the instance id is malformed",
    "RequestLimitExceeded": "EC2 throttled StopInstances even after retries",
}


class Ec2Hibernator:
    """Hibernate through the EC2 API, the only path that lets the instance be started again."""

    mode = "ec2"

    def __init__(self, client: EC2Client, instance_id: str) -> None:
        self._client = client
        self._instance_id = instance_id

    def hibernate(self) -> TriggerResult:
        return self._stop(dry_run=False)

    def preflight(self) -> TriggerResult:
        return self._stop(dry_run=True)

    def _stop(self, *, dry_run: bool) -> TriggerResult:
        try:
            answer = self._client.stop_instances(
                InstanceIds=[self._instance_id], Hibernate=True, DryRun=dry_run
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            if dry_run and code == "DryRunOperation":
                return TriggerResult(issued=True, reason="DryRun: StopInstances would be allowed")
            advice = _ADVICE.get(code, "EC2 refused StopInstances")
            message = error.get("Message", "")
            return TriggerResult(issued=False, reason=f"{advice} ({message})", error_code=code)
        except BotoCoreError as exc:
            return TriggerResult(
                issued=False,
                reason=f"the EC2 call did not go through: {exc}",
                error_code=type(exc).__name__,
            )
        stopping = answer.get("StoppingInstances", [])
        states = [s.get("CurrentState", {}).get("Name", "?") for s in stopping]
        return TriggerResult(issued=True, reason=f"StopInstances accepted: {', '.join(states)}")


Runner = Callable[..., subprocess.CompletedProcess[str]]


class LocalHibernator:
    """The kernel path (systemctl hibernate) for hosts where the EC2 API is not the way."""

    mode = "local"

    def __init__(
        self,
        fs: HostFS,
        command: Sequence[str] = ("systemctl", "hibernate"),
        runner: Runner = subprocess.run,
        timeout_s: float = 30.0,
    ) -> None:
        self._fs = fs
        self._command = list(command)
        self._runner = runner
        self._timeout_s = timeout_s

    def hibernate(self) -> TriggerResult:
        return self._run()

    def _run(self) -> TriggerResult:
        try:
            done = self._runner(
                self._command,
                timeout=self._timeout_s,
                capture_output=True,
                text=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return TriggerResult(
                issued=False,
                reason=f"{self._command[0]} gave no answer within {self._timeout_s:g} s",
                error_code="Timeout",
            )
        except OSError as exc:
            return TriggerResult(
                issued=False,
                reason=f"could not run {self._command[0]}: {exc}",
                error_code="OSError",
            )
        if done.returncode != 0:
            output = (done.stderr or done.stdout or "").strip()[-500:]
            return TriggerResult(
                issued=False,
                reason=f"{' '.join(self._command)} exited {done.returncode}: {output}",
                error_code=f"exit {done.returncode}",
            )
        return TriggerResult(issued=True, reason=f"{' '.join(self._command)} accepted")

    def preflight(self) -> TriggerResult:
        return self._check()

    def _check(self) -> TriggerResult:
        states = self._read("/sys/power/state")
        if "disk" not in states.split():
            return TriggerResult(
                issued=False,
                reason="the kernel cannot hibernate: /sys/power/state has no 'disk'",
                error_code="NoHibernation",
            )
        if not any(arg.startswith("resume=") for arg in self._read("/proc/cmdline").split()):
            return TriggerResult(
                issued=False,
                reason="no resume= on the kernel command line: the image could not be resumed",
                error_code="NoResumeDevice",
            )
        return TriggerResult(issued=True, reason="kernel hibernation available, resume= set")

    def _read(self, path: str) -> str:
        try:
            return self._fs.read_text(path)
        except OSError:
            return ""


class DryRunHibernator:
    """Mode none: everything up to the trigger runs, the trigger itself does nothing.

    It counts as issued, so a dry run walks the same path as the real thing afterwards.
    """

    mode = "none"

    def hibernate(self) -> TriggerResult:
        return TriggerResult(issued=True, reason="dry run (hibernate.mode = none): nothing issued")

    def preflight(self) -> TriggerResult:
        return TriggerResult(issued=True, reason="hibernate.mode is none: nothing will be issued")


class RefusingHibernator:
    """Stands in when the real one cannot even be built, so the refusal reaches the agent's log."""

    def __init__(self, mode: str, reason: str, error_code: str) -> None:
        self.mode = mode
        self._result = TriggerResult(issued=False, reason=reason, error_code=error_code)

    def hibernate(self) -> TriggerResult:
        return self._result

    def preflight(self) -> TriggerResult:
        return self._result


def make_hibernator(
    mode: str,
    *,
    fs: HostFS,
    region: str,
    instance_id: str,
    client: EC2Client | None = None,
    local_command: Sequence[str] = ("systemctl", "hibernate"),
    imds_url: str = "",
) -> Hibernator:
    """The hibernator for `hibernate.mode` (ec2 | local | none); never fails for want of facts.
    `imds_url`: where EC2 mode's credentials come from (see `ec2_client`)."""
    if mode == "ec2":
        try:
            return Ec2Hibernator(client or ec2_client(region, imds_url=imds_url), instance_id)
        except BotoCoreError as exc:  # e.g. no region: the metadata service has not said yet
            return RefusingHibernator(mode, f"no EC2 client: {exc}", type(exc).__name__)
    if mode == "local":
        return LocalHibernator(fs, local_command)
    if mode == "none":
        return DryRunHibernator()
    raise ValueError(f"unknown hibernate mode {mode!r} (ec2 | local | none)")
