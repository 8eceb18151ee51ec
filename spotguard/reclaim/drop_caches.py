"""Global ``drop_caches``: the last resort where no cgroup interface exists. Off by default.

It is global (protected workloads lose their cache too) and drops clean pages only, so we
``sync`` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from spotguard.hostfs import HostFS
from spotguard.reclaim.backend import Phase, StepOutcome
from spotguard.reclaim.cgroup import Usage
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo
from spotguard.reclaim.writer import FileWriter

DROP_CACHES = "/proc/sys/vm/drop_caches"
PAGE_CACHE_ONLY = "1"


class HostMemory:
    """The whole host as a reclaim target, measured from /proc/meminfo."""

    name = "(host)"

    def __init__(self, fs: HostFS, writer: FileWriter) -> None:
        self._fs = fs
        self._writer = writer

    def usage(self) -> Usage:
        info = read_meminfo(self._fs)
        try:
            return Usage(
                total=info["MemTotal"] - info["MemFree"],
                file=info["Active(file)"] + info["Inactive(file)"],
                anon=info["Active(anon)"] + info["Inactive(anon)"],
            )
        except KeyError as exc:
            raise ProcFormatError(f"/proc/meminfo lacks {exc.args[0]}") from None

    def pressure(self) -> float | None:
        return None  # the engine reads host pressure for every stage anyway

    def drop_page_cache(self) -> None:
        self._writer.write(self._fs.path(DROP_CACHES), PAGE_CACHE_ONLY)


class DropCachesBackend:
    name = "drop_caches"
    one_shot = True

    def __init__(self, sync: Callable[[], None] = os.sync) -> None:
        self._sync = sync

    def stage(self, target: HostMemory) -> AbstractContextManager[None]:
        return nullcontext()

    def step(self, target: HostMemory, nbytes: int, phase: Phase) -> StepOutcome:
        self._sync()
        target.drop_page_cache()
        return StepOutcome(exhausted=True)
