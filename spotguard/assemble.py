"""The composition root: the one place that builds real parts from the config."""

from __future__ import annotations

from pathlib import Path

from spotguard.agent import Agent, Parts
from spotguard.clock import Clock, SystemClock
from spotguard.config import Config
from spotguard.estimator import ImageEstimator
from spotguard.hooks import HookRunner
from spotguard.hostfs import HostFS
from spotguard.image_size import ImageSizeControl
from spotguard.imds import ImdsClient
from spotguard.monitors import InstanceFacts, default_monitors, fetch_facts
from spotguard.notify import Webhook
from spotguard.reclaim.engine import StagedReclaimer
from spotguard.reclaim.writer import FileWriter
from spotguard.signals.host import HostSignals
from spotguard.signals.workload import WorkloadActivity, WorkloadCgroups, WorkloadPressure
from spotguard.state import StateFile
from spotguard.trigger import Hibernator, make_hibernator


def _host_signals(config: Config, fs: HostFS) -> HostSignals:
    """Idle is the workload's: the cgroups reclaim knows of (or all of them but ours), their CPU
    and their PSI, which leaves out our own reclaim's stalls."""
    reclaim = config.reclaim
    cgroups = WorkloadCgroups(fs, reclaim.cgroup_root, (*reclaim.background, *reclaim.protected))
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
        )


def build_agent(
    config: Config,
    clock: Clock | None = None,
    *,
    fs: HostFS | None = None,
    kernel: FileWriter | None = None,
) -> Agent:
    """The real agent. `kernel` replaces the cgroup file writer: only `simulate` passes one."""
    clock = clock or SystemClock()
    fs = fs or host_fs(config)
    client = ImdsClient(config.imds, clock=clock)
    webhook = (
        Webhook(config.agent.webhook_url, config.agent.webhook_attempts, clock=clock)
        if config.agent.webhook_url
        else None
    )
    reclaimer = StagedReclaimer(
        fs, config.reclaim, clock=clock, state_dir=state_dir(config), writer=kernel
    )
    parts = Parts(
        clock=clock,
        monitors=default_monitors(client),
        fetch_facts=lambda: fetch_facts(client),
        host=_host_signals(config, fs),
        estimator=ImageEstimator(fs, config.hibernate, swap_rate=reclaimer.swap_rate),
        reclaimer=reclaimer,
        hibernator_for=HibernatorFactory(config, fs),
        hooks=HookRunner(Path(config.agent.hook_dir), config.agent.hook_timeout, clock=clock),
        state_file=StateFile(config.agent.state_file),
        image_size=ImageSizeControl(fs),
        webhook=webhook,
    )
    return Agent(config, parts)
