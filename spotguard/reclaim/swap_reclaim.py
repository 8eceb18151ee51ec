"""The RFC's ``memory.swap.reclaim``: write a byte count, read back what the attempt reclaimed."""

from __future__ import annotations

import errno
from contextlib import AbstractContextManager, nullcontext

from spotguard.reclaim.backend import Phase, StepOutcome
from spotguard.reclaim.cgroup import Cgroup


class SwapReclaimBackend:
    """The interface drops page cache and swaps anon alike; the engine sizes steps per phase."""

    name = "swap.reclaim"
    one_shot = False

    def stage(self, target: Cgroup) -> AbstractContextManager[None]:
        return nullcontext()

    def step(self, target: Cgroup, nbytes: int, phase: Phase) -> StepOutcome:
        try:
            target.swap_reclaim(nbytes)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return StepOutcome(exhausted=True)
            raise
        reported = target.swap_reclaimed()
        return StepOutcome(exhausted=reported < nbytes, reported_bytes=reported)
