"""The agent: `tick` is one control step (observe, plan, act); `run` is the loop around it.

Data flows one way: sources (cadence.py, each in its own thread) and host signals →
observation → planner → decisions → actions. Every part that touches the world comes in
through `Parts`, so tests can hand in real servers on 127.0.0.1, fake /proc trees and a
FakeClock. A decision outlives its side effects: each action is guarded, and the hibernation
is acted on before the reports that accompany it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from spotguard.cadence import FACTS, Cadence, Pace, Reading
from spotguard.clock import Clock
from spotguard.config import Config
from spotguard.estimator import Estimator, ImageEstimate
from spotguard.events import Change, Event, EventKind, EventStore
from spotguard.fleet.publisher import FleetReporter
from spotguard.image_size import ImageSizeControl
from spotguard.metrics import Metrics
from spotguard.monitors import HIBERNATION_UNKNOWN, InstanceFacts, Monitor
from spotguard.planner import (
    AtRisk,
    CancelReclaim,
    Commitment,
    Decision,
    Ec2Hibernating,
    Graceful,
    Hibernate,
    Notify,
    Observation,
    Phase,
    PlannerState,
    Resumed,
    RunHooks,
    StartReclaim,
    plan,
    restore,
)
from spotguard.reclaim.api import (
    DROP_GRACE_S,
    Cancel,
    Intensity,
    Reclaimer,
    ReclaimRequest,
    ReclaimResult,
    StageResult,
)
from spotguard.sdnotify import SystemdNotifier
from spotguard.signals import HostSample
from spotguard.state import StateFile
from spotguard.trigger import Hibernator, TriggerResult

log = structlog.get_logger()

SHUTDOWN_S = 0.8  # SIGTERM ends the agent within a second, whatever it was doing
CANCEL_WAIT_S = 1.0  # a cancelled reclaim puts v1 limits back within a step (~20 ms)
# A `stop` set by a thread rather than a signal handler is seen this late at most (a signal
# wakes the main thread at once, see _wait_for_stop).
STOP_CHECK_S = 5.0  # longer than the signal tests allow: they show the wakeup fd works
DECIDING = (Phase.EMERGENCY, Phase.HIBERNATING, Phase.EC2_HIBERNATING, Phase.GRACEFUL)


class HookRunnerLike(Protocol):
    def run(
        self, kind: str, event_env: Mapping[str, str], budget_s: float | None = None
    ) -> Sequence[object]: ...


class WebhookLike(Protocol):
    def send(self, payload: Mapping[str, Any], deadline: float | None) -> bool: ...


class HostSignalsLike(Protocol):
    def sample(self, monotonic_now: float) -> HostSample: ...


@dataclass
class Parts:
    """What the agent touches. `hibernator_for` is late-bound: EC2 needs the instance's facts.

    Every monitor and `fetch_facts` is polled in a thread of its own, at the same time as the
    others: each needs a metadata client of its own (see monitors.default_monitors)."""

    clock: Clock
    monitors: Sequence[Monitor]
    fetch_facts: Callable[[], InstanceFacts]
    host: HostSignalsLike
    estimator: Estimator
    reclaimer: Reclaimer
    hibernator_for: Callable[[InstanceFacts | None], Hibernator]
    hooks: HookRunnerLike
    state_file: StateFile
    image_size: ImageSizeControl
    webhook: WebhookLike | None = None
    metrics: Metrics = field(default_factory=Metrics)
    systemd: SystemdNotifier = field(default_factory=SystemdNotifier)
    fleet: FleetReporter | None = None  # [fleet] event_bus: decisions to EventBridge


class Background:
    """Side work (hooks after the fact, the webhook, building the EC2 client) in daemon threads:
    nothing here may hold up a decision or a shutdown. The webhook's messages go down one
    lane, in the order they were decided."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lane: queue.Queue[Callable[[], object]] = queue.Queue()
        self._lane_thread: threading.Thread | None = None

    def submit(self, name: str, work: Callable[[], object]) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except Exception as exc:
                log.exception("background.failed", work=name)
                future.set_exception(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return future

    def in_order(self, work: Callable[[], object]) -> None:
        self._lane.put(work)
        if self._lane_thread is None:
            self._lane_thread = threading.Thread(target=self._drain, name="lane", daemon=True)
            self._lane_thread.start()

    def _drain(self) -> None:
        while True:
            work = self._lane.get()
            try:
                work()
            except Exception:
                log.exception("background.failed", work="lane")
            finally:
                self._lane.task_done()

    def join(self, until: float) -> None:
        """Wait for the work in flight until `until` (time.monotonic); what is left is dropped."""
        for thread in self._threads:
            thread.join(max(until - time.monotonic(), 0.0))
        while self._lane.unfinished_tasks and time.monotonic() < until:
            time.sleep(0.01)


class ReclaimWorker:
    """Runs one reclaim at a time in a thread, so the loop keeps deciding meanwhile."""

    def __init__(self, reclaimer: Reclaimer) -> None:
        self._reclaimer = reclaimer
        self._cancel = Cancel()
        self._thread: threading.Thread | None = None
        self._request: ReclaimRequest | None = None
        self._finished: ReclaimResult | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> Intensity | None:
        with self._lock:
            return self._request.intensity if self._request else None

    @property
    def cancelling(self) -> bool:
        """Asked to stop and not yet stopped (a large write ends at its next chance)."""
        return self.running is not None and self._cancel.is_set()

    def start(
        self,
        request: ReclaimRequest,
        progress: Callable[[StageResult], None],
        before: Callable[[], object] | None = None,
    ) -> bool:
        """False when one still runs. `before` (the pre-reclaim hooks) runs first, in the
        reclaim's thread: a slow hook delays its reclaim, never the loop."""
        with self._lock:
            if self._request is not None:
                return False
            self._request = request
        self._cancel = Cancel()
        self._thread = threading.Thread(
            target=self._work, args=(request, progress, before), name="reclaim", daemon=True
        )
        self._thread.start()
        return True

    def _work(
        self,
        request: ReclaimRequest,
        progress: Callable[[StageResult], None],
        before: Callable[[], object] | None,
    ) -> None:
        try:
            if before is not None:
                before()
            if self._cancel.is_set():
                result = ReclaimResult(request.intensity, 0, 0.0, "cancelled")
            else:
                result = self._reclaimer.reclaim(request, self._cancel, progress)
        except Exception as exc:  # a backend bug must not take the agent down
            log.exception("reclaim.failed", intensity=request.intensity.value)
            result = ReclaimResult(request.intensity, 0, 0.0, f"error: {exc}")
        with self._lock:
            self._finished = result
            self._request = None

    def cancel(self, wait_s: float = CANCEL_WAIT_S, grace_s: float = DROP_GRACE_S) -> None:
        """Stop the reclaim; the v1 backend restores the limits it lowered before it returns.
        `grace_s`: see Cancel."""
        self._cancel.stop(grace_s)
        if self._thread is not None:
            self._thread.join(wait_s)

    def take(self) -> tuple[Intensity | None, ReclaimResult | None]:
        """What runs now and what finished since the last call, read together: a reclaim
        ending between two separate reads would look neither running nor done, and the
        planner would start it again."""
        with self._lock:
            done, self._finished = self._finished, None
            return (self._request.intensity if self._request else None), done


class Agent:
    def __init__(self, config: Config, parts: Parts) -> None:
        self.config = config
        self.parts = parts
        self.store = EventStore()
        self.cadence = Cadence(config.agent, parts.monitors, parts.fetch_facts)
        self.facts: InstanceFacts | None = None
        self.host: HostSample | None = None
        self.estimate: ImageEstimate | None = None
        self.estimate_error = ""
        self.last_reclaim: ReclaimResult | None = None
        self.imds_failures = 0
        self.imds_error = ""
        self.resume_flag = threading.Event()
        self._worker = ReclaimWorker(parts.reclaimer)
        self._background = Background()
        self._trigger_result: TriggerResult | None = None
        self._issue = ""  # pending | issued | refused: the hibernation call for issued_for
        self._hibernator: Future[Hibernator] | None = None
        self._hibernator_facts: InstanceFacts | None = None
        self._pre_reclaim: Callable[[], object] | None = None
        self._next_look = 0.0
        self._looked = False
        self._last_tick = parts.clock.monotonic()
        self.state = self._restore()

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Ticks in a control thread; this thread only waits for `stop`, so a tick stuck in a
        hook or the EC2 call never keeps SIGTERM from ending the agent within a second."""
        log.info("agent.started", mode=self.config.hibernate.mode, imds=self.config.imds.url)
        self.parts.systemd.notify("READY=1", "STATUS=armed")
        log.info("agent.armed", after="start")
        self.cadence.start()
        control = threading.Thread(target=self._loop, args=(stop,), name="control", daemon=True)
        control.start()
        _wait_for_stop(stop)
        ends = time.monotonic() + SHUTDOWN_S
        self.cadence.stop()
        control.join(SHUTDOWN_S / 2)
        self.shutdown(ends)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop outlives any single bad step
                log.exception("agent.tick_failed")
            if not stop.is_set():
                self.cadence.inbox.wait(self._tick_every())

    def _tick_every(self) -> float:
        """Every poll while anything goes on; while calm, as often as the host is looked at
        (`_full_look`): the spot poll's empty answers then wait for the next tick, and an event
        wakes the loop at once (cadence), so a notice costs no more than before."""
        if self._pace() is Pace.CALM:
            return self.config.agent.slow_poll_interval
        return self.config.agent.poll_interval

    def resumed(self) -> None:
        """The system-sleep hook's SIGUSR1: look now, not at the next calm tick."""
        self.resume_flag.set()
        self.cadence.inbox.wake()

    def shutdown(self, ends: float | None = None) -> None:
        """Stop reclaim (the v1 backend restores limits on cancel) and leave a final state."""
        ends = ends if ends is not None else time.monotonic() + SHUTDOWN_S
        self.cadence.stop()
        self._worker.cancel(max(ends - time.monotonic(), 0.1))
        self._background.join(ends)
        if self.parts.fleet is not None:
            self.parts.fleet.close(max(ends - time.monotonic(), 0.0))
        self._write_state()
        log.info("agent.stopped", phase=self.state.phase.value)

    def tick(self) -> list[Decision]:
        """One control step: observe, plan, act. Returns the decisions, for tests and simulate."""
        self.cadence.start()  # at the first tick: tests tick without `run`
        obs = self._observe()
        self.state, decisions = plan(self.state, obs, self.config)
        self.cadence.set_pace(self._pace())
        for decision in decisions:
            self._act_guarded(decision)
        if obs.resume_signalled and not any(isinstance(d, Resumed) for d in decisions):
            log.info("resume.unconfirmed", why="SIGUSR1, but the kernel counted no sleep")
        self._report()
        return decisions

    def healthy(self) -> tuple[bool, str]:
        if self.imds_failures >= self.config.agent.unhealthy_after:
            return False, f"metadata service failed {self.imds_failures} polls: {self.imds_error}"
        stale = self.parts.clock.monotonic() - self._last_tick
        if stale > max(10 * self.config.agent.poll_interval, 30.0):
            return False, f"control loop stalled for {stale:.0f} s"
        return True, ""

    def _pace(self) -> Pace:
        if self.state.phase in DECIDING:
            return Pace.DECIDING
        if self.state.phase is not Phase.ARMED or self._worker.running or self.store.active():
            return Pace.BUSY
        return Pace.CALM

    # -- observe --------------------------------------------------------------------------
    def _observe(self) -> Observation:
        clock = self.parts.clock
        now_mono, slept = clock.monotonic(), clock.slept()
        new_events, changed = self._take_readings(self.cadence.inbox.take())
        full = self._looked = self._full_look(now_mono)
        if full and self.cadence.pace is not Pace.DECIDING:  # idleness no longer matters then
            self.host = self._safe("signals.failed", lambda: self.parts.host.sample(now_mono))
        running, finished = self._worker.take()  # before the estimate, which it changes
        if finished is not None:
            self.last_reclaim = finished
            self._log_reclaim_done(finished)
        if full or new_events or changed or finished:
            self._estimate()
        if any(e.kind is EventKind.SPOT_INTERRUPTION for e in self.store.active()):
            self._hibernator_ready()
        trigger_result, self._trigger_result = self._trigger_result, None
        resumed = self.resume_flag.is_set()
        self.resume_flag.clear()
        return Observation(
            wall=clock.wall(),
            monotonic=now_mono,
            host=self.host,
            events=self.store.active(),
            new_events=tuple(new_events),
            facts=self.facts,
            estimate=self.estimate,
            estimate_error=self.estimate_error,
            reclaim_running=running,
            reclaim_finished=finished,
            trigger_result=trigger_result,
            resume_signalled=resumed,
            slept=slept,
        )

    def _take_readings(self, readings: list[Reading]) -> tuple[list[Event], list[Change]]:
        new: list[Event] = []
        changed: list[Change] = []
        failed = 0
        for reading in readings:
            self.parts.metrics.observe_poll(reading.source, reading.took_s)
            if not reading.ok:
                failed += 1
                self.imds_error = reading.error
                continue
            if reading.source == FACTS:
                self._facts_known(reading.facts)
                continue
            update = self.store.update(reading.source, reading.events)
            new += update.new
            changed += update.changed
        for event in new:
            self._quietly(self._log_new, event)
        for change in changed:
            self._quietly(self._log_change, change)
        if failed:  # counted per poll: a calm tick takes several
            self.imds_failures += failed
        elif readings:
            self.imds_failures = 0
        return new, changed

    def _log_new(self, event: Event) -> None:
        self.parts.metrics.events.labels(event.kind.value).inc()
        log.info(
            "notice.received",
            kind=event.kind.value,
            id=event.id,
            action=event.action,
            deadline=_iso(event.deadline),
            seconds_left=self._seconds_left(event),
        )
        if self.parts.fleet is not None:
            self.parts.fleet.notice_seen(self.facts, event)

    def _log_change(self, change: Change) -> None:
        log.info(
            "notice.changed",
            kind=change.event.kind.value,
            id=change.event.id,
            what=change.what,
            announced=_iso(change.announced_deadline),
            announced_action=change.announced_action,
            deadline=_iso(change.event.deadline),
            action=change.event.action,
            seconds_left=self._seconds_left(change.event),
        )

    def _facts_known(self, facts: InstanceFacts | None) -> None:
        if facts is None:
            return
        first = self.facts is None
        self.facts = facts
        log.info("facts.known", **asdict(facts))
        if self.parts.fleet is not None:
            self.parts.fleet.known(facts)
        if first and facts.hibernation_configured is None:
            log.warning(
                "facts.hibernation_unknown", problem=f"hibernation/configured {HIBERNATION_UNKNOWN}"
            )

    def _full_look(self, now: float) -> bool:
        """Host signals and the image are looked at every tick while something goes on, and
        every `slow_poll_interval` while nothing does: an agent idling for days should cost
        next to nothing."""
        calm = self.cadence.pace is Pace.CALM and self._worker.running is None
        if calm and now < self._next_look:
            return False
        self._next_look = now + self.config.agent.slow_poll_interval
        return True

    def _estimate(self) -> None:
        try:
            self.estimate, self.estimate_error = self.parts.estimator.estimate(), ""
        except Exception as exc:
            self.estimate, self.estimate_error = None, str(exc)
            log.warning("estimate.failed", error=str(exc))

    def _safe(self, failure: str, read: Callable[[], HostSample]) -> HostSample | None:
        try:
            return read()
        except Exception as exc:
            log.warning(failure, error=str(exc))
            return None

    # -- act ------------------------------------------------------------------------------
    def _act_guarded(self, decision: Decision) -> None:
        """A failing action is logged and the next one still happens."""
        try:
            self._act(decision)
        except Exception:
            with contextlib.suppress(Exception):
                log.exception("agent.action_failed", decision=type(decision).__name__)

    def _act(self, decision: Decision) -> None:
        match decision:
            case StartReclaim(request):
                before, self._pre_reclaim = self._pre_reclaim, None
                if not self._worker.start(request, self._log_stage, before):
                    log.warning("reclaim.not_started", intensity=request.intensity.value)
                    return
                log.info(
                    "reclaim.started",
                    intensity=request.intensity.value,
                    budget_s=round(request.budget_s, 1),
                    target_bytes=request.target_bytes,
                )
            case CancelReclaim(reason, grace_s):
                if not self._worker.cancelling:  # the planner asks again each tick until then
                    log.info("reclaim.cancelled", reason=reason, grace_s=round(grace_s, 1))
                self._worker.cancel(CANCEL_WAIT_S + grace_s, grace_s)
            case RunHooks(kind, event, budget):
                self._run_hooks(kind, event, budget)
            case Notify(what, event, reason):
                self._notify(what, event, reason)
            case Hibernate(event, reason, image_size, estimate):
                self._hibernate(event, reason, image_size, estimate or self.estimate)
            case Graceful(event, reason):
                self.parts.metrics.hibernations.labels("impossible").inc()
                log.warning(
                    "hibernate.unavailable", reason=reason, notice=event.id if event else None
                )
                if self.parts.fleet is not None:
                    self.parts.fleet.graceful(self.facts, event, reason)
            case AtRisk(event, predicted_s, seconds_left):
                log.warning(
                    "hibernate.at_risk",
                    notice=event.id,
                    predicted_s=round(predicted_s, 1),
                    seconds_left=round(seconds_left, 1),
                )
            case Ec2Hibernating(event, cancelled, budget):
                log.info(
                    "notice.ec2_hibernating",
                    notice=event.id,
                    cancelled=cancelled.value if cancelled else None,
                    hooks="pre-hibernate",
                    hook_budget_s=budget,
                    ours="none: EC2 hibernates the instance itself, now",
                )
            case Resumed(slept):
                log.info("hibernate.resumed", slept_s=round(slept, 1))
                if self.parts.fleet is not None:
                    self.parts.fleet.resumed(self.facts, slept)
                self.store.new_life()
                self.cadence.want_facts()
                self._hibernator = None
                self._issue = ""
                self.parts.image_size.restore()
                log.info("agent.armed", after="resume")

    def _run_hooks(self, kind: str, event: Event | None, budget: float | None) -> None:
        env = _event_env(event, self.state.reason)
        hooks = self.parts.hooks
        if kind == "pre-hibernate":
            hooks.run(kind, env, budget)  # must be done before the hibernation, within budget
        elif kind == "pre-reclaim":
            self._pre_reclaim = lambda: hooks.run(kind, env, budget)  # in the reclaim's thread
        else:
            self._background.submit(f"hooks-{kind}", lambda: hooks.run(kind, env, budget))

    def _notify(self, what: str, event: Event | None, reason: str) -> None:
        webhook = self.parts.webhook
        if webhook is None:
            return
        payload = {
            "what": what,
            "reason": reason,
            "instance_id": self.facts.instance_id if self.facts else "",
            "event": _event_dict(event),
            "phase": self.state.phase.value,
        }
        deadline = event.deadline if event is not None else None
        self._background.in_order(lambda: webhook.send(payload, deadline))

    def _hibernator_ready(self) -> Future[Hibernator]:
        """Built in the background as soon as a notice comes: boto3 takes a second and 20+ MiB
        to load, which an agent idling for days should not hold."""
        if self._hibernator is None or self._hibernator_facts != self.facts:
            facts = self._hibernator_facts = self.facts  # EC2 needs the instance id and region
            self._hibernator = self._background.submit(
                "hibernator", lambda: self.parts.hibernator_for(facts)
            )
        return self._hibernator

    def _hibernate(
        self, event: Event, reason: str, image_size: int | None, estimate: ImageEstimate | None
    ) -> None:
        """'Issued for this notice' is on disk before the call goes out, and the outcome right
        after: a restart never issues a second one (planner.restore). `estimate`: the one the
        planner decided on, for the log line (predicted vs measured)."""
        self._issue = "pending"
        self._write_state()
        mode = self.config.hibernate.mode
        try:
            hibernator = self._hibernator_ready().result()
            mode = hibernator.mode
            if image_size is not None:
                self.parts.image_size.set_to(image_size)
            result = hibernator.hibernate()
        except Exception as exc:  # the planner must still hear of it: refused, graceful path
            log.exception("hibernate.failed")
            result = TriggerResult(False, f"the hibernation call failed: {exc}", "AgentError")
        self._trigger_result = result
        self._issue = "issued" if result.issued else "refused"
        self._write_state()
        if not result.issued:
            self.parts.image_size.restore()
        fields = {
            "mode": mode,
            "notice": event.id,
            "why_now": reason,
            "image_bytes": estimate.expected_bytes if estimate else None,
            "image_size": image_size,
            **(estimate.prediction_fields() if estimate else {}),
            "seconds_left": self._seconds_left(event),
        }
        if result.issued:
            self.parts.metrics.hibernations.labels("issued").inc()
            log.info("hibernate.issued", **fields)
            if self.parts.fleet is not None:
                self.parts.fleet.hibernation_issued(
                    self.facts, event, reason, estimate, hibernator.mode
                )
        else:
            self.parts.metrics.hibernations.labels("refused").inc()
            log.warning("hibernate.refused", reason=result.reason, code=result.error_code, **fields)

    def _seconds_left(self, event: Event) -> float | None:
        if event.deadline is None:
            return None
        return round(event.deadline - self.parts.clock.wall(), 1)

    # -- state ----------------------------------------------------------------------------
    def _restore(self) -> PlannerState:
        """Pick up what a previous run of this instance life committed (planner.restore)."""
        clock = self.parts.clock
        slept = clock.slept()
        previous = Commitment()
        try:
            snapshot = self.parts.state_file.read()
        except (OSError, ValueError) as exc:
            log.warning("state.unreadable", path=str(self.parts.state_file.path), error=str(exc))
            snapshot = None
        if snapshot is not None:
            previous = _commitment(snapshot)
        state = restore(previous, _booted_at(clock, slept), slept, self.config)
        self.store.retire(state.handled)
        if state.notice_id:
            self.store.seed(EventKind.SPOT_INTERRUPTION, state.notice_id)
            self._issue = previous.issue if state.issued_for else ""
            log.info("agent.restored", notice=state.notice_id, phase=state.phase.value)
        return state

    # -- report ---------------------------------------------------------------------------
    def _log_stage(self, stage: StageResult) -> None:
        """The engine reports every step; the log keeps one line per finished stage."""
        if stage.stop_reason:
            log.info("reclaim.stage", **asdict(stage))

    def _log_reclaim_done(self, result: ReclaimResult) -> None:
        self.parts.metrics.reclaimed.labels(result.intensity.value).inc(result.reclaimed_bytes)
        self.parts.metrics.last_reclaim.set(result.reclaimed_bytes)
        log.info(
            "reclaim.done",
            intensity=result.intensity.value,
            reclaimed_bytes=result.reclaimed_bytes,
            duration_s=round(result.duration_s, 2),
            stop_reason=result.stop_reason,
            stages=len(result.stages),
        )
        if self.parts.fleet is not None:
            self.parts.fleet.reclaim_done(self.facts, result)

    def _report(self) -> None:
        self._last_tick = self.parts.clock.monotonic()
        m = self.parts.metrics
        m.ticks.inc()
        m.set_phase(self.state.phase)
        ok, _ = self.healthy()
        m.healthy.set(1 if ok else 0)
        m.imds_failures.set(self.imds_failures)
        if self.estimate is not None:
            m.image_expected.set(self.estimate.expected_bytes)
            m.image_floor.set(self.estimate.floor_bytes)
            m.swap_free.set(self.estimate.swap_free_bytes)
            m.set_prediction(self.estimate, self.config.hibernate.fixed_overhead)
        if self._looked:  # calm: every slow_poll_interval; busy: every tick
            self._write_state()
        self.parts.systemd.notify("WATCHDOG=1", f"STATUS={self.state.phase.value}")

    def _write_state(self) -> None:
        """Never raises: a full disk must not cost the decision it reports on."""
        try:
            self.parts.state_file.write(self._snapshot())
        except Exception as exc:
            with contextlib.suppress(Exception):
                log.warning(
                    "state.write_failed", path=str(self.parts.state_file.path), error=str(exc)
                )

    def _snapshot(self) -> dict[str, Any]:
        ok, why = self.healthy()
        clock = self.parts.clock
        slept = clock.slept()
        return {
            "phase": self.state.phase.value,
            "reason": self.state.reason,
            "healthy": ok,
            "health_problem": why,
            "idle_since_s": None
            if self.state.idle_since is None
            else round(clock.monotonic() - self.state.idle_since, 1),
            "reclaim_running": self._worker.running,
            "facts": asdict(self.facts) if self.facts else None,
            "events": [_event_dict(e) for e in self.store.active()],
            "estimate": asdict(self.estimate) if self.estimate else None,
            "last_reclaim": asdict(self.last_reclaim) if self.last_reclaim else None,
            "hibernate_mode": self.config.hibernate.mode,
            "handled_notices": list(self.state.handled),
            "issued_for": self.state.issued_for or None,
            "issue": self._issue or None,
            # Rounded: read twice they differ by microseconds, which would rewrite the file.
            "life": {
                "booted_at": round(_booted_at(clock, slept), 1),
                "slept_s": None if slept is None else round(slept, 1),
            },
        }

    def _quietly(self, report: Callable[[Any], None], item: Any) -> None:
        """A report that fails is dropped; what it reports on goes ahead."""
        try:
            report(item)
        except Exception:
            with contextlib.suppress(Exception):
                log.exception("agent.report_failed", report=report.__name__)


def _booted_at(clock: Clock, slept: float | None) -> float:
    """The wall clock at boot: the same for every run of the agent within one boot."""
    return clock.wall() - clock.monotonic() - (slept or 0.0)


def _commitment(snapshot: Mapping[str, Any]) -> Commitment:
    """The parts of a previous state file that `restore` needs; anything odd is left out."""
    life = snapshot.get("life")
    life = life if isinstance(life, dict) else {}
    issued = snapshot.get("issued_for")
    issue = snapshot.get("issue")
    handled = snapshot.get("handled_notices")
    return Commitment(
        issued_for=issued if isinstance(issued, str) else "",
        issue=issue if isinstance(issue, str) else "",
        handled=tuple(h for h in handled if isinstance(h, str))
        if isinstance(handled, list)
        else (),
        booted_at=_number(life.get("booted_at")),
        slept=_number(life.get("slept_s")),
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _iso(epoch: float | None) -> str | None:
    """Never raises: a notice dated 9999-12-31T23:59:59-01:00 is past what datetime holds."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"@{epoch:.0f}"


def _event_dict(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "kind": event.kind.value,
        "id": event.id,
        "action": event.action,
        "deadline": _iso(event.deadline),
        "description": event.description,
    }


def _event_env(event: Event | None, reason: str) -> dict[str, str]:
    """What a hook sees of the event, as environment variables."""
    env = {"SPOTGUARD_REASON": reason}
    if event is not None:
        env |= {
            "SPOTGUARD_EVENT_KIND": event.kind.value,
            "SPOTGUARD_EVENT_ID": event.id,
            "SPOTGUARD_ACTION": event.action,
            "SPOTGUARD_DEADLINE": _iso(event.deadline) or "",
        }
    return env


def _wait_for_stop(stop: threading.Event) -> None:
    """Until `stop` is set. Python runs signal handlers in the main thread only, and a signal
    the kernel hands to another thread does not wake a main thread blocked on a lock; so the
    main thread sleeps on the signal wakeup fd, which the C-level handler writes in whatever
    thread the signal lands: awake at once, yet quiet while calm (waiting in 0.1 s slices cost
    the idle agent as much CPU as its metadata polls). Off the main thread no signal is ours."""
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    try:
        waiter = select.poll()
        waiter.register(read, select.POLLIN)
        while not stop.is_set():
            waiter.poll(STOP_CHECK_S * 1000)  # a signal's handler runs as this returns
            with contextlib.suppress(BlockingIOError):
                os.read(read, 64)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


__all__ = ["Agent", "Parts", "Phase", "ReclaimWorker"]
