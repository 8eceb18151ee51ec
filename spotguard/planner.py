"""The planner decides, never acts: state, an observation and config in; state, decisions out.

No I/O and no sleeping here, so every rule below is tested with plain values. The agent
gathers the observation, calls `plan`, and carries out the decisions in order.

The rules, in priority order:
1. the wall clock jumped ahead of the monotonic clock (or the sleep hook said so): we resumed;
2. a spot notice with action `hibernate`: EC2 is hibernating us now, only the short
   pre-hibernate hooks may run;
3. a spot notice with action `stop`/`terminate`: reclaim hard, but only as long as the predicted
   hibernation still ends before the deadline with a margin; hibernate once the image is small
   or time is up, whichever comes first, and only into swap that can hold it;
4. a rebalance recommendation or a scheduled stop: one deep reclaim, to be ready;
5. idle long enough: a light reclaim of background cgroups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from spotguard.config import Config
from spotguard.estimator import ImageEstimate
from spotguard.events import Event, EventKind
from spotguard.monitors import InstanceFacts
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult
from spotguard.signals import HostSample
from spotguard.trigger import TriggerResult

# Scheduled-event codes after which the instance is gone or stopped: worth getting ready for.
STOPPING_CODES = frozenset({"instance-stop", "instance-retirement", "instance-terminate"})
MIN_SMALL_SLACK = 64 << 20  # a floor of a few MB would make "small" unreachable
RECLAIM_PAYS = 1.1  # hibernation seconds a second of reclaim must save to go past the deadline


class Phase(StrEnum):
    ARMED = "armed"  # nothing announced
    PREPARING = "preparing"  # rebalance / scheduled stop seen: deep reclaim done or running
    EMERGENCY = "emergency"  # stop/terminate notice: reclaiming against the deadline
    HIBERNATING = "hibernating"  # our hibernation was issued; waiting to go down
    EC2_HIBERNATING = "ec2-hibernating"  # EC2 itself is hibernating us
    GRACEFUL = "graceful"  # hibernation impossible: hooks ran, the instance will go down


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the planner may look at for one tick, gathered by the agent."""

    wall: float
    monotonic: float
    host: HostSample | None = None
    events: tuple[Event, ...] = ()  # what the metadata service announces right now
    new_events: tuple[Event, ...] = ()  # the ones never seen before
    facts: InstanceFacts | None = None
    estimate: ImageEstimate | None = None
    estimate_error: str = ""
    reclaim_running: Intensity | None = None
    reclaim_finished: ReclaimResult | None = None  # finished since the previous tick
    trigger_result: TriggerResult | None = None  # of the hibernation issued last tick
    resume_signalled: bool = False  # the system-sleep hook sent SIGUSR1


@dataclass(frozen=True, slots=True)
class PlannerState:
    phase: Phase = Phase.ARMED
    clock_offset: float | None = None  # wall - monotonic at the previous tick
    idle_since: float | None = None  # monotonic
    last_light_end: float | None = None  # monotonic
    prepared_for: str = ""  # id of the event the deep reclaim ran for
    notice_id: str = ""
    emergency_reclaim_done: bool = False
    handled: tuple[str, ...] = ()  # notices already slept through: a stale one must not repeat
    reason: str = ""  # why the phase is what it is, for `spotguard status`


# Decisions: what the agent is told to do, in order.
@dataclass(frozen=True, slots=True)
class StartReclaim:
    request: ReclaimRequest


@dataclass(frozen=True, slots=True)
class CancelReclaim:
    reason: str


@dataclass(frozen=True, slots=True)
class RunHooks:
    kind: str  # pre-reclaim | pre-hibernate | post-resume | on-notice | graceful
    event: Event | None
    budget_s: float | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    what: str  # notice | hibernating | graceful | resumed
    event: Event | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Hibernate:
    event: Event
    reason: str  # image-small | deadline | reclaim-exhausted
    image_size_bytes: int | None = None  # lower /sys/power/image_size to this first


@dataclass(frozen=True, slots=True)
class Graceful:
    event: Event | None
    reason: str


@dataclass(frozen=True, slots=True)
class Resumed:
    slept_s: float


Decision = StartReclaim | CancelReclaim | RunHooks | Notify | Hibernate | Graceful | Resumed


def plan(
    state: PlannerState, obs: Observation, config: Config
) -> tuple[PlannerState, list[Decision]]:
    offset = obs.wall - obs.monotonic
    jumped = (
        state.clock_offset is not None and offset - state.clock_offset > config.agent.resume_jump
    )
    # The sleep hook's signal matters only while we were going down: after a resume the clock
    # jump already caught, it arrives again and must not reset what happened since.
    going_down = state.phase in (Phase.HIBERNATING, Phase.EC2_HIBERNATING)
    if jumped or (obs.resume_signalled and going_down):
        slept = offset - state.clock_offset if state.clock_offset is not None else 0.0
        handled = (*state.handled, state.notice_id) if state.notice_id else state.handled
        fresh = PlannerState(clock_offset=offset, handled=handled, reason="resumed")
        return fresh, [Resumed(max(slept, 0.0)), RunHooks("post-resume", None)]

    state = dataclasses.replace(state, clock_offset=offset)
    decisions: list[Decision] = []
    state = _note_reclaim_end(state, obs)
    decisions += [
        step
        for event in obs.new_events
        for step in (RunHooks("on-notice", event), Notify("notice", event))
    ]

    notice = _spot_notice(obs.events, state.handled)
    if notice is not None and notice.action == "hibernate":
        return _ec2_hibernating(state, obs, notice, config, decisions)
    if notice is not None:
        return _emergency(state, obs, notice, config, decisions)
    if state.phase in (Phase.HIBERNATING, Phase.EC2_HIBERNATING, Phase.GRACEFUL):
        return state, decisions  # the notice vanished mid-way; wait for resume or shutdown

    state = _track_idle(state, obs, config)
    warning = _warning(obs.events)
    if warning is not None and state.prepared_for != warning.id:
        state = dataclasses.replace(
            state, phase=Phase.PREPARING, prepared_for=warning.id, reason=warning.kind.value
        )
        if obs.reclaim_running is not None:
            decisions.append(CancelReclaim("deep reclaim replaces it"))
        deep = ReclaimRequest(Intensity.DEEP, config.reclaim.deep_budget)
        return state, [*decisions, RunHooks("pre-reclaim", warning), StartReclaim(deep)]

    if obs.reclaim_running is None and _idle_long_enough(state, obs, config):
        light = ReclaimRequest(Intensity.LIGHT, config.reclaim.light_budget)
        state = dataclasses.replace(state, reason="idle")
        decisions += [RunHooks("pre-reclaim", None), StartReclaim(light)]
    return state, decisions


def _note_reclaim_end(state: PlannerState, obs: Observation) -> PlannerState:
    done = obs.reclaim_finished
    if done is None:
        return state
    if done.intensity is Intensity.EMERGENCY:
        return dataclasses.replace(state, emergency_reclaim_done=True)
    if done.intensity is Intensity.LIGHT and done.stop_reason == "budget":
        return state  # stopped by its budget, not the kernel: go on while the host stays idle
    if done.intensity is Intensity.LIGHT:
        return dataclasses.replace(state, last_light_end=obs.monotonic)
    return state


def _spot_notice(events: tuple[Event, ...], handled: tuple[str, ...]) -> Event | None:
    """The notice to act on; one we already hibernated for, still served after the resume
    (a stale metadata answer), is not a reason to hibernate again."""
    spot = EventKind.SPOT_INTERRUPTION
    return next((e for e in events if e.kind is spot and e.id not in handled), None)


def _warning(events: tuple[Event, ...]) -> Event | None:
    """A sign that the instance may go soon, without a 2-minute notice yet."""
    for event in events:
        if event.kind is EventKind.REBALANCE:
            return event
        if event.kind is EventKind.SCHEDULED and event.action in STOPPING_CODES:
            return event
        if event.kind is EventKind.ASG_LIFECYCLE:  # the monitor reports terminating states only
            return event
    return None


def _ec2_hibernating(
    state: PlannerState,
    obs: Observation,
    notice: Event,
    config: Config,
    decisions: list[Decision],
) -> tuple[PlannerState, list[Decision]]:
    """EC2 gives no warning for `hibernate`: stop our own work and let it proceed."""
    if state.phase is Phase.EC2_HIBERNATING:
        return state, decisions
    if obs.reclaim_running is not None:
        decisions.append(CancelReclaim("EC2 is hibernating the instance"))
    decisions += [
        RunHooks("pre-hibernate", notice, config.hibernate.pre_hibernate_budget),
        Notify("hibernating", notice, "EC2 is hibernating the instance"),
    ]
    state = dataclasses.replace(
        state, phase=Phase.EC2_HIBERNATING, notice_id=notice.id, reason="EC2 hibernates"
    )
    return state, decisions


def _emergency(
    state: PlannerState,
    obs: Observation,
    notice: Event,
    config: Config,
    decisions: list[Decision],
) -> tuple[PlannerState, list[Decision]]:
    if state.phase in (Phase.HIBERNATING, Phase.GRACEFUL) and state.notice_id:
        return _after_trigger(state, obs, notice, decisions)
    if state.notice_id != notice.id:
        state = dataclasses.replace(
            state,
            phase=Phase.EMERGENCY,
            notice_id=notice.id,
            emergency_reclaim_done=False,
            reason=f"spot notice: {notice.action}",
        )

    impossible = _why_impossible(obs, config)  # also says why when there is no estimate
    estimate = obs.estimate
    if impossible or estimate is None:
        return _graceful(state, obs, notice, impossible, decisions)

    deadline = notice.deadline if notice.deadline is not None else obs.wall + 120.0
    hibernate_takes = estimate.predicted_write_s + config.hibernate.fixed_overhead
    latest_start = deadline - config.hibernate.deadline_margin - hibernate_takes
    small = estimate.expected_bytes <= small_image_bytes(estimate, config)
    if estimate.reclaim_gain > RECLAIM_PAYS and not state.emergency_reclaim_done:
        # Our reclaim shortens the hibernation by more than the time it takes (the kernel's own
        # shrink is slower): go on until it no longer does, or until only a small image fits.
        per_byte = estimate.seconds_per_image_byte or 1 / max(estimate.bandwidth_bytes_per_s, 1)
        small_s = small_image_bytes(estimate, config) * per_byte
        last_chance = latest_start + estimate.predicted_write_s - small_s
        latest_start = max(latest_start, last_chance)

    go = ""
    if small:
        go = "image-small"
    elif obs.wall + config.agent.poll_interval >= latest_start:
        go = "deadline"
    elif state.emergency_reclaim_done and obs.reclaim_running is None:
        go = "reclaim-exhausted"
    if go:
        if not estimate.fits(config.hibernate.swap_margin):
            need = int(estimate.expected_bytes * config.hibernate.swap_margin)
            why = (
                f"swap too small for the image: {estimate.expected_bytes} bytes x "
                f"{config.hibernate.swap_margin} margin needs {need}, "
                f"{estimate.swap_free_bytes} free"
            )
            return _graceful(state, obs, notice, why, decisions)
        if obs.reclaim_running is not None:
            decisions.append(CancelReclaim(f"hibernating: {go}"))
        target = _tightened_image(estimate, config, go, latest_start - obs.wall)
        decisions += [
            RunHooks("pre-hibernate", notice, config.hibernate.pre_hibernate_budget),
            Hibernate(notice, go, target),
            Notify("hibernating", notice, go),
        ]
        state = dataclasses.replace(state, phase=Phase.HIBERNATING, reason=go)
        return state, decisions

    if obs.reclaim_running is None and not state.emergency_reclaim_done:
        # The image is min(saveable, image_size): only what leaves `saveable` shrinks it.
        target = estimate.saveable_bytes - small_image_bytes(estimate, config)
        budget = max(latest_start - obs.wall - config.agent.poll_interval, 0.0)
        request = ReclaimRequest(Intensity.EMERGENCY, budget, target_bytes=max(target, 0))
        decisions.append(StartReclaim(request))
    elif obs.reclaim_running not in (None, Intensity.EMERGENCY):
        decisions.append(CancelReclaim("a spot notice needs emergency reclaim"))
    return state, decisions


def _tightened_image(
    estimate: ImageEstimate, config: Config, go: str, spare_s: float
) -> int | None:
    """What /sys/power/image_size should be lowered to, if anything: by the clean pages our
    reclaim left behind (page cache, swap cache), which the kernel drops without writing
    anything, never into anonymous memory, whose shrinking inside the hibernation window is
    the slow step reclaiming ahead of time exists to avoid."""
    if not config.hibernate.tune_image_size or config.hibernate.mode == "none" or go == "deadline":
        return None
    target = max(
        small_image_bytes(estimate, config), estimate.expected_bytes - estimate.clean_bytes
    )
    worst_case_s = (estimate.expected_bytes - target) / config.hibernate.swap_bandwidth
    if target >= estimate.expected_bytes or worst_case_s > spare_s:
        return None
    return target


def _after_trigger(
    state: PlannerState, obs: Observation, notice: Event, decisions: list[Decision]
) -> tuple[PlannerState, list[Decision]]:
    """At most one hibernation per notice; a refused one falls back to the graceful path."""
    result = obs.trigger_result
    if state.phase is Phase.HIBERNATING and result is not None and not result.issued:
        return _graceful(state, obs, notice, f"hibernation refused: {result.reason}", decisions)
    return state, decisions


def _why_impossible(obs: Observation, config: Config) -> str:
    """Mode `none` is a dry run of the EC2 path: it says what EC2 would refuse, where it can."""
    mode = config.hibernate.mode
    if mode == "ec2" and obs.facts is None:
        return "instance facts unknown: the metadata service did not answer"
    if mode != "local" and obs.facts and obs.facts.hibernation_configured is False:
        return "hibernation is not configured on this instance (HibernationOptions.Configured)"
    if obs.estimate is None:
        return f"cannot estimate the hibernation image: {obs.estimate_error or 'unknown error'}"
    return ""


def _graceful(
    state: PlannerState,
    obs: Observation,
    notice: Event,
    reason: str,
    decisions: list[Decision],
) -> tuple[PlannerState, list[Decision]]:
    if obs.reclaim_running is not None:
        decisions.append(CancelReclaim("graceful path"))
    decisions += [
        Graceful(notice, reason),
        RunHooks("graceful", notice),
        Notify("graceful", notice, reason),
    ]
    return dataclasses.replace(state, phase=Phase.GRACEFUL, reason=reason), decisions


def small_image_bytes(estimate: ImageEstimate, config: Config) -> int:
    """The image size worth hibernating into at once: configured, or 1.2x the kernel's floor."""
    if config.hibernate.small_image:
        return int(config.hibernate.small_image)
    return max(int(estimate.floor_bytes * 1.2), estimate.floor_bytes + MIN_SMALL_SLACK)


def is_idle(sample: HostSample | None, config: Config) -> bool:
    """The RFC's test (least idle CPU >= 95 %) or, where the workload cgroups tell, their own
    CPU; plus quiet PSI, I/O and load where known."""
    if sample is None or sample.cpu_min_idle_percent is None:
        return False
    idle = config.idle
    pressure = sample.pressure
    workload = sample.workload_cpu_percent
    return (
        (
            sample.cpu_min_idle_percent >= idle.cpu_idle_percent
            or (workload is not None and workload <= idle.max_workload_cpu_percent)
        )
        and (pressure.memory_some is None or pressure.memory_some <= idle.max_psi_memory)
        and (pressure.io_some is None or pressure.io_some <= idle.max_psi_io)
        and (sample.io_bytes_per_s is None or sample.io_bytes_per_s <= idle.max_io_bytes_per_s)
        and (idle.max_load == 0 or sample.load1 is None or sample.load1 <= idle.max_load)
    )


def _track_idle(state: PlannerState, obs: Observation, config: Config) -> PlannerState:
    if obs.reclaim_running is not None:
        return state  # our own reclaim is busy work; it must not count against idleness
    if not is_idle(obs.host, config):
        return dataclasses.replace(state, idle_since=None)
    if state.idle_since is None:
        return dataclasses.replace(state, idle_since=obs.monotonic)
    return state


def _idle_long_enough(state: PlannerState, obs: Observation, config: Config) -> bool:
    if state.idle_since is None or obs.monotonic - state.idle_since < config.idle.duration:
        return False
    last = state.last_light_end
    return last is None or obs.monotonic - last >= config.reclaim.repeat_after
