"""`spotguard check` (is this machine ready to hibernate?) and `spotguard hibernate` (do it now)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from spotguard.assemble import HibernatorFactory, host_fs, image_size_control, state_dir
from spotguard.config import Config
from spotguard.estimator import ImageEstimate, ImageEstimator
from spotguard.hostfs import HostFS
from spotguard.hostlock import HostLock
from spotguard.image_size import JOURNAL_NAME as IMAGE_SIZE_JOURNAL
from spotguard.imds import ImdsClient, ImdsError
from spotguard.monitors import HIBERNATION_UNKNOWN, InstanceFacts, fetch_facts
from spotguard.reclaim.detect import detect_backends
from spotguard.reclaim.journal import LimitJournal, OriginalsJournal
from spotguard.table import print_table
from spotguard.units import human_bytes


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, with a caveat the detail explains
    SKIP = "skip"  # could not be checked; the detail says why
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str

    @property
    def ok(self) -> bool:
        """Good enough to go on: a warning is, an unchecked item is not."""
        return self.verdict in (Verdict.OK, Verdict.WARN)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "verdict": self.verdict.value,
            "detail": self.detail,
        }


def passed(name: str, ok: bool, detail: str) -> Check:
    return Check(name, Verdict.OK if ok else Verdict.FAIL, detail)


CHECK_EXIT = """exit status:
  0  every check is ok (warnings allowed: they say what the agent will do)
  1  a check failed, or could not be made (skip: the detail says why)
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="preflight: can this machine hibernate safely?",
        epilog=CHECK_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check)
    hibernate = commands.add_parser("hibernate", help="hibernate now (checks the image first)")
    hibernate.add_argument("--yes", action="store_true", help="really do it")
    hibernate.set_defaults(func=_hibernate)


def run_checks(config: Config) -> list[Check]:
    """Every check runs even when an earlier one fails, so one call shows all that is wrong."""
    checks: list[Check] = []
    facts = _facts(config, checks)
    estimate = _estimate(config, checks)
    fs = host_fs(config)
    if estimate is not None:
        fits = estimate.fits(config.hibernate.swap_margin)
        checks.append(
            passed(
                "swap holds the image",
                fits,
                f"{human_bytes(estimate.swap_free_bytes)} free for a "
                f"{human_bytes(estimate.expected_bytes)} image x {config.hibernate.swap_margin}",
            )
        )
    checks.append(_resume(fs))
    report = detect_backends(fs, config.reclaim)
    checks.append(passed("reclaim backend", report.usable, report.describe()))
    checks.append(_left_lowered(state_dir(config)))
    checks.append(_trigger(config, fs, facts))
    return checks


def _left_lowered(state: Path) -> Check:
    """Limits (and image_size) lowered and not yet put back, from the journals: a live
    reclaim's are fine, a dead one's are put back at the next start: worth saying until then."""
    name = "nothing left lowered"
    journals = (LimitJournal(state), OriginalsJournal(state / IMAGE_SIZE_JOURNAL))
    entries = {key: e for j in journals for key, e in j.pending().items()}
    procs = HostFS()  # owners are real processes, whatever the root prefix
    orphans = sorted(
        key for key, e in entries.items() if e.orphaned(procs) and not e.from_older_boot(procs)
    )
    if orphans:
        return Check(
            name,
            Verdict.WARN,
            f"{', '.join(orphans)} left lowered by a reclaim that died; the next start of the "
            "agent or `spotguard reclaim` puts them back",
        )
    holder = HostLock(state).holder()
    running = f"; a reclaim is running ({holder.describe()})" if holder else ""
    return Check(name, Verdict.OK, f"no lowered limit or image_size in {state}{running}")


def _trigger(config: Config, fs: HostFS, facts: InstanceFacts | None) -> Check:
    """EC2: a StopInstances DryRun on this instance, which needs its id: without one the
    DryRun would ask about no instance at all, and its "ok" would mean nothing."""
    name = f"hibernate ({config.hibernate.mode})"
    if config.hibernate.mode == "ec2" and (facts is None or not facts.instance_id):
        why = "the metadata service is down" if facts is None else "it did not say"
        return Check(name, Verdict.SKIP, f"no StopInstances DryRun: instance id unknown ({why})")
    preflight = HibernatorFactory(config, fs)(facts).preflight()
    return passed(name, preflight.issued, preflight.reason)


def _resume(fs: HostFS) -> Check:
    """This boot's command line, or GRUB's for the next one (cloud-init's swap set-up writes
    it there: on a fresh instance it takes effect at the next boot)."""
    try:
        cmdline = fs.read_text("/proc/cmdline").split()
    except OSError as exc:
        return passed("resume= set", False, f"/proc/cmdline: {exc}")
    resume = [arg for arg in cmdline if arg.startswith(("resume=", "resume_offset="))]
    if any(arg.startswith("resume=") for arg in resume):
        return passed("resume= set", True, " ".join(resume))
    grub = fs.path("/etc/default/grub.d")
    for cfg in sorted(grub.glob("*.cfg")) if grub.is_dir() else []:
        if "resume=" in cfg.read_text(encoding="utf-8", errors="replace"):
            return passed("resume= set", True, f"for the next boot, in {cfg.name} (reboot first)")
    return passed("resume= set", False, "no resume= on /proc/cmdline or in /etc/default/grub.d")


def _facts(config: Config, checks: list[Check]) -> InstanceFacts | None:
    try:
        facts = fetch_facts(ImdsClient(config.imds))
    except ImdsError as exc:
        checks.append(passed("metadata service", False, f"{config.imds.url}: {exc}"))
        return None
    checks.append(
        passed(
            "metadata service",
            True,
            f"{facts.instance_id} ({facts.life_cycle or '?'}, {facts.region})",
        )
    )
    if config.hibernate.mode == "ec2":
        checks.append(_configured(facts.hibernation_configured))
    return facts


def _configured(configured: bool | None) -> Check:
    """The agent's policy, in the agent's words: unknown is a warning, not a failure."""
    name = "hibernation configured"
    if configured is None:
        return Check(name, Verdict.WARN, f"hibernation/configured {HIBERNATION_UNKNOWN}")
    if not configured:
        return Check(
            name,
            Verdict.FAIL,
            "hibernation/configured = false: EC2 refuses StopInstances(Hibernate=True); launch "
            "with HibernationOptions Configured=true",
        )
    return Check(name, Verdict.OK, "hibernation/configured = true")


def _estimate(config: Config, checks: list[Check]) -> ImageEstimate | None:
    try:
        return ImageEstimator(host_fs(config), config.hibernate).estimate()
    except (OSError, ValueError) as exc:
        checks.append(passed("image estimate", False, str(exc)))
        return None


def _check(args: argparse.Namespace) -> int:
    checks = run_checks(args.config_obj)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print_table([(c.name, f"{c.verdict.value.upper():4}  {c.detail}") for c in checks])
    return 0 if all(c.ok for c in checks) else 1


def _hibernate(args: argparse.Namespace) -> int:
    config: Config = args.config_obj
    checks: list[Check] = []
    estimate = _estimate(config, checks)
    if estimate is None:
        print(f"spotguard: refusing: {checks[0].detail}", file=sys.stderr)
        return 1
    if not estimate.fits(config.hibernate.swap_margin):
        print(
            f"spotguard: refusing: the {human_bytes(estimate.expected_bytes)} image does not fit "
            f"in {human_bytes(estimate.swap_free_bytes)} of free swap "
            f"(margin {config.hibernate.swap_margin})",
            file=sys.stderr,
        )
        return 1
    if not args.yes:
        print("spotguard: this hibernates the machine now; add --yes to do it", file=sys.stderr)
        return 2
    facts = _facts(config, checks) if config.hibernate.mode == "ec2" else None
    if config.hibernate.mode == "ec2" and (facts is None or not facts.instance_id):
        print(
            "spotguard: refusing: EC2 mode needs the instance id, and the metadata service "
            f"did not give it ({checks[0].detail})",
            file=sys.stderr,
        )
        return 1
    image_size_control(config, host_fs(config))  # a value a dead agent left lowered goes back
    result = HibernatorFactory(config, host_fs(config))(facts).hibernate()
    print(result.reason)
    return 0 if result.issued else 1
