"""cgroup v1: staged reclaim by briefly lowering ``memory.limit_in_bytes``, or ``force_empty``.

A lowered limit makes the cgroup's own allocations reclaim (or OOM) against it, so it is only
low while one step's write runs: restored right after every step, at stage end, and, from the
journal, at the next start if we died in between. Steps never ask for more than the cgroup's
reclaimable bytes, so the kernel answers EBUSY rather than squeezing the workload.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import structlog

from spotguard.hostfs import HostFS
from spotguard.reclaim.backend import Phase, StepOutcome
from spotguard.reclaim.cgroup import PAGE, Cgroup, CgroupError, CgroupPathError, CgroupVanished
from spotguard.reclaim.journal import LimitJournal
from spotguard.reclaim.writer import FileWriter

log = structlog.get_logger()


def restore_limit(cgroup: Cgroup, limit: int, writer: FileWriter) -> None:
    """Raising a limit never reclaims, so it needs no deadline and must not be cancelled."""
    with contextlib.suppress(CgroupVanished):
        cgroup.with_writer(writer).set_limit(limit)


class V1LimitBackend:
    name = "v1"
    one_shot = False

    def __init__(self, journal: LimitJournal, restore_writer: FileWriter) -> None:
        self._journal = journal
        self._restore_writer = restore_writer
        self._originals: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, target: Cgroup) -> Iterator[None]:
        """The original comes from the journal when someone else lowered the limit first: the
        live value may be their lowered one, and restoring that would cap the workload."""
        original = self._journal.claim(target.path, target.limit)
        self._originals[target.path] = original
        try:
            yield
        finally:
            del self._originals[target.path]
            restore_limit(target, original, self._restore_writer)
            self._journal.release(target.path)

    def step(self, target: Cgroup, nbytes: int, phase: Phase) -> StepOutcome:
        original = self._originals[target.path]
        lowered = max(target.current() - nbytes, PAGE)
        try:
            target.set_limit(lowered)
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # could not get down to it: nothing more to take
                return StepOutcome(exhausted=True)
            raise
        finally:
            restore_limit(target, original, self._restore_writer)
        return StepOutcome()


class ForceEmptyBackend:
    """``memory.force_empty``: everything the kernel can take, in one (interruptible) write."""

    name = "v1.force_empty"
    one_shot = True

    def stage(self, target: Cgroup) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def step(self, target: Cgroup, nbytes: int, phase: Phase) -> StepOutcome:
        try:
            target.force_empty()
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        return StepOutcome(exhausted=True)


def restore_journal(journal: LimitJournal, fs: HostFS, root: str, writer: FileWriter) -> None:
    """Put back the limits a previous run left lowered (only cgroups under `root`, and only
    those no live process is still working on)."""

    def restore(path: str, limit: int) -> bool:
        try:
            cgroup = Cgroup.under(fs, root, path, writer)
            if cgroup.exists():
                restore_limit(cgroup, limit, writer)
                log.info("reclaim.limit_restored", cgroup=path, limit=limit)
        except CgroupPathError:
            log.error("reclaim.journal_outside_root", cgroup=path, root=root)
        except (OSError, CgroupError) as exc:
            log.error("reclaim.limit_restore_failed", cgroup=path, limit=limit, error=str(exc))
            return False
        return True

    journal.recover(restore)
