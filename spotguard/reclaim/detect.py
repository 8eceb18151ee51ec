"""Which reclaim interfaces this host has, found once at start and shown by `spotguard check`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import structlog

from spotguard.config import ReclaimConfig
from spotguard.hostfs import HostFS, read_kernel_text
from spotguard.reclaim.cgroup import Cgroup, CgroupError, CgroupPathError
from spotguard.reclaim.deadline import DEFAULT_SIGNAL, can_interrupt
from spotguard.reclaim.drop_caches import DROP_CACHES
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo
from spotguard.reclaim.v2 import probe_swappiness
from spotguard.reclaim.writer import FileWriter, LibcWriter
from spotguard.units import human_bytes

log = structlog.get_logger()

# Best first: upstream v2, the RFC's interface, v1 limits, then the global last resort.
_INTERFACES = (
    ("v2", "memory.reclaim"),
    ("swap.reclaim", "memory.swap.reclaim"),
    ("v1", "memory.limit_in_bytes"),
)


@dataclass(frozen=True, slots=True)
class BackendReport:
    cgroup_root: str  # as configured
    memory_root: str | None  # where the memory cgroups are (cgroup_root, or its v1 memory/)
    hierarchy: str  # v2 | v1 | none
    available: tuple[str, ...]  # usable backends here, best first
    chosen: str | None  # what a run uses: reclaim.backend, or the best available
    swappiness: bool  # memory.reclaim takes swappiness= (page cache first)
    swap_free_bytes: int  # 0: anonymous memory cannot be reclaimed, only page cache
    interruptible: bool  # a write can be cut short by its deadline or a cancel
    notes: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.chosen is not None

    def describe(self) -> str:
        """One line for `spotguard check`."""
        if self.chosen is None:
            return "; ".join(self.notes) or "no reclaim interface found"
        where = f"{self.hierarchy} at {self.memory_root}" if self.memory_root else "host-wide"
        extras = [
            "page cache first" if self.swappiness else "",
            f"{human_bytes(self.swap_free_bytes)} swap free" if self.swap_free_bytes else "no swap",
            "" if self.interruptible else "writes not interruptible",
        ]
        return f"{self.chosen} ({where}; {', '.join(e for e in extras if e)})"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def memory_root(
    fs: HostFS, cgroup_root: str, notes: list[str] | None = None
) -> tuple[str | None, str]:
    """(path, hierarchy): the root itself on v2 or a v1 memory mount, else its ``memory/``.

    A ``cgroup.controllers`` that cannot be read (a directory, garbage, too big) is a note and
    "not this one", never a crash: the agent must start on any host.
    """
    for candidate in (cgroup_root, f"{cgroup_root.rstrip('/')}/memory"):
        base = fs.path(candidate)
        if (base / "memory.limit_in_bytes").is_file():
            return candidate, "v1"
        controllers = base / "cgroup.controllers"
        try:
            if "memory" in read_kernel_text(controllers).split():
                return candidate, "v2"
        except FileNotFoundError:
            continue
        except OSError as exc:
            if notes is not None:
                notes.append(f"cannot read {controllers}: {exc.strerror or exc}")
    return None, "none"


def detect_backends(
    fs: HostFS,
    config: ReclaimConfig,
    writer: FileWriter | None = None,
    signum: int = DEFAULT_SIGNAL,
) -> BackendReport:
    """Look, and probe ``swappiness=`` with a 0-byte write (it reclaims nothing)."""
    notes: list[str] = []
    root, hierarchy = memory_root(fs, config.cgroup_root, notes)
    found = {name: _find(fs, root, file, notes) for name, file in _INTERFACES} if root else {}
    available = [name for name, where in found.items() if where is not None]
    if fs.exists(DROP_CACHES):
        if config.allow_drop_caches:
            available.append("drop_caches")
        else:
            notes.append("drop_caches is off (reclaim.allow_drop_caches)")
    swappiness = False
    if root is not None and (where := found.get("v2")) is not None:
        try:
            swappiness = probe_swappiness(Cgroup.under(fs, root, where, writer or LibcWriter()))
        except (OSError, CgroupError, CgroupPathError) as exc:
            notes.append(f"swappiness probe failed: {exc}")
        if not swappiness:
            notes.append("memory.reclaim has no swappiness=: page cache cannot be taken first")
    if config.backend == "auto":
        chosen = available[0] if available else None
    else:
        chosen = config.backend if config.backend in available else None
        if chosen is None:
            notes.append(f"reclaim.backend={config.backend} is not available here")
    if root is None:
        notes.append(f"no memory cgroup hierarchy under {config.cgroup_root}")
    try:
        swap_free = read_meminfo(fs).get("SwapFree", 0)
    except ProcFormatError as exc:
        swap_free = 0
        notes.append(str(exc))
    report = BackendReport(
        cgroup_root=config.cgroup_root,
        memory_root=root,
        hierarchy=hierarchy,
        available=tuple(available),
        chosen=chosen,
        swappiness=swappiness,
        swap_free_bytes=swap_free,
        interruptible=can_interrupt(signum),
        notes=tuple(notes),
    )
    log.info("reclaim.detected", **report.to_dict())
    return report


def _find(fs: HostFS, root: str, file: str, notes: list[str]) -> str | None:
    """The cgroup (relative name; "" is the root) that has `file`: the root, else a child.

    Every v2 cgroup has memory.reclaim, the root included; look at children too for trees
    (containers, simulations) that only show us part of the hierarchy.
    """
    base = fs.path(root)
    try:
        children = sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
    except OSError:
        children = []
    for name in ("", *children):
        path = base / name / file
        if not path.exists():
            continue
        if not path.is_file():
            notes.append(f"{path} is not a file")
            return None
        if os.access(path, os.W_OK):
            return name
        notes.append(f"{path} is not writable (run as root)")
        return None
    return None
