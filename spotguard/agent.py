"""The agent: `tick` is one control step (observe, plan, act); `run` is the loop around it.

Data flows one way: monitors and host signals → observation → planner → decisions → actions.
Every part that touches the world comes in through `Parts`, so tests can hand in real servers
on 127.0.0.1 and fake /proc trees, and a FakeClock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from spotguard.clock import Clock
from spotguard.config import Config
from spotguard.estimator import Estimator, ImageEstimate
from spotguard.events import Event, EventKind, EventStore
from spotguard.image_size import ImageSizeControl
from spotguard.imds import ImdsError
from spotguard.metrics import Metrics
from spotguard.monitors import InstanceFacts, Monitor
from spotguard.planner import (
    CancelReclaim,
    Decision,
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
)
from spotguard.reclaim.api import Intensity, Reclaimer, ReclaimRequest, ReclaimResult, StageResult
from spotguard.sdnotify import SystemdNotifier
from spotguard.signals import HostSample
from spotguard.state import StateFile
from spotguard.trigger import Hibernator, TriggerResult

log = structlog.get_logger()


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
    """What the agent touches. `hibernator_for` is late-bound: EC2 needs the instance's facts."""

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


class ReclaimWorker:
    """Runs one reclaim at a time in a thread, so the loop keeps polling for notices meanwhile."""

    def __init__(self, reclaimer: Reclaimer) -> None:
        self._reclaimer = reclaimer
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._request: ReclaimRequest | None = None
        self._finished: ReclaimResult | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> Intensity | None:
        with self._lock:
            return self._request.intensity if self._request else None

    def start(self, request: ReclaimRequest, progress: Callable[[StageResult], None]) -> None:
        if self.running is not None:
            return
        self._cancel = threading.Event()
        with self._lock:
            self._request = request
        self._thread = threading.Thread(
            target=self._work, args=(request, progress), name="reclaim", daemon=True
        )
        self._thread.start()

    def _work(self, request: ReclaimRequest, progress: Callable[[StageResult], None]) -> None:
        try:
            result = self._reclaimer.reclaim(request, self._cancel, progress)
        except Exception as exc:  # a backend bug must not take the agent down
            log.exception("reclaim.failed", intensity=request.intensity.value)
            result = ReclaimResult(request.intensity, 0, 0.0, f"error: {exc}")
        with self._lock:
            self._finished = result
            self._request = None

    def cancel(self, wait_s: float = 5.0) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(wait_s)

    def take_finished(self) -> ReclaimResult | None:
        with self._lock:
            done, self._finished = self._finished, None
            return done


class Agent:
    def __init__(self, config: Config, parts: Parts) -> None:
        self.config = config
        self.parts = parts
        self.state = PlannerState()
        self.store = EventStore()
        self.facts: InstanceFacts | None = None
        self.host: HostSample | None = None
        self.estimate: ImageEstimate | None = None
        self.estimate_error = ""
        self.last_reclaim: ReclaimResult | None = None
        self.imds_failures = 0
        self.imds_error = ""
        self.resume_flag = threading.Event()
        self._worker = ReclaimWorker(parts.reclaimer)
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify")
        self._trigger_result: TriggerResult | None = None
        self._hibernator: Future[Hibernator] | None = None
        self._hibernator_facts: InstanceFacts | None = None
        self._next_full_look = 0.0
        self._looked = False
        self._last_tick = parts.clock.monotonic()

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        clock = self.parts.clock
        log.info("agent.started", mode=self.config.hibernate.mode, imds=self.config.imds.url)
        self.parts.systemd.notify("READY=1", "STATUS=armed")
        log.info("agent.armed", after="start")
        while not stop.is_set():
            began = clock.monotonic()
            try:
                self.tick()
            except Exception:  # the loop outlives any single bad step
                log.exception("agent.tick_failed")
            stop.wait(max(self.config.agent.poll_interval - (clock.monotonic() - began), 0.0))
        self.shutdown()

    def shutdown(self) -> None:
        """Stop reclaim (the v1 backend restores limits on cancel) and leave a final state."""
        self._worker.cancel()
        self._background.shutdown(wait=True, cancel_futures=False)
        self._write_state()
        log.info("agent.stopped", phase=self.state.phase.value)

    def tick(self) -> list[Decision]:
        """One control step: observe, plan, act. Returns the decisions, for tests and simulate."""
        obs = self._observe()
        self.state, decisions = plan(self.state, obs, self.config)
        for decision in decisions:
            self._act(decision)
        self._report()
        return decisions

    def healthy(self) -> tuple[bool, str]:
        if self.imds_failures >= self.config.agent.unhealthy_after:
            return False, f"metadata service failed {self.imds_failures} polls: {self.imds_error}"
        stale = self.parts.clock.monotonic() - self._last_tick
        if stale > max(10 * self.config.agent.poll_interval, 30.0):
            return False, f"control loop stalled for {stale:.0f} s"
        return True, ""

    # -- observe --------------------------------------------------------------------------
    def _observe(self) -> Observation:
        clock = self.parts.clock
        now_mono = clock.monotonic()
        if self.facts is None:
            self.facts = self._fetch_facts()
        full = self._looked = self._full_look(now_mono)
        new_events = self._poll_monitors(full)
        if full:
            self.host = self._safe("signals.failed", lambda: self.parts.host.sample(now_mono))
        finished = self._worker.take_finished()  # before the estimate, which it changes
        if finished is not None:
            self.last_reclaim = finished
            self._log_reclaim_done(finished)
        if full or new_events or finished:
            self._estimate()
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
            reclaim_running=self._worker.running,
            reclaim_finished=finished,
            trigger_result=trigger_result,
            resume_signalled=resumed,
        )

    def _full_look(self, now: float) -> bool:
        """The spot notice is polled every tick. The rest (early warnings, which come minutes
        ahead, host signals, the image) only every `slow_poll_interval` while nothing is going
        on: an agent idling for days should cost next to nothing."""
        calm = (
            self.state.phase is Phase.ARMED
            and self._worker.running is None
            and not self.store.active()
        )
        if calm and now < self._next_full_look:
            return False
        self._next_full_look = now + self.config.agent.slow_poll_interval
        return True

    def _estimate(self) -> None:
        try:
            self.estimate, self.estimate_error = self.parts.estimator.estimate(), ""
        except Exception as exc:
            self.estimate, self.estimate_error = None, str(exc)
            log.warning("estimate.failed", error=str(exc))

    def _poll_monitors(self, full: bool) -> list[Event]:
        new: list[Event] = []
        failed = ""
        for monitor in self.parts.monitors:
            if not full and monitor.kind is not EventKind.SPOT_INTERRUPTION:
                continue
            try:
                events = monitor.poll()
            except ImdsError as exc:
                failed = str(exc)
                log.warning("imds.error", source=monitor.kind.value, error=failed)
                continue
            for event in self.store.update(monitor.kind.value, events):
                new.append(event)
                if event.kind is EventKind.SPOT_INTERRUPTION:
                    self._hibernator_ready()
                self.parts.metrics.events.labels(event.kind.value).inc()
                log.info(
                    "notice.received",
                    kind=event.kind.value,
                    id=event.id,
                    action=event.action,
                    deadline=_iso(event.deadline),
                    seconds_left=None
                    if event.deadline is None
                    else round(event.deadline - self.parts.clock.wall(), 1),
                )
        if failed:
            self.imds_failures += 1
            self.imds_error = failed
        else:
            self.imds_failures = 0
        return new

    def _fetch_facts(self) -> InstanceFacts | None:
        try:
            facts = self.parts.fetch_facts()
        except ImdsError as exc:
            log.warning("facts.unavailable", error=str(exc))
            return None
        log.info("facts.known", **asdict(facts))
        return facts

    def _safe(self, failure: str, read: Callable[[], HostSample]) -> HostSample | None:
        try:
            return read()
        except Exception as exc:
            log.warning(failure, error=str(exc))
            return None

    # -- act ------------------------------------------------------------------------------
    def _act(self, decision: Decision) -> None:
        match decision:
            case StartReclaim(request):
                log.info(
                    "reclaim.started",
                    intensity=request.intensity.value,
                    budget_s=round(request.budget_s, 1),
                    target_bytes=request.target_bytes,
                )
                self._worker.start(request, self._log_stage)
            case CancelReclaim(reason):
                log.info("reclaim.cancelled", reason=reason)
                self._worker.cancel()
            case RunHooks(kind, event, budget):
                self._run_hooks(kind, event, budget)
            case Notify(what, event, reason):
                self._notify(what, event, reason)
            case Hibernate(event, reason, image_size):
                self._hibernate(event, reason, image_size)
            case Graceful(event, reason):
                self.parts.metrics.hibernations.labels("impossible").inc()
                log.warning(
                    "hibernate.unavailable", reason=reason, notice=event.id if event else None
                )
            case Resumed(slept):
                log.info("hibernate.resumed", slept_s=round(slept, 1))
                self.parts.image_size.restore()
                log.info("agent.armed", after="resume")
                self._hibernator = None
                self.facts = None

    def _run_hooks(self, kind: str, event: Event | None, budget: float | None) -> None:
        env = _event_env(event, self.state.reason)
        if kind in ("pre-hibernate", "pre-reclaim"):
            self.parts.hooks.run(kind, env, budget)  # must be done before what follows
        else:
            self._background.submit(self.parts.hooks.run, kind, env, budget)

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
        self._background.submit(webhook.send, payload, deadline)

    def _hibernator_ready(self) -> Future[Hibernator]:
        """Built in the background as soon as a notice comes: boto3 takes a second and 20+ MiB
        to load, which an agent idling for days should not hold."""
        if self._hibernator is None or self._hibernator_facts != self.facts:
            self._hibernator_facts = self.facts  # EC2 needs the instance id and region
            self._hibernator = self._background.submit(self.parts.hibernator_for, self.facts)
        return self._hibernator

    def _hibernate(self, event: Event, reason: str, image_size: int | None) -> None:
        hibernator = self._hibernator_ready().result()
        estimate = self.estimate
        if image_size is not None:
            self.parts.image_size.lower(image_size)
        result = hibernator.hibernate()
        if not result.issued:
            self.parts.image_size.restore()
        fields = {
            "mode": hibernator.mode,
            "notice": event.id,
            "why_now": reason,
            "image_bytes": estimate.expected_bytes if estimate else None,
            **(estimate.prediction_fields() if estimate else {}),
            "seconds_left": None
            if event.deadline is None
            else round(event.deadline - self.parts.clock.wall(), 1),
        }
        if result.issued:
            self.parts.metrics.hibernations.labels("issued").inc()
            log.info("hibernate.issued", **fields)
        else:
            self.parts.metrics.hibernations.labels("refused").inc()
            log.warning("hibernate.refused", reason=result.reason, code=result.error_code, **fields)
        self._trigger_result = result

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
        ok, why = self.healthy()
        snapshot = {
            "phase": self.state.phase.value,
            "reason": self.state.reason,
            "healthy": ok,
            "health_problem": why,
            "idle_since_s": None
            if self.state.idle_since is None
            else round(self.parts.clock.monotonic() - self.state.idle_since, 1),
            "reclaim_running": self._worker.running,
            "facts": asdict(self.facts) if self.facts else None,
            "events": [_event_dict(e) for e in self.store.active()],
            "estimate": asdict(self.estimate) if self.estimate else None,
            "last_reclaim": asdict(self.last_reclaim) if self.last_reclaim else None,
            "hibernate_mode": self.config.hibernate.mode,
        }
        try:
            self.parts.state_file.write(snapshot)
        except OSError as exc:
            log.warning("state.write_failed", path=str(self.parts.state_file.path), error=str(exc))


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


__all__ = ["Agent", "Parts", "Phase", "ReclaimWorker"]
