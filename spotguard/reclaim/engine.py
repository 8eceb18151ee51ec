"""The staged reclaimer: deadline-bound steps over an ordered plan of cgroups.

Idle time: small steps keep each kernel reclaim short, so the workloads around it stay
responsive and we stop at the first sign of pressure. A notice (EMERGENCY): the clock matters
more than the foreground, so each write asks for as much as the kernel gets done in about one
write timeout, at the rate this run has seen (issue 11: 692 steps of 0.64 MB reached 7.9 MB/s
where one write reached 57 MB/s). Every write stops at the budget or on cancel. Nothing is ever
killed and only cgroups under the configured root are touched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from spotguard.clock import Clock
from spotguard.config import ReclaimConfig
from spotguard.hostfs import HostFS
from spotguard.prediction import SwapRate
from spotguard.reclaim.api import (
    DROP_GRACE_S,
    Cancel,
    Intensity,
    ProgressFn,
    ReclaimRequest,
    ReclaimResult,
    StageResult,
)
from spotguard.reclaim.backend import Backend, Phase, StepOutcome, T_contra
from spotguard.reclaim.cgroup import (
    PAGE,
    Cgroup,
    CgroupError,
    CgroupPathError,
    CgroupVanished,
    Usage,
)
from spotguard.reclaim.deadline import (
    DEFAULT_SIGNAL,
    BoundedWriter,
    WriteInterrupted,
    install_interrupt_handler,
)
from spotguard.reclaim.detect import BackendReport, detect_backends
from spotguard.reclaim.drop_caches import DropCachesBackend, HostMemory
from spotguard.reclaim.journal import LimitJournal
from spotguard.reclaim.plan import plan
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo, read_vmstat
from spotguard.reclaim.swap_reclaim import SwapReclaimBackend
from spotguard.reclaim.v1 import ForceEmptyBackend, V1LimitBackend, restore_journal
from spotguard.reclaim.v2 import V2Backend
from spotguard.reclaim.writer import FileWriter, LibcWriter
from spotguard.signals.psi import HostPressure
from spotguard.signals.workload import PressureSource, WorkloadCgroups, WorkloadPressure

log = structlog.get_logger()

MIN_STEP = 16 << 20  # below this, per-step overhead dominates; above config.step, latency does
EMERGENCY_FIRST_STEP = 256 << 20  # before this run has a rate: ~5 s at a slow guest's 57 MB/s
EMERGENCY_FILL = 0.8  # of the write timeout an emergency write is sized to take
SWAP_CACHE_DROP_S = 2.0  # kept back from a run's budget to drop clean swap cache at its end


class StagedReclaimer:
    """Implements `Reclaimer`. Construct it in the main thread: it installs the handler for the
    signal that interrupts writes, detects the backends, and puts back v1 limits a previous run
    left lowered."""

    def __init__(
        self,
        fs: HostFS,
        config: ReclaimConfig,
        clock: Clock,
        state_dir: Path,
        *,
        writer: FileWriter | None = None,
        signum: int = DEFAULT_SIGNAL,
        sync: Callable[[], None] = os.sync,
        swap_rate: SwapRate | None = None,
    ) -> None:
        self._fs = fs
        self.swap_rate = swap_rate or SwapRate()  # what our swap writes reached: for predictions
        self._config = config
        self._clock = clock
        self._writer = writer or LibcWriter()
        self._signum = signum
        self._sync = sync
        self._journal = LimitJournal(state_dir)
        install_interrupt_handler(signum)
        self.report: BackendReport = detect_backends(fs, config, self._writer, signum)
        self.last_result: ReclaimResult | None = None
        # Pressure a run backs off at: on v2 the protected (else all other) cgroups' own, so the
        # stalls of our own writes, which the host's PSI counts, cannot stop the run. v1 has
        # no cgroup PSI: the host's.
        self._pressure: PressureSource = HostPressure(fs)
        if self.report.hierarchy == "v2" and self.report.memory_root is not None:
            cgroups = WorkloadCgroups(fs, self.report.memory_root, config.protected)
            self._pressure = WorkloadPressure(cgroups, fs)
        if self.report.memory_root is not None:
            restore_journal(self._journal, fs, self.report.memory_root, self._writer)

    def reclaim(
        self,
        request: ReclaimRequest,
        cancel: threading.Event,
        progress: ProgressFn | None = None,
    ) -> ReclaimResult:
        started = self._clock.monotonic()
        vm_before = read_vmstat(self._fs)
        run = _Run(
            self._clock,
            self._config,
            request,
            cancel=cancel,
            progress=progress,
            pressure=self._pressure,
            swap_free=self._swap_free(),
            swap_rate=self.swap_rate,
            vmstat=lambda: read_vmstat(self._fs),
        )
        stages, reason = self._stages(run, request)
        vm_after = read_vmstat(self._fs)
        result = ReclaimResult(
            intensity=request.intensity,
            reclaimed_bytes=sum(s.reclaimed_bytes for s in stages),
            duration_s=self._clock.monotonic() - started,
            stop_reason=reason,
            stages=stages,
            swapped_out_bytes=_delta(vm_before, vm_after, ("pswpout",)) * PAGE,
            host_reclaimed_bytes=_delta(vm_before, vm_after, _PGSTEAL) * PAGE,
            backend=self.report.chosen or "",
            stop_detail=run.detail if reason == "pressure" else "",
        )
        self.last_result = result
        log.info(
            "reclaim.run",
            intensity=str(request.intensity),
            reclaimed_bytes=result.reclaimed_bytes,
            stop_reason=reason,
            stages=len(stages),
            duration_s=round(result.duration_s, 3),
        )
        return result

    def _stages(self, run: _Run, request: ReclaimRequest) -> tuple[tuple[StageResult, ...], str]:
        chosen, root = self.report.chosen, self.report.memory_root
        writer = BoundedWriter(self._writer, run.cancel, run.time_left, self._signum)
        if chosen == "drop_caches":
            if request.intensity is Intensity.LIGHT:  # global: it would hit protected cgroups
                return (), "no-targets"
            stage = run.stage(HostMemory(self._fs, writer), DropCachesBackend(self._sync))
            return (stage,), run.limit_reached() or "complete"
        if chosen is None or root is None:
            return (), "unavailable"
        backend = self._cgroup_backend(chosen, request)
        names = plan(
            lambda name: self._children(root, name),
            lambda name: self._exists(root, name),
            self._config,
            request.intensity,
            request.cgroups,
        )
        if not names:
            return (), "no-targets"
        stages: list[StageResult] = []
        reason = ""
        for name in names:
            if reason := run.stop_reason() or "":
                break
            try:
                cgroup = Cgroup.under(self._fs, root, name, writer)
            except CgroupPathError as exc:  # changed since we planned: a symlink now
                log.error("reclaim.cgroup_refused", cgroup=name, error=str(exc))
                continue
            stages.append(run.stage(cgroup, backend))
        # A stage stopped by pressure leaves the run short of what it was asked: not "complete",
        # so the planner tries again soon instead of waiting `repeat_after`.
        pressured = any(s.stop_reason == "pressure" for s in stages)
        reason = reason or run.limit_reached() or ("pressure" if pressured else "complete")
        # An emergency drops even when stopped between cgroups (issue 11: 1.5 GB left cached);
        # a light run too, for EC2's own hibernation takes the image at the notice (893 MB of
        # swap cache there), but not when cancelled: then the host is wanted back, or an
        # emergency follows that drops it.
        if run.emergency or reason != "cancelled":
            self._drop_swap_cache(run, root, stages, backend)
        return tuple(stages), reason

    def _drop_swap_cache(
        self, run: _Run, root: str, stages: list[StageResult], backend: Backend[Cgroup]
    ) -> None:
        """Pages swapped out but still in swap cache are copied into the image again (issue 11:
        2.2 of 2.6 GiB). They sit clean at the tail of the inactive list once written, so one
        more write per cgroup, sized to its share of SwapCached, frees them without I/O; what
        the kernel takes beyond them is anonymous memory the image is rid of too."""
        swapped = [s for s in stages if s.anon_bytes > 0]
        cached = self._meminfo_value("SwapCached")
        total = sum(s.anon_bytes for s in swapped)
        if cached < MIN_STEP or not total or backend.one_shot:
            return
        started, writer = self._clock.monotonic(), run.final_writer(self._writer, self._signum)
        for stage in swapped:
            nbytes = cached * stage.anon_bytes // total  # earlier runs' cache too: not capped
            if nbytes < MIN_STEP:
                continue
            try:
                cgroup = Cgroup.under(self._fs, root, stage.cgroup, writer)
                with backend.stage(cgroup):
                    backend.step(cgroup, nbytes, Phase.ANON)
            except (WriteInterrupted, CgroupError, CgroupPathError, OSError) as exc:
                log.info("reclaim.swap_cache_stopped", cgroup=stage.cgroup, reason=str(exc))
                break
        log.info(
            "reclaim.swap_cache_dropped",
            swap_cached_before=cached,
            swap_cached_after=self._meminfo_value("SwapCached"),
            duration_s=round(self._clock.monotonic() - started, 3),
        )

    def _cgroup_backend(self, chosen: str, request: ReclaimRequest) -> Backend[Cgroup]:
        if chosen == "v2":
            return V2Backend(self.report.swappiness)
        if chosen == "swap.reclaim":
            return SwapReclaimBackend()
        if request.intensity is Intensity.EMERGENCY and request.target_bytes is None:
            return ForceEmptyBackend()  # all of it, fastest; responsiveness no longer matters
        return V1LimitBackend(self._journal, self._writer)

    def _children(self, root: str, name: str) -> list[str]:
        try:
            return Cgroup.under(self._fs, root, name, self._writer).children()
        except (CgroupError, CgroupPathError):
            return []

    def _exists(self, root: str, name: str) -> bool:
        try:
            return Cgroup.under(self._fs, root, name, self._writer).exists()
        except CgroupPathError as exc:
            log.error("reclaim.cgroup_refused", cgroup=name, error=str(exc))
            return False

    def _swap_free(self) -> int:
        return self._meminfo_value("SwapFree")

    def _meminfo_value(self, key: str) -> int:
        try:
            return read_meminfo(self._fs).get(key, 0)
        except ProcFormatError as exc:
            log.warning("reclaim.meminfo_unreadable", error=str(exc))
            return 0


_PGSTEAL = ("pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged", "pgsteal_proactive")


def _delta(before: dict[str, int], after: dict[str, int], keys: tuple[str, ...]) -> int:
    return sum(max(after.get(k, 0) - before.get(k, 0), 0) for k in keys)


@dataclass
class _Tally:
    """One stage's running totals, measured from usage before and after every step."""

    cgroup: str
    backend: str
    started: float
    reclaimed: int = 0
    file: int = 0
    anon: int = 0
    steps: int = 0

    def add(self, before: Usage, after: Usage, reported: int | None) -> int:
        gained = max(before.total - after.total, 0) if reported is None else reported
        self.reclaimed += gained
        self.file += max(before.file - after.file, 0)
        self.anon += max(before.anon - after.anon, 0)
        self.steps += 1
        return gained

    def result(self, reason: str, now: float) -> StageResult:
        return StageResult(
            cgroup=self.cgroup,
            backend=self.backend,
            reclaimed_bytes=self.reclaimed,
            file_bytes=self.file,
            anon_bytes=self.anon,
            steps=self.steps,
            stop_reason=reason,
            duration_s=now - self.started,
        )


class _Run:
    """One reclaim run: its budget, pressure threshold, remaining target and the step loop."""

    def __init__(
        self,
        clock: Clock,
        config: ReclaimConfig,
        request: ReclaimRequest,
        *,
        cancel: threading.Event,
        progress: ProgressFn | None,
        pressure: PressureSource,
        swap_free: int,
        swap_rate: SwapRate,
        vmstat: Callable[[], dict[str, int]],
    ) -> None:
        self.clock = clock
        self.config = config
        self.cancel = cancel
        self.progress = progress
        self.pressure = pressure
        self.emergency = request.intensity is Intensity.EMERGENCY
        # A little of the budget is kept to drop clean swap cache at the end.
        reserve = min(SWAP_CACHE_DROP_S, request.budget_s / 10)
        self.final_deadline = clock.monotonic() + request.budget_s
        self.deadline = self.final_deadline - reserve
        self.remaining = request.target_bytes
        self.swap_free = swap_free
        self.swap_rate = swap_rate
        self.vmstat = vmstat
        self.threshold = config.emergency_psi if self.emergency else config.idle_psi
        self.threshold_key = "reclaim.emergency_psi" if self.emergency else "reclaim.idle_psi"
        self.ignore_pressure = request.ignore_pressure
        self.detail = ""  # the last pressure stop, for people: signal, value, threshold
        light = request.intensity is Intensity.LIGHT
        anon = swap_free > 0 and (config.idle_swap or not light)
        self.phases = (Phase.FILE, Phase.ANON) if anon else (Phase.FILE,)
        self.written_bytes = 0  # gained by this run's writes, and the time they took
        self.written_s = 0.0

    def time_left(self) -> tuple[float, str]:
        """What one write may take: the write timeout, or less when the budget is nearly spent."""
        budget = self.deadline - self.clock.monotonic()
        if budget < self.config.write_timeout:
            return budget, "budget"
        return self.config.write_timeout, "timeout"

    def final_writer(self, inner: FileWriter, signum: int) -> BoundedWriter:
        """For the swap-cache writes at the end of a run: the budget kept back for them,
        or, when the planner cancelled us to hibernate, the grace its cancel gave (Cancel).
        An idle-time run's last step can overrun its budget (2026-12-03: by 1.4 s, and the
        drop then had none); with no deadline behind that budget, the drop gets its grace."""
        ends = self.final_deadline
        if not self.emergency:
            ends = max(ends, self.clock.monotonic() + DROP_GRACE_S)
        if self.cancel.is_set():
            grace = self.cancel.grace_s if isinstance(self.cancel, Cancel) else DROP_GRACE_S
            ends = min(ends, self.clock.monotonic() + grace)

        def left() -> tuple[float, str]:
            return ends - self.clock.monotonic(), "budget"

        return BoundedWriter(inner, threading.Event(), left, signum)

    def limit_reached(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.clock.monotonic() >= self.deadline:
            return "budget"
        if self.remaining is not None and self.remaining <= 0:
            return "target"
        return None

    def stop_reason(self) -> str | None:
        """Why the run must stop before its next step, if it must."""
        if reason := self.limit_reached():
            return reason
        now = self.pressure.read()
        where = "host" if isinstance(self.pressure, HostPressure) else "workload"
        return self.over(f"{where} memory", now.memory_some) or self.over(
            f"{where} io", now.io_some
        )

    def over(self, signal: str, value: float | None) -> str | None:
        """Stop for pressure when PSI `value` is above the threshold; `detail` says which."""
        if self.ignore_pressure or value is None or value <= self.threshold:
            return None
        self.detail = (
            f"{signal} PSI some avg10 {value:.2f}% > {self.threshold:g}% ({self.threshold_key})"
        )
        return "pressure"

    def stage(self, target: T_contra, backend: Backend[T_contra]) -> StageResult:
        tally = _Tally(target.name, backend.name, self.clock.monotonic())
        try:
            with backend.stage(target):
                reason = self._steps(target, backend, tally)
        except CgroupVanished:
            reason = "vanished"
        except (CgroupError, ProcFormatError, OSError) as exc:
            log.error("reclaim.stage_failed", cgroup=target.name, error=str(exc))
            reason = "error"
        result = tally.result(reason, self.clock.monotonic())
        if reason == "pressure":
            result = replace(result, stop_detail=self.detail)
        log.info("reclaim.stage", **result.to_dict())
        return result

    def _steps(self, target: T_contra, backend: Backend[T_contra], tally: _Tally) -> str:
        for phase in (Phase.FILE,) if backend.one_shot else self.phases:
            while True:
                pressure = target.pressure()
                if reason := self.stop_reason():
                    return reason
                if reason := self.over(f"cgroup {target.name} memory", pressure):
                    return reason
                before = target.usage()
                nbytes = self._step_size(before, phase)
                if nbytes < PAGE:
                    break
                interrupted = ""
                swapped_before, started = self.vmstat().get("pswpout", 0), self.clock.monotonic()
                try:
                    outcome = backend.step(target, nbytes, phase)
                except WriteInterrupted as exc:
                    outcome, interrupted = StepOutcome(), exc.reason
                except InterruptedError:  # a signal that was not ours: count what it got
                    outcome = StepOutcome()
                after = target.usage()
                gained = tally.add(before, after, outcome.reported_bytes)
                seconds = self.clock.monotonic() - started
                self._note_rates(nbytes, gained, swapped_before, seconds)
                log.debug(
                    "reclaim.step",
                    cgroup=target.name,
                    phase=str(phase),
                    asked=nbytes,
                    gained=gained,
                    exhausted=outcome.exhausted,
                    interrupted=interrupted,
                )
                if self.remaining is not None:
                    self.remaining -= gained
                if self.progress is not None:
                    self.progress(tally.result("", self.clock.monotonic()))
                if interrupted in ("cancelled", "budget"):
                    return interrupted
                if outcome.exhausted or gained <= 0:
                    break
                if phase is Phase.FILE and max(before.file - after.file, 0) * 2 < gained:
                    # Met from anonymous memory: the kernel has no page cache left to give (or
                    # no swappiness= to keep to it). Asking again would only swap, in steps
                    # sized to the page cache (issue 11: 692 steps of 0.64 MB, never ending).
                    break
        return "done" if backend.one_shot else "no-progress"

    def _note_rates(self, asked: int, gained: int, swapped_before: int, seconds: float) -> None:
        """This run's reclaim rate sizes its emergency writes; its swap rate, the predictions.
        A write asked for less than MIN_STEP is mostly overhead: it says nothing of the rate."""
        if seconds <= 0:
            return
        if asked >= MIN_STEP:
            self.written_bytes += gained
            self.written_s += seconds
        swapped = max(self.vmstat().get("pswpout", 0) - swapped_before, 0) * PAGE
        self.swap_rate.note(swapped, seconds)

    def _step_size(self, usage: Usage, phase: Phase) -> int:
        """Idle: a few percent of what is reclaimable, capped by reclaim.step. Emergency: what
        this run reclaims in most of a write timeout. Never more than there is, or than asked."""
        reclaimable = usage.file + (min(usage.anon, self.swap_free) if phase is Phase.ANON else 0)
        if self.emergency:
            rate = self.written_bytes / self.written_s if self.written_bytes > 0 else 0.0
            wanted = rate * self.config.write_timeout * EMERGENCY_FILL
            size = max(int(wanted), MIN_STEP) if rate else EMERGENCY_FIRST_STEP
        else:
            size = max(MIN_STEP, int(reclaimable * self.config.step_percent / 100))
            size = min(size, self.config.step)
        size = min(size, reclaimable)
        return size if self.remaining is None else min(size, self.remaining)
