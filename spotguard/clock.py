"""Time is injected: the planner and tests never read the real clock or sleep."""

from __future__ import annotations

import time
from typing import Protocol

_ONE_INSTANT_S = 0.001  # two reads further apart than this were preempted: read again


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (jumps forward across a hibernation)."""

    def monotonic(self) -> float:
        """Seconds on a clock that does not advance while the machine is hibernated."""

    def slept(self) -> float | None:
        """Seconds this machine spent suspended or hibernated since boot, from the kernel;
        None where the kernel cannot tell. Grows only across a real sleep, never because our
        own code was slow: the one sign of a resume that a busy tick cannot fake."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def slept(self) -> float | None:
        """CLOCK_BOOTTIME counts time suspended, CLOCK_MONOTONIC does not: their difference,
        read in one instant (the monotonic clock read on both sides of the boot clock)."""
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        if boottime is None:
            return None
        for _ in range(3):
            before = time.clock_gettime(time.CLOCK_MONOTONIC)
            boot = time.clock_gettime(boottime)
            after = time.clock_gettime(time.CLOCK_MONOTONIC)
            if after - before < _ONE_INSTANT_S:
                break
        return boot - (before + after) / 2

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock for tests: `sleep` and `advance` move wall and monotonic (a slow tick: time
    passes, nothing slept); `hibernate` moves the wall and the kernel's sleep count, as a real
    suspend does."""

    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._mono = monotonic
        self._slept = 0.0

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def slept(self) -> float | None:
        return self._slept

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def hibernate(self, seconds: float) -> None:
        self._wall += seconds
        self._slept += seconds
