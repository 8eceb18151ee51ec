"""A Reclaimer that runs only while it holds the host lock: one reclaim at a time per host.

What a second reclaim does while one runs depends on who asks and why (`Wait`):
the agent's idle reclaim skips (it tries again at the next idle tick), a deep reclaim waits
within its budget, and an emergency reclaim also asks a person's `spotguard reclaim` to stop
(SIGTERM: it cancels, puts its limits back and frees the lock), since the deadline matters more.
A person's `spotguard reclaim` says who holds it and stops, or waits with --wait.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable
from enum import StrEnum

import structlog

from spotguard.clock import Clock
from spotguard.hostlock import CLI, Holder, HostLock
from spotguard.reclaim.api import Intensity, ProgressFn, Reclaimer, ReclaimRequest, ReclaimResult

log = structlog.get_logger()

POLL_S = 0.1  # how often a waiter tries the lock again
LOG_WAIT_S = 0.5  # a wait longer than this is worth a log line once it ends


class Wait(StrEnum):
    SKIP = "skip"  # busy: return at once
    WAIT = "wait"  # wait for the holder, within the request's budget
    PREEMPT = "preempt"  # wait, and ask a `spotguard reclaim` holder to stop


def agent_policy(intensity: Intensity) -> Wait:
    return {
        Intensity.LIGHT: Wait.SKIP,
        Intensity.DEEP: Wait.WAIT,
        Intensity.EMERGENCY: Wait.PREEMPT,
    }[intensity]


class ExclusiveReclaimer:
    """Implements `Reclaimer`. Time spent waiting counts against the request's budget."""

    def __init__(
        self,
        inner: Reclaimer,
        lock: HostLock,
        clock: Clock,
        *,
        role: str,
        policy: Callable[[Intensity], Wait],
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        self._inner = inner
        self._lock = lock
        self._clock = clock
        self._role = role
        self._policy = policy
        self._kill = kill

    def reclaim(
        self,
        request: ReclaimRequest,
        cancel: threading.Event,
        progress: ProgressFn | None = None,
    ) -> ReclaimResult:
        started = self._clock.monotonic()
        holder = self._acquire(request, cancel, started)
        waited = self._clock.monotonic() - started
        if holder is not None:
            return ReclaimResult(
                request.intensity, 0, waited, "busy", stop_detail=holder_text(self._lock, holder)
            )
        try:
            if waited > LOG_WAIT_S:
                log.info("reclaim.lock_acquired", waited_s=round(waited, 1))
            left = dataclasses.replace(request, budget_s=max(request.budget_s - waited, 0.0))
            return self._inner.reclaim(left, cancel, progress)
        finally:
            self._lock.release()

    def _acquire(
        self, request: ReclaimRequest, cancel: threading.Event, started: float
    ) -> Holder | str | None:
        """None once we hold the lock; else who holds it (a Holder, or "" when unknown)."""
        policy = self._policy(request.intensity)
        deadline = started + request.budget_s
        announced = asked = False
        while not self._try_acquire():
            holder = self._lock.holder()
            if not announced:
                announced = True
                log.info(
                    "reclaim.lock_busy",
                    intensity=request.intensity.value,
                    holder=holder.describe() if holder else "unknown",
                    policy=policy.value,
                )
            left = deadline - self._clock.monotonic()
            if policy is Wait.SKIP or cancel.is_set() or left <= 0:
                return holder or ""
            if policy is Wait.PREEMPT and not asked and holder and holder.role == CLI:
                asked = True
                log.warning("reclaim.lock_preempting", holder=holder.describe())
                try:
                    self._kill(holder.owner.pid, signal.SIGTERM)
                except OSError as exc:  # gone meanwhile, or not ours to signal
                    log.warning("reclaim.lock_preempt_failed", error=str(exc))
            cancel.wait(min(POLL_S, left))
        return None

    def _try_acquire(self) -> bool:
        """A lock file we cannot open (state dir missing, read-only) must not stop an emergency
        reclaim: go on without it; the v1 journal, in the same dir, then refuses to lower
        limits it cannot record, so only backends that need no journal still run."""
        try:
            return self._lock.try_acquire(self._role, self._clock.wall())
        except OSError as exc:
            log.error("reclaim.lock_unavailable", path=str(self._lock.path), error=str(exc))
            return True


def holder_text(lock: HostLock, holder: Holder | str) -> str:
    """For people: the CLI prints it, the agent's state file keeps it."""
    who = holder.describe() if isinstance(holder, Holder) else "a process that has not said who"
    return f"another reclaim holds {lock.path}: {who}"
