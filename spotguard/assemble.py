"""The composition root: the one place that builds real parts from the config.

A dry run is decided here too: the same agent, with the parts that act swapped for the ones
in dry_run.py that only say what they would do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spotguard.agent import Agent, HookRunnerLike, Parts, WebhookLike
from spotguard.clock import Clock, SystemClock
from spotguard.config import Config
from spotguard.dry_run import DryHibernator, DryHookRunner, DryImageSize, DryReclaimer, DryWebhook
from spotguard.estimator import ImageEstimator
from spotguard.fleet.publisher import FleetReporter
from spotguard.hooks import HookRunner
from spotguard.hostfs import HostFS
from spotguard.hostlock import AGENT, HostLock
from spotguard.image_size import ImageSizeControl
from spotguard.imds import ImdsClient
from spotguard.monitors import InstanceFacts, default_monitors, fetch_facts
from spotguard.prediction import SwapRate
from spotguard.reclaim.api import Reclaimer
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.exclusive import ExclusiveReclaimer, agent_policy
from spotguard.reclaim.writer import FileWriter
from spotguard.signals.host import HostSignals
from spotguard.signals.workload import WorkloadActivity, WorkloadCgroups, WorkloadPressure
from spotguard.state import StateFile
from spotguard.trigger import Hibernator, make_hibernator


def _host_signals(config: Config, fs: HostFS) -> HostSignals:
    """Idle is everyone's but ours: every cgroup outside the agent's own branch, their CPU and
    their PSI, which leave out our own reclaim's work and stalls."""
    cgroups = WorkloadCgroups(fs, config.reclaim.cgroup_root)
    return HostSignals(fs, WorkloadActivity(cgroups, fs), WorkloadPressure(cgroups, fs))


def host_fs(config: Config) -> HostFS:
    return HostFS(Path(config.agent.root))


def state_dir(config: Config) -> Path:
    """Beside the state file: the v1 backend keeps its limit journal there."""
    return Path(config.agent.state_file).parent


class HibernatorFactory:
    """EC2 mode needs the instance id and region, known only once the metadata service answers."""

    def __init__(self, config: Config, fs: HostFS) -> None:
        self._config = config
        self._fs = fs

    def __call__(self, facts: InstanceFacts | None) -> Hibernator:
        hibernate = self._config.hibernate
        return make_hibernator(
            hibernate.mode,
            fs=self._fs,
            region=hibernate.region or (facts.region if facts else ""),
            instance_id=facts.instance_id if facts else "",
            local_command=hibernate.local_command,
            imds_url=self._config.imds.url,
        )


def agent_reclaimer(inner: Reclaimer, config: Config, clock: Clock) -> Reclaimer:
    """One reclaim at a time per host: the agent shares the lock with `spotguard reclaim`."""
    lock = HostLock(state_dir(config))
    return ExclusiveReclaimer(inner, lock, clock, role=AGENT, policy=agent_policy)


def image_size_control(config: Config, fs: HostFS) -> ImageSizeControl:
    """Journalled in the state dir; a value a dead agent left lowered is put back now."""
    control = ImageSizeControl(fs, state_dir(config))
    control.recover()
    return control


class DryHibernatorFactory:
    """What the configured mode would issue, in words, for the instance once it is known."""

    def __init__(self, config: Config) -> None:
        self._hibernate = config.hibernate

    def __call__(self, facts: InstanceFacts | None) -> Hibernator:
        mode = self._hibernate.mode
        if mode == "ec2":
            instance = facts.instance_id if facts else "this instance"
            region = self._hibernate.region or (facts.region if facts else "") or "?"
            would = f"call EC2 StopInstances(Hibernate=True) on {instance} in {region}"
        elif mode == "local":
            would = f"run {' '.join(self._hibernate.local_command)}"
        else:
            would = "issue nothing (hibernate.mode = none)"
        return DryHibernator(mode, would)


@dataclass(frozen=True, slots=True)
class _Acting:
    """The parts with effects on the host, EC2 or the outside world."""

    reclaimer: Reclaimer
    hibernator_for: Callable[[InstanceFacts | None], Hibernator]
    hooks: HookRunnerLike
    image_size: ImageSizeControl
    webhook: WebhookLike | None


def _real(
    config: Config, fs: HostFS, clock: Clock, kernel: FileWriter | None, swap_rate: SwapRate
) -> _Acting:
    agent = config.agent
    return _Acting(
        reclaimer=agent_reclaimer(
            StagedReclaimer(
                fs,
                config.reclaim,
                clock=clock,
                state_dir=state_dir(config),
                writer=kernel,
                swap_rate=swap_rate,
            ),
            config,
            clock,
        ),
        hibernator_for=HibernatorFactory(config, fs),
        hooks=HookRunner(Path(agent.hook_dir), agent.hook_timeout, clock=clock),
        image_size=image_size_control(config, fs),
        webhook=_webhook(config, clock, dry=False),
    )


def _webhook(config: Config, clock: Clock, *, dry: bool) -> WebhookLike | None:
    """The webhook, where one is configured: only then are notify and requests loaded (about
    4.5 MiB of an idle agent's RSS)."""
    agent = config.agent
    if not agent.webhook_url:
        return None
    from spotguard.notify import Webhook, log_host  # noqa: PLC0415

    if dry:
        return DryWebhook(log_host(agent.webhook_url))
    return Webhook(
        agent.webhook_url,
        agent.webhook_attempts,
        clock=clock,
        allow_link_local=agent.webhook_allow_link_local,
    )


def _dry(config: Config, fs: HostFS, clock: Clock) -> _Acting:
    agent = config.agent
    return _Acting(
        reclaimer=DryReclaimer(fs, config.reclaim),
        hibernator_for=DryHibernatorFactory(config),
        hooks=DryHookRunner(HookRunner(Path(agent.hook_dir), agent.hook_timeout, clock=clock)),
        image_size=DryImageSize(fs),
        webhook=_webhook(config, clock, dry=True),
    )


def build_agent(
    config: Config,
    clock: Clock | None = None,
    *,
    fs: HostFS | None = None,
    kernel: FileWriter | None = None,
    dry_run: bool = False,
) -> Agent:
    """The real agent. `kernel` replaces the cgroup file writer: only `simulate` passes one.
    `dry_run`: nothing reaches a cgroup, /sys/power, EC2, a hook or the webhook (dry_run.py)."""
    clock = clock or SystemClock()
    fs = fs or host_fs(config)
    facts_client = ImdsClient(config.imds, clock=clock)
    # what our own swap writes reach: the engine measures it, the estimator predicts with it
    swap_rate = SwapRate()
    acting = _dry(config, fs, clock) if dry_run else _real(config, fs, clock, kernel, swap_rate)
    parts = Parts(
        clock=clock,
        monitors=default_monitors(lambda: ImdsClient(config.imds, clock=clock), clock),
        fetch_facts=lambda: fetch_facts(facts_client),
        host=_host_signals(config, fs),
        estimator=ImageEstimator(fs, config.hibernate, swap_rate=swap_rate),
        reclaimer=acting.reclaimer,
        hibernator_for=acting.hibernator_for,
        hooks=acting.hooks,
        state_file=StateFile(config.agent.state_file),
        image_size=acting.image_size,
        webhook=acting.webhook,
        fleet=None if dry_run else fleet_reporter(config, clock),
    )
    return Agent(config, parts)


def fleet_reporter(config: Config, clock: Clock) -> FleetReporter | None:
    """Only with `[fleet] event_bus` set: publishing decisions is opt-in."""
    fleet = config.fleet
    if not fleet.event_bus:
        return None
    return FleetReporter(
        fleet.event_bus,
        clock=clock,
        fixed_overhead_s=config.hibernate.fixed_overhead,
        region=fleet.region or config.hibernate.region,
        queue_size=fleet.queue_size,
        timeout_s=fleet.timeout,
    )
