"""What a reclaim backend does: one small step against one target, and the stage around it."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from spotguard.reclaim.cgroup import Usage


class Phase(StrEnum):
    """A stage takes page cache first, then (with swap to put it in) anonymous memory."""

    FILE = "file"
    ANON = "anon"


@dataclass(frozen=True, slots=True)
class StepOutcome:
    exhausted: bool = False  # the kernel said it could not reclaim all it was asked (EAGAIN...)
    reported_bytes: int | None = None  # the interface's own count, where it gives one


class Target(Protocol):
    """Something whose memory a backend shrinks: a cgroup, or the whole host (drop_caches)."""

    @property
    def name(self) -> str: ...

    def usage(self) -> Usage: ...

    def pressure(self) -> float | None: ...


T_contra = TypeVar("T_contra", bound=Target, contravariant=True)


class Backend(Protocol[T_contra]):
    @property
    def name(self) -> str: ...

    @property
    def one_shot(self) -> bool:
        """One write reclaims all it can: step sizes and phases do not apply."""

    def stage(self, target: T_contra) -> AbstractContextManager[None]:
        """Set up, and always undo, whatever the steps change (v1 limits)."""

    def step(self, target: T_contra, nbytes: int, phase: Phase) -> StepOutcome: ...
