"""cgroup v2 ``memory.reclaim`` (5.19+): write a byte count, measure the effect ourselves."""

from __future__ import annotations

import errno
from contextlib import AbstractContextManager, nullcontext

from spotguard.reclaim.backend import Phase, StepOutcome
from spotguard.reclaim.cgroup import Cgroup


def probe_swappiness(cgroup: Cgroup) -> bool:
    """Does this kernel take ``swappiness=``? Asking for 0 bytes costs nothing; EINVAL means no."""
    try:
        cgroup.reclaim(0, swappiness=0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


class V2Backend:
    """Page cache first via ``swappiness=0`` where the kernel has it; plain writes otherwise."""

    name = "v2"
    one_shot = False

    def __init__(self, swappiness: bool) -> None:
        self._swappiness = swappiness

    def stage(self, target: Cgroup) -> AbstractContextManager[None]:
        return nullcontext()

    def step(self, target: Cgroup, nbytes: int, phase: Phase) -> StepOutcome:
        swappiness = 0 if phase is Phase.FILE and self._swappiness else None
        try:
            target.reclaim(nbytes, swappiness)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:  # reclaimed less than asked: done for now
                return StepOutcome(exhausted=True)
            raise
        return StepOutcome()
