"""`spotguard run --dry-run`: the parts that act, replaced by ones that say what they would do.

The agent, its monitors and its planner run unchanged, so a dry run makes the decisions the
real run would; only the parts with effects differ. Nothing is written to a cgroup or to
/sys/power, EC2 is not called, no hook runs and no webhook is sent: each logs a ``dry_run.*``
event with what it would have done (the reclaim plan per cgroup with its bytes, the hooks
that would run, the image_size it would set, the hibernation it would issue). The agent's
own state file is still written, so `spotguard status` shows the dry run.

`hibernate.mode = "none"` is a different thing: it reclaims for real and only skips the
hibernation.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from spotguard.config import ReclaimConfig
from spotguard.hooks import HookRunner
from spotguard.hostfs import HostFS
from spotguard.image_size import ImageSizeControl
from spotguard.reclaim.api import Intensity, ProgressFn, ReclaimRequest, ReclaimResult
from spotguard.reclaim.cgroup import Cgroup, CgroupError, CgroupPathError, Usage
from spotguard.reclaim.detect import memory_root
from spotguard.reclaim.plan import plan
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo
from spotguard.trigger import TriggerResult

log = structlog.get_logger()


class NoWrites:
    """The FileWriter of a dry run: any write that slipped through is refused, not made."""

    def write(self, path: Path, data: str) -> None:
        raise OSError(errno.EROFS, f"dry run: not writing {data.strip()!r}", str(path))


class DryReclaimer:
    """Implements `Reclaimer`: plans the run as the engine would, logs it, reclaims nothing.

    Per cgroup, in the engine's order, it says what the stage could take: page cache for a
    light run, page cache and (with swap free) anonymous memory otherwise, within the
    request's target.
    """

    def __init__(self, fs: HostFS, config: ReclaimConfig) -> None:
        self._fs = fs
        self._config = config
        self._writer = NoWrites()

    def reclaim(
        self,
        request: ReclaimRequest,
        cancel: threading.Event,
        progress: ProgressFn | None = None,
    ) -> ReclaimResult:
        root, hierarchy = memory_root(self._fs, self._config.cgroup_root)
        fields: dict[str, Any] = {
            "intensity": str(request.intensity),
            "budget_s": round(request.budget_s, 1),
            "target_bytes": request.target_bytes,
        }
        if root is None:
            log.info("dry_run.reclaim", **fields, would="nothing: no memory cgroup found")
            return ReclaimResult(request.intensity, 0, 0.0, "unavailable", backend="dry-run")
        anon_too = request.intensity is not Intensity.LIGHT and self._swap_free() > 0
        left = request.target_bytes
        total = 0
        names = plan(
            lambda name: self._children(root, name),
            lambda name: self._exists(root, name),
            self._config,
            request.intensity,
            request.cgroups,
        )
        for name in names:
            usage = self._usage(root, name)
            if usage is None:
                continue
            could = usage.file + (usage.anon if anon_too else 0)
            would = could if left is None else min(could, left)
            if left is not None:
                left -= would
            total += would
            log.info(
                "dry_run.reclaim_stage",
                cgroup=name,
                hierarchy=hierarchy,
                would_reclaim_bytes=would,
                file_bytes=usage.file,
                anon_bytes=usage.anon if anon_too else 0,
            )
        log.info("dry_run.reclaim", **fields, cgroups=names, would_reclaim_bytes=total)
        reason = "dry-run" if names else "no-targets"
        return ReclaimResult(request.intensity, 0, 0.0, reason, backend="dry-run")

    def _cgroup(self, root: str, name: str) -> Cgroup:
        return Cgroup.under(self._fs, root, name, self._writer)

    def _children(self, root: str, name: str) -> list[str]:
        try:
            return self._cgroup(root, name).children()
        except (CgroupError, CgroupPathError):
            return []

    def _exists(self, root: str, name: str) -> bool:
        try:
            return self._cgroup(root, name).exists()
        except CgroupPathError:
            return False

    def _usage(self, root: str, name: str) -> Usage | None:
        try:
            return self._cgroup(root, name).usage()
        except (CgroupError, CgroupPathError, OSError) as exc:
            log.info("dry_run.reclaim_stage", cgroup=name, would="skip", error=str(exc))
            return None

    def _swap_free(self) -> int:
        try:
            return read_meminfo(self._fs).get("SwapFree", 0)
        except ProcFormatError:
            return 0


class DryHookRunner:
    """Says which hooks would run (after the same ownership checks) and runs none."""

    def __init__(self, runner: HookRunner) -> None:
        self._runner = runner

    def run(
        self, kind: str, event_env: Mapping[str, str], budget_s: float | None = None
    ) -> Sequence[object]:
        for path, unsafe in self._runner.checked(kind):
            would = f"skip: {unsafe}" if unsafe else "run"
            log.info("dry_run.hook", kind=kind, hook=path.name, would=would, budget_s=budget_s)
        return []


class DryImageSize(ImageSizeControl):
    """Says what /sys/power/image_size would be set to; never writes it."""

    def set_to(self, target_bytes: int) -> None:
        log.info("dry_run.image_size", would_set_to_bytes=target_bytes)

    def restore(self) -> None:
        """Nothing was changed."""


class DryWebhook:
    """Says where the webhook would go (the host only) and what it would say."""

    def __init__(self, host: str) -> None:
        self._host = host

    def send(self, payload: Mapping[str, Any], deadline: float | None) -> bool:
        log.info("dry_run.webhook", host=self._host, would_send=dict(payload))
        return True


class DryHibernator:
    """The hibernation the configured mode would issue, logged and reported as issued, so the
    agent goes on exactly as after a real one."""

    def __init__(self, mode: str, would: str) -> None:
        self.mode = mode
        self._would = would

    def hibernate(self) -> TriggerResult:
        log.info("dry_run.hibernate", mode=self.mode, would=self._would)
        return TriggerResult(issued=True, reason=f"dry run: nothing issued (would {self._would})")

    def preflight(self) -> TriggerResult:
        return TriggerResult(issued=True, reason=f"dry run: would {self._would}")
