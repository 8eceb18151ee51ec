"""What the planner asks of reclaim, and what it gets back. The engine behind it is swappable."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Intensity(StrEnum):
    """How hard to push: idle-time reclaim backs off at the first sign of pressure."""

    LIGHT = "light"  # idle: background cgroups, page cache first (then anon: idle_swap), low PSI
    DEEP = "deep"  # rebalance / scheduled stop: every non-protected cgroup, anon too
    EMERGENCY = "emergency"  # a notice with a deadline: high PSI threshold, bounded in time


DROP_GRACE_S = 1.0  # what a cancelled emergency may still spend dropping its swap cache


class Cancel(threading.Event):
    """Set to stop a reclaim. `grace_s`: what a cancelled emergency may still spend dropping
    the clean swap cache it left, each page of which the image would otherwise copy and write:
    a moment when the hibernation goes now, the time up to it when it goes next tick."""

    def __init__(self) -> None:
        super().__init__()
        self.grace_s = DROP_GRACE_S

    def stop(self, grace_s: float = DROP_GRACE_S) -> None:
        self.grace_s = grace_s
        self.set()


@dataclass(frozen=True, slots=True)
class ReclaimRequest:
    intensity: Intensity
    budget_s: float
    target_bytes: int | None = None  # None: as much as the stages allow
    cgroups: tuple[str, ...] = ()  # only these (relative to the memory root); () = the plan
    ignore_pressure: bool = False  # a person asked for it (`spotguard reclaim --ignore-pressure`)


@dataclass(frozen=True, slots=True)
class StageResult:
    """One stage: one cgroup, one backend, many small steps."""

    cgroup: str
    backend: str
    reclaimed_bytes: int
    file_bytes: int = 0
    anon_bytes: int = 0
    steps: int = 0
    # target | no-progress | done (one-shot backend) | pressure | budget | cancelled | vanished
    # | error
    stop_reason: str = ""
    duration_s: float = 0.0
    stop_detail: str = ""  # for people: which signal, its value and the threshold

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ReclaimResult:
    intensity: Intensity
    reclaimed_bytes: int
    duration_s: float
    # complete | target | budget | cancelled | pressure | unavailable | no-targets
    # | busy (another reclaim holds the host lock)
    stop_reason: str
    stages: tuple[StageResult, ...] = field(default_factory=tuple)
    swapped_out_bytes: int = 0  # from /proc/vmstat pswpout
    host_reclaimed_bytes: int = 0  # /proc/vmstat pgsteal_*: all reclaim on the host meanwhile
    backend: str = ""  # what detection chose; "" when none was available
    stop_detail: str = ""  # for people: which signal, its value and the threshold; who is busy

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for the state file and `spotguard status`."""
        return {**dataclasses.asdict(self), "intensity": self.intensity.value}


ProgressFn = Callable[[StageResult], None]


class Reclaimer(Protocol):
    """Runs one staged reclaim. Blocks up to `request.budget_s`; returns early on `cancel`."""

    def reclaim(
        self,
        request: ReclaimRequest,
        cancel: threading.Event,
        progress: ProgressFn | None = None,
    ) -> ReclaimResult: ...
