"""Re-measure the RFC's hibernation table in the guest: ``python -m testbed.run``.

Each arm run boots the guest twice on fresh disks. Boot 1 runs the workload, idles, prepares
the arm's way and hibernates (QEMU exits once the image is written); boot 2 resumes from the
swap disk and re-touches the working set. ``--help`` lists the knobs; results go to
``--out`` (text table, JSON, a PNG of one spotguard run), each run's console logs and host
times to a folder of its own under ``--out/tmp`` (its disks too: scratch), its facts and
gzipped consoles also to ``--out/runs`` (kept), from which ``--add`` and ``--report-only``
rebuild a report over several invocations, on this machine or a later one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from spotguard import config
from spotguard.simulator import MetadataSimulator
from testbed import record, report
from testbed.guest import BaseImage, Disks, Guest, GuestError, ImdsNetwork, Machine
from testbed.image import CACHE_DIR, INGUEST, build_base
from testbed.measure import AGENT_ARMS, IMAGE_SIZES, Observed
from testbed.record import ArmRun, RunInfo

log = structlog.get_logger()

# spotguard-hibernate: the agent's readiness alone, for spot action `hibernate` (EC2 starts
# hibernating at the notice: no lead time, only what was reclaimed before counts).
ARMS = ("vanilla", "oneshot", "spotguard", "spotguard-hibernate")
DEFAULT_ARMS = ARMS[:3]
BOOT_TIMEOUT = 900.0  # TCG on a busy 2-core host is slow
SWAP_SLACK = 512 << 20
# The guest agent's configuration, for what its log leaves out (its fixed hibernation overhead).
AGENT_CONFIG = config.load(INGUEST / "spotguard.toml", env={})
AGENT_IDLE_S = float(config.IdleConfig().duration)  # the agent's own default
ONESHOT_AFTER_S = 30.0  # when the one-shot arm reclaims: the RFC daemon's 30 s of idle


@dataclass(frozen=True, slots=True)
class Plan:
    """One benchmark invocation: which arms, how big, how long to idle."""

    arms: tuple[str, ...] = DEFAULT_ARMS
    image_sizes: tuple[str, ...] = ("default",)
    runs: int = 1
    machine: Machine = field(default_factory=Machine)
    idle_s: float = 60.0
    agent_idle_s: float = AGENT_IDLE_S
    oneshot_after_s: float = ONESHOT_AFTER_S
    notice_s: float = 120.0  # the spot notice's lead time
    # The agent's idle.cpu_idle_percent. The RFC's 95 % is out of reach under TCG: the
    # emulated timer work of the foreground probe alone keeps the least idle vCPU at 88-95 %.
    agent_cpu_idle: float = 80.0
    anon_percent: float = 60.0
    cache_percent: float = 25.0
    # Spinning processes beside the guest for the whole run: the promise's busy host, on
    # demand (TCG slows with the host, as on 2026-12-02's shared one, 2-3x).
    busy_workers: int = 0

    @property
    def swap_bytes(self) -> int:
        """Room for what reclaim swaps out (at most the 60 % anonymous part) plus the image
        (at most 2/5 of RAM by default), in one sparse file."""
        return (self.machine.memory_mib << 20) * 5 // 4 + SWAP_SLACK

    def cmdline(self, arm: str, image_size: str) -> list[str]:
        knobs = {
            "arm": arm,
            "idle": f"{self.idle_s:g}",
            "oneshot_after": f"{self.oneshot_after_s:g}",
            "agent_idle": f"{self.agent_idle_s:g}s",
            "agent_cpu_idle": f"{self.agent_cpu_idle:g}",
            "anon": f"{self.anon_percent:g}",
            "cache": f"{self.cache_percent:g}",
            "image_size": image_size,
        }
        return ["cloud-init=disabled", *(f"testbed.{k}={v}" for k, v in knobs.items())]


def run_arm(
    image: BaseImage,
    plan: Plan,
    arm: str,
    image_size: str,
    folder: Path,
    *,
    info: RunInfo | None = None,
) -> ArmRun:
    """Both boots of one arm run, recorded in `folder`; the disks are deleted whatever
    happens."""
    info = replace(
        info or RunInfo(facts=plan_facts(plan)),
        started_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    load = os.getloadavg()[0]
    with busy_host(plan.busy_workers):
        done = _run_arm(image, plan, (arm, image_size), folder, info)
    done = replace(done, info=replace(done.info, host_load=(load, os.getloadavg()[0])))
    record.save(folder, done)
    return done


def _run_arm(
    image: BaseImage, plan: Plan, arm_size: tuple[str, str], folder: Path, info: RunInfo
) -> ArmRun:
    arm, image_size = arm_size
    disks = Disks.create(image, folder, swap_bytes=plan.swap_bytes)
    try:
        with _simulator(arm) as simulator:
            network = ImdsNetwork(_port(simulator)) if simulator else None
            first, notice_at = _hibernate(
                image,
                disks,
                plan=plan,
                arm_size=(arm, image_size),
                folder=folder,
                simulator=simulator,
            )
            resume = ["cloud-init=disabled", "testbed.resume=1"]
            with Guest.boot(
                image,
                disks,
                folder,
                machine=plan.machine,
                cmdline=resume,
                network=network,
                name="resume",
            ) as second:
                back = second.wait_for(r"TESTBED (back|booted)", BOOT_TIMEOUT)
                if "booted" in back.text:
                    raise GuestError("the guest booted afresh instead of resuming")
                second.wait_for(r"TESTBED done", BOOT_TIMEOUT, back.index)
            seen = Observed(
                arm=arm,
                image_size=image_size,
                first=first.console.lines,
                first_started=first.started,
                first_exited=first.exited or 0.0,
                second=second.console.lines,
                second_started=second.started,
                disk_bps=plan.machine.disk_bps,
                notice_at=notice_at,
                notice_s=None if arm == "spotguard-hibernate" else plan.notice_s,
                prediction_overhead_s=AGENT_CONFIG.hibernate.fixed_overhead,
            )
    except GuestError as exc:
        log.warning("run.failed", arm=arm, image_size=image_size, error=str(exc))
        empty = Observed(arm, image_size, [], 0.0, 0.0, [], 0.0, 0)
        return record.outcome(empty, info, str(exc))
    finally:
        disks.remove()
    return record.outcome(seen, info)


def _hibernate(
    image: BaseImage,
    disks: Disks,
    *,
    plan: Plan,
    arm_size: tuple[str, str],
    folder: Path,
    simulator: MetadataSimulator | None,
) -> tuple[Guest, float | None]:
    """Boot 1: load, idle, prepare, hibernate. In the agent arms the spot notice is ours to
    send, once the guest has idled as long as the other arms do before their trigger: action
    `stop` with its lead time, or `hibernate`, the moment the guest hibernates itself."""
    arm, image_size = arm_size
    notice_at = None
    with Guest.boot(
        image,
        disks,
        folder,
        machine=plan.machine,
        cmdline=plan.cmdline(arm, image_size),
        network=ImdsNetwork(_port(simulator)) if simulator else None,
        name="hibernate",
    ) as guest:
        idle = guest.wait_for(r"TESTBED idle-start", BOOT_TIMEOUT)
        if simulator is not None:
            time.sleep(max(0.0, idle.t + plan.idle_s - time.monotonic()))
            action = "hibernate" if arm == "spotguard-hibernate" else "stop"
            simulator.set_notice(action, in_seconds=plan.notice_s)
            notice_at = time.monotonic()
        trigger = guest.wait_for(r"TESTBED (trigger|hibernate-failed)", BOOT_TIMEOUT, idle.index)
        if "failed" in trigger.text:
            raise GuestError(f"hibernation failed in the guest: {trigger.text}")
        guest.wait_exit(BOOT_TIMEOUT)
    if simulator is not None and arm == "spotguard-hibernate":
        simulator.clear_notice()  # as on EC2: a started instance has no instance-action
    return guest, notice_at


@contextmanager
def busy_host(workers: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`workers` processes that only spin, at the host's normal priority, until the block ends."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(workers)
    ]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextmanager
def _simulator(arm: str) -> Iterator[MetadataSimulator | None]:
    """The metadata simulator on 127.0.0.1, for the arms that run the real agent."""
    if arm not in AGENT_ARMS:
        yield None
        return
    with MetadataSimulator(address="127.0.0.1", port=0) as simulator:
        yield simulator


def _port(simulator: MetadataSimulator) -> int:
    port = urlsplit(simulator.url).port
    if port is None:
        raise GuestError(f"simulator URL without a port: {simulator.url}")
    return port


def detect_accel(image: BaseImage, folder: Path, timeout: float = 60.0) -> str:
    """ "kvm" when a KVM guest gets as far as running init within `timeout`, else "tcg" (the
    nested kvm-pvm here hangs a stock kernel right after SeaBIOS)."""
    if not Path("/dev/kvm").exists():
        return "tcg"
    disks = Disks.create(image, folder)
    try:
        with Guest.boot(
            image,
            disks,
            folder,
            machine=Machine(memory_mib=512, accel="kvm"),
            cmdline=["cloud-init=disabled"],
            name="kvm-probe",
        ) as guest:
            guest.wait_for(r"Run /init as init process", timeout)
        return "kvm"
    except GuestError:
        return "tcg"
    finally:
        disks.remove()


def benchmark(image: BaseImage, plan: Plan, out: Path, command: str) -> list[ArmRun]:
    """Every arm of every row, `plan.runs` times, each run in a new folder under out/tmp."""
    runs = []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    info = RunInfo(command=command, facts=plan_facts(plan))
    for image_size in plan.image_sizes:
        for index in range(plan.runs):
            for arm in plan.arms:
                name = f"{plan.machine.memory_mib}M-{image_size}-{arm}-{stamp}-{index}"
                log.info("run.start", arm=arm, image_size=image_size, run=index)
                done = run_arm(image, plan, arm, image_size, out / "tmp" / name, info=info)
                log.info(
                    "run.done",
                    arm=arm,
                    image_size=image_size,
                    run=index,
                    error=done.error or None,
                    figures=asdict(done.measurement) if done.measurement else None,
                )
                runs.append(done)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.run", description=__doc__)
    parser.add_argument(
        "--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, from {','.join(ARMS)}"
    )
    parser.add_argument("--image-size", default="default", help="default, 0, or default,0")
    parser.add_argument("--memory", type=int, default=2048, help="guest MiB (8192 for the RFC's)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="runs per arm")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds before the trigger")
    parser.add_argument(
        "--agent-idle",
        type=float,
        default=AGENT_IDLE_S,
        help="the agent's idle.duration: seconds idle before its light reclaim starts",
    )
    parser.add_argument(
        "--oneshot-after",
        type=float,
        default=ONESHOT_AFTER_S,
        help="seconds idle before the one-shot arm's single memory.reclaim write",
    )
    parser.add_argument(
        "--agent-cpu-idle",
        type=float,
        default=80.0,
        help="the agent's idle.cpu_idle_percent (95 is out of reach under TCG)",
    )
    parser.add_argument(
        "--busy-host",
        type=int,
        default=0,
        metavar="N",
        help="N processes spinning on the host during every run (a busy host, on demand)",
    )
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--add",
        action="store_true",
        help="report these runs with those recorded under OUT/tmp and OUT/runs (same --memory)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="boot nothing: a report of the runs under OUT/tmp and OUT/runs (same --memory)",
    )
    args = parser.parse_args(argv)
    # A stopped benchmark still stops its guests and deletes its disks (the `with` blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arms = tuple(a for a in args.arms.split(",") if a)
    sizes = tuple(s for s in args.image_size.split(",") if s)
    if unknown := [a for a in arms if a not in ARMS] + [s for s in sizes if s not in IMAGE_SIZES]:
        parser.error(f"unknown arm or image size: {', '.join(unknown)}")
    scratch, kept = args.out / "tmp", args.out / "runs"
    earlier = record.recorded([scratch, kept], args.memory) if args.add or args.report_only else []
    if args.report_only:
        if not earlier:
            parser.error(f"no recorded {args.memory} MiB runs under {scratch} or {kept}")
        record.archive(scratch, kept)
        written = report.write(earlier, args.out)
        print(written.read_text())
        return 0 if all(r.measurement for r in earlier) else 1
    image = build_base(args.cache)
    accel = args.accel if args.accel != "auto" else detect_accel(image, args.out / "tmp" / "probe")
    plan = Plan(
        arms=arms,
        image_sizes=sizes,
        runs=args.runs,
        machine=Machine(memory_mib=args.memory, cpus=args.cpus, accel=accel),
        idle_s=args.idle,
        agent_idle_s=args.agent_idle,
        oneshot_after_s=args.oneshot_after,
        agent_cpu_idle=args.agent_cpu_idle,
        busy_workers=args.busy_host,
    )
    command = shlex.join(["python", "-m", "testbed.run", *(sys.argv[1:] if argv is None else argv)])
    runs = benchmark(image, plan, args.out, command)
    record.archive(scratch, kept)
    written = report.write([*earlier, *runs], args.out)
    print(written.read_text())
    return 0 if all(r.measurement for r in runs) else 1


def plan_facts(plan: Plan) -> dict[str, object]:
    return {
        "commit": _commit(),
        "accel": plan.machine.accel.upper(),
        "memory_mib": plan.machine.memory_mib,
        "cpus": plan.machine.cpus,
        "disk_mib_s": plan.machine.disk_bps / (1 << 20),
        "idle_s": plan.idle_s,
        "agent_idle_s": plan.agent_idle_s,
        "oneshot_after_s": plan.oneshot_after_s,
        "agent_cpu_idle_percent": plan.agent_cpu_idle,
        "runs": plan.runs,
        "notice_s": plan.notice_s,
        "workload": f"{plan.anon_percent:g} % anon + {plan.cache_percent:g} % page cache",
        **({"busy_workers": plan.busy_workers} if plan.busy_workers else {}),
    }


def _commit() -> str:
    """The checkout's commit (with "+dirty" when it has changes): the agent measured is its."""
    top = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(top), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(top), "status", "--porcelain", "--", "spotguard", "testbed"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
