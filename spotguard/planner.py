"""The planner decides, never acts: state, an observation and config in; state, decisions out.

No I/O and no sleeping here, so every rule below is tested with plain values. The agent
gathers the observation, calls `plan`, and carries out the decisions in order.

The rules, in priority order:
1. the kernel counted time asleep since the last tick (CLOCK_BOOTTIME - CLOCK_MONOTONIC; the
   sleep hook's SIGUSR1 is a second witness, enough on its own only where the kernel cannot
   count): we resumed;
2. a spot notice with action `hibernate`: EC2 is hibernating us now, only the short
   pre-hibernate hooks may run;
3. a spot notice with action `stop`/`terminate`: reclaim hard, but only as long as the predicted
   hibernation still ends before the deadline with a margin; hibernate once the image is small
   or time is up, whichever comes first, and only into swap that can hold it;
4. a rebalance recommendation or a scheduled stop: one deep reclaim, to be ready;
5. idle long enough: a light reclaim of background cgroups.

An interruption is one event (events.py), so each of these happens once per interruption; the
side reports (on-notice hooks, webhook) come after the decision they accompany.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from spotguard.config import Config
from spotguard.estimator import ImageEstimate
from spotguard.events import Event, EventKind
from spotguard.monitors import InstanceFacts
from spotguard.prediction import DROP_BYTES_PER_S
from spotguard.reclaim.api import DROP_GRACE_S, Intensity, ReclaimRequest, ReclaimResult
from spotguard.signals import HostSample
from spotguard.trigger import TriggerResult

# Scheduled-event codes after which the instance is gone or stopped: worth getting ready for.
STOPPING_CODES = frozenset({"instance-stop", "instance-retirement", "instance-terminate"})
MIN_SMALL_SLACK = 64 << 20  # a floor of a few MB would make "small" unreachable
RAISED_HEADROOM = 1.1  # image_size raised to this much of saveable (planner._raised_image)
SETTLE_DROP_FACTOR = 3.0  # x the swap-cache drop's predicted time: what a settling cancel allows
SIGNALLED_SLEEP_S = 1.0  # with the sleep hook's SIGUSR1, this much kernel-counted sleep will do
HANDLED_KEPT = 16
SAME_BOOT_S = 30.0  # the wall clock at boot, as a previous run saw it: further off, another boot
FALLBACK_WARNING_S = 120.0  # a notice without a usable time: EC2's two minutes


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
    slept: float | None = None  # the kernel's count of seconds asleep since boot (Clock.slept)


@dataclass(frozen=True, slots=True)
class PlannerState:
    phase: Phase = Phase.ARMED
    slept: float | None = None  # Observation.slept at the previous tick
    idle_since: float | None = None  # monotonic
    last_light_end: float | None = None  # monotonic
    light_cut_short: int = 0  # light runs in a row stopped by pressure or a busy lock
    prepared_for: str = ""  # id of the event the deep reclaim ran for
    notice_id: str = ""
    emergency_reclaim_done: bool = False
    handled: tuple[str, ...] = ()  # notices already slept through: a stale one must not repeat
    issued_for: str = ""  # the notice a hibernation was decided for: never a second one
    reason: str = ""  # why the phase is what it is, for `spotguard status`


# Decisions: what the agent is told to do, in order.
@dataclass(frozen=True, slots=True)
class StartReclaim:
    request: ReclaimRequest


@dataclass(frozen=True, slots=True)
class CancelReclaim:
    reason: str
    grace_s: float = DROP_GRACE_S  # for a cancelled emergency's swap-cache drop (api.Cancel)


@dataclass(frozen=True, slots=True)
class RunHooks:
    kind: str  # pre-reclaim | pre-hibernate | post-resume | on-notice | graceful
    event: Event | None
    budget_s: float | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    what: str  # notice | hibernating | at-risk | graceful
    event: Event | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Hibernate:
    event: Event
    reason: str  # image-small | deadline | reclaim-exhausted
    image_size_bytes: int | None = None  # set /sys/power/image_size to this first
    estimate: ImageEstimate | None = None  # what the decision stands on, for its log line


@dataclass(frozen=True, slots=True)
class Graceful:
    event: Event | None
    reason: str


@dataclass(frozen=True, slots=True)
class Resumed:
    slept_s: float


@dataclass(frozen=True, slots=True)
class AtRisk:
    """The predicted hibernation cannot end before the deadline: say so, then still try."""

    event: Event
    predicted_s: float
    seconds_left: float


@dataclass(frozen=True, slots=True)
class Ec2Hibernating:
    """A notice with action `hibernate`: what spotguard does about it, for the log."""

    event: Event
    cancelled: Intensity | None  # the reclaim stopped for it, if one ran
    hook_budget_s: float


Decision = (
    StartReclaim
    | CancelReclaim
    | RunHooks
    | Notify
    | Hibernate
    | Graceful
    | Resumed
    | AtRisk
    | Ec2Hibernating
)


@dataclass(frozen=True, slots=True)
class Commitment:
    """What a previous run left in the state file that must outlive a crash and restart."""

    issued_for: str = ""  # PlannerState.issued_for
    issue: str = ""  # pending (the call was going out) | issued | refused
    handled: tuple[str, ...] = ()
    booted_at: float | None = None  # wall clock at boot (wall - monotonic - slept)
    slept: float | None = None


def restore(
    previous: Commitment, booted_at: float, slept: float | None, config: Config
) -> PlannerState:
    """The state to start from. Within the same instance life (same boot, no sleep since), a
    hibernation issued for a notice stays issued: a crash mid-emergency never leads to a
    second one; one that was going out when we died is decided again."""
    handled = previous.handled[-HANDLED_KEPT:]
    same_boot = (
        previous.booted_at is not None and abs(previous.booted_at - booted_at) <= SAME_BOOT_S
    )
    slept_since = (
        previous.slept is not None
        and slept is not None
        and slept - previous.slept >= config.agent.resume_jump
    )
    notice = previous.issued_for
    if not notice or not same_boot:
        return PlannerState(slept=slept, handled=handled)
    if slept_since:  # it was slept through: handled
        return PlannerState(slept=slept, handled=(*handled, notice)[-HANDLED_KEPT:])
    if previous.issue == "pending":
        return PlannerState(
            phase=Phase.EMERGENCY,
            slept=slept,
            notice_id=notice,
            handled=handled,
            reason="restarted while the hibernation was being issued: deciding again",
        )
    phase = Phase.GRACEFUL if previous.issue == "refused" else Phase.HIBERNATING
    return PlannerState(
        phase=phase,
        slept=slept,
        notice_id=notice,
        issued_for=notice,
        handled=handled,
        reason=f"restarted: hibernation already {previous.issue or 'issued'} for this notice",
    )


def plan(
    state: PlannerState, obs: Observation, config: Config
) -> tuple[PlannerState, list[Decision]]:
    slept = _slept_since(state, obs, config)
    if slept is not None:
        handled = (*state.handled, state.notice_id) if state.notice_id else state.handled
        fresh = PlannerState(
            slept=obs.slept,
            handled=handled[-HANDLED_KEPT:],
            prepared_for=state.prepared_for,  # a warning still served after resume is old
            reason="resumed",
        )
        return fresh, [Resumed(slept), RunHooks("post-resume", None)]

    state = dataclasses.replace(state, slept=obs.slept)
    state = _note_reclaim_end(state, obs)
    # Hooks and webhook hear of each new event once, after the decision it leads to.
    reports: list[Decision] = [
        step
        for event in obs.new_events
        if event.id not in state.handled
        for step in (RunHooks("on-notice", event), Notify("notice", event))
    ]
    state, decisions = _decide(state, obs, config)
    return state, [*decisions, *reports]


def _slept_since(state: PlannerState, obs: Observation, config: Config) -> float | None:
    """Seconds asleep since the previous tick, if we resumed; None if we did not.

    Only the kernel's count says so: a tick slowed by a busy host or a hanging metadata path
    grows wall and monotonic alike. The sleep hook's signal lowers the bar, never replaces the
    count, except where the kernel cannot count at all."""
    if obs.slept is None or state.slept is None:
        going_down = state.phase in (Phase.HIBERNATING, Phase.EC2_HIBERNATING)
        return 0.0 if obs.resume_signalled and going_down else None
    grew = obs.slept - state.slept
    if grew >= config.agent.resume_jump or (obs.resume_signalled and grew >= SIGNALLED_SLEEP_S):
        return grew
    return None


def _decide(
    state: PlannerState, obs: Observation, config: Config
) -> tuple[PlannerState, list[Decision]]:
    decisions: list[Decision] = []
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
        if obs.reclaim_running is Intensity.DEEP:
            return state, decisions  # the same deep reclaim, already running: let it finish
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
    if done.intensity is Intensity.EMERGENCY and done.stop_reason == "budget":
        # Its budget came from the prediction at its start; what it reclaimed makes the
        # hibernation quicker, so the time up to the new latest start is reclaim time too.
        return state
    if done.intensity is Intensity.EMERGENCY:
        return dataclasses.replace(state, emergency_reclaim_done=True)
    if done.intensity is Intensity.LIGHT and done.stop_reason == "budget":
        return state  # stopped by its budget, not the kernel: go on while the host stays idle
    if done.intensity is Intensity.LIGHT and done.stop_reason in ("pressure", "busy"):
        # Cut short, not done (2026-12-03, 2 GiB: stopped after 5 s on the foreground's PSI,
        # then 600 s of waiting let EC2's hibernation take a 577 MiB image): try again soon.
        cut = state.light_cut_short + 1
        return dataclasses.replace(state, last_light_end=obs.monotonic, light_cut_short=cut)
    if done.intensity is Intensity.LIGHT:
        return dataclasses.replace(state, last_light_end=obs.monotonic, light_cut_short=0)
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
    if state.phase in (Phase.EC2_HIBERNATING, Phase.HIBERNATING):
        return state, decisions  # said and done already, by EC2 or by us
    if obs.reclaim_running is not None:
        decisions.append(CancelReclaim("EC2 is hibernating the instance"))
    budget = config.hibernate.pre_hibernate_budget
    decisions += [
        Ec2Hibernating(notice, obs.reclaim_running, budget),
        RunHooks("pre-hibernate", notice, budget),
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
    if state.issued_for == notice.id:
        return state, decisions  # one hibernation per interruption, whatever happens after
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
    raised = _raised_image(estimate, config)
    if raised is not None:
        estimate = estimate.unshrunk(raised)  # the kernel's fast path: the plan stands on it

    deadline = notice.deadline if notice.deadline is not None else obs.wall + FALLBACK_WARNING_S
    hibernate_takes = estimate.predicted_write_s + config.hibernate.fixed_overhead
    latest_start = deadline - config.hibernate.deadline_margin - hibernate_takes
    small = _image_after_cancel(estimate, obs) <= small_image_bytes(estimate, config)
    if not state.emergency_reclaim_done:
        latest_start = max(latest_start, _last_chance(estimate, config, latest_start))

    late = obs.wall + config.agent.poll_interval >= latest_start
    go = ""
    if small:
        go = "image-small"
    elif late:
        go = "deadline"
    elif state.emergency_reclaim_done and obs.reclaim_running is None:
        go = "reclaim-exhausted"
    if go and config.hibernate.mode == "ec2" and obs.facts is None:
        # The facts are fetched in their own thread (a first notice can come before them):
        # wait for them while time allows, a late hibernation being better than none, but
        # leave the graceful path its deadline margin.
        if obs.wall < deadline - config.hibernate.deadline_margin:
            return state, decisions
        why = "instance facts unknown: the metadata service did not answer"
        return _graceful(state, obs, notice, why, decisions)
    if go and obs.reclaim_running is not None and not late:
        # Stop it and decide at the next tick, on the image as it then is.
        spare_s = latest_start - obs.wall - config.agent.poll_interval
        decisions.append(_settling_cancel(go, estimate, spare_s))
        return dataclasses.replace(state, reason=f"settling: {go}"), decisions
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
        target = raised or _tightened_image(estimate, config, go, latest_start - obs.wall)
        decisions += [
            RunHooks("pre-hibernate", notice, config.hibernate.pre_hibernate_budget),
            Hibernate(notice, go, target, estimate),
        ]
        seconds_left = deadline - obs.wall
        decisions.append(Notify("hibernating", notice, go))
        if hibernate_takes > seconds_left:
            decisions += [
                AtRisk(notice, hibernate_takes, seconds_left),
                Notify(
                    "at-risk",
                    notice,
                    f"predicted hibernation {hibernate_takes:.1f} s, {seconds_left:.1f} s left:"
                    " trying anyway",
                ),
            ]
        state = dataclasses.replace(state, phase=Phase.HIBERNATING, issued_for=notice.id, reason=go)
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


def _image_after_cancel(estimate: ImageEstimate, obs: Observation) -> int:
    """The image once a running emergency is cancelled: without the swap cache it then drops,
    where the image holds it (no kernel shrink, which would drop it anyway). On 2026-12-02 it
    held 1.7-3.1 GB of an emergency's 2.2-3.6 GB saveable at image_size=0."""
    if obs.reclaim_running is not Intensity.EMERGENCY or estimate.shrink_bytes:
        return estimate.expected_bytes
    return max(estimate.expected_bytes - estimate.swap_cached_bytes, estimate.floor_bytes)


def _settling_cancel(go: str, estimate: ImageEstimate, spare_s: float) -> CancelReclaim:
    """A cancelled emergency drops the swap cache it left: given the time it needs, out of
    what is spare before the latest start (issue 11: 1.7 of 3.1 GB were left after the 1 s it
    had, and went into the image)."""
    drop_s = SETTLE_DROP_FACTOR * estimate.swap_cached_bytes / DROP_BYTES_PER_S
    return CancelReclaim(f"hibernating next: {go}", max(min(spare_s, drop_s), DROP_GRACE_S))


def _last_chance(estimate: ImageEstimate, config: Config, latest_start: float) -> float:
    """The latest start for a small image, as long as reclaiming to one (the anonymous memory
    not yet in swap, at the rate our reclaim swaps here; then the clean pages, dropped without
    I/O) and hibernating it ends sooner than hibernating now; else `latest_start`. Judged
    afresh at every tick, and the only rule for going past the plain deadline: on 2026-12-02's
    slow host our swap writes left 60 % of what they swapped in swap cache, so 0.3 GB of anon
    stood between a 3.8 GB image (139 s) and a 0.5 GB one, and a rule that weighed the next
    256 MB of reclaim alone hibernated the large one with 65 s left."""
    small = small_image_bytes(estimate, config)
    per_byte = estimate.seconds_per_image_byte or 1 / max(estimate.bandwidth_bytes_per_s, 1)
    small_s = small * per_byte
    to_swap = max(estimate.saveable_bytes - estimate.clean_bytes - small, 0)
    swap_rate = estimate.swap_rate_bytes_per_s or estimate.bandwidth_bytes_per_s
    reclaim_s = to_swap / max(swap_rate, 1) + estimate.clean_bytes / DROP_BYTES_PER_S
    if reclaim_s + small_s >= estimate.predicted_write_s:
        return latest_start
    return latest_start + estimate.predicted_write_s - small_s


def _raised_image(estimate: ImageEstimate, config: Config) -> int | None:
    """/sys/power/image_size raised to hold all of saveable, if anything: when the kernel would
    shrink the image inside the window and that shrink is predicted to take longer than writing
    what it would shrink away. Below saveable the kernel allocates all of memory but its target
    first: at image_size=0 and 8 GiB under TCG that took 24-109 s with only ~0.5 GiB left to
    save (issue 11), where writing the 0.5 GiB takes about 3 s. Judged on time alone, now
    that the whole image is predicted at the slowest write rate known (a 3.8 GB one took
    137 s on a slow host: 143 s predicted so, 80 s before)."""
    hibernate = config.hibernate
    if not hibernate.raise_image_size or hibernate.mode == "none" or estimate.shrink_bytes == 0:
        return None
    if estimate.unshrunk_shrink_s + estimate.unshrunk_write_s >= estimate.predicted_write_s:
        return None
    if estimate.swap_free_bytes < estimate.saveable_bytes * hibernate.swap_margin:
        return None
    # Saveable grows a little between this decision and the kernel's count (hooks, the
    # hibernation call itself); past the raised value the kernel would shrink after all. Above
    # its own cap (about half of memory) the kernel shrinks whatever image_size says.
    raised = int(estimate.saveable_bytes * RAISED_HEADROOM)
    if raised > estimate.max_image_bytes or raised <= estimate.image_size_limit:
        return None
    return raised


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
    """Mode `none` is a dry run of the EC2 path: it says what EC2 would refuse, where it can.
    Not served (None, as on AWS's metadata mock) is not a refusal: EC2 decides (README)."""
    mode = config.hibernate.mode
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
    return last is None or obs.monotonic - last >= _light_wait(state.light_cut_short, config)


def _light_wait(cut_short: int, config: Config) -> float:
    """Seconds between light runs: `repeat_after` after one that ran its course; after one cut
    short, `retry_after`, doubled for each such run in a row (PSI's 10-s average decays slowly,
    and a run that stops again at once is not worth starting every tick), up to `repeat_after`."""
    reclaim = config.reclaim
    if cut_short == 0:
        return reclaim.repeat_after
    return min(reclaim.repeat_after, reclaim.retry_after * (1 << min(cut_short - 1, 32)))
