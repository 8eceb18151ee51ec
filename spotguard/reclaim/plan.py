"""Which cgroups a run reclaims, in order: background first, then the rest, never the protected.

Reclaiming a cgroup reclaims its whole subtree, so a cgroup with a protected (or already
planned) descendant is replaced by its children, recursively, around that descendant.
EMERGENCY adds the protected cgroups last: they are about to be frozen for hibernation anyway,
and the kernel would shrink them then, in the slow path we are trying to avoid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spotguard.config import ReclaimConfig
from spotguard.reclaim.api import Intensity

Children = Callable[[str], list[str]]  # relative name ("" is the root) -> child base names
Exists = Callable[[str], bool]


def plan(
    children: Children,
    exists: Exists,
    config: ReclaimConfig,
    intensity: Intensity,
    explicit: Iterable[str] = (),
) -> list[str]:
    """Cgroup names relative to the memory root, in the order a run takes them."""
    protected = [n for n in map(_normal, config.protected) if n]
    chosen = [n for n in map(_normal, explicit) if n]
    emergency = intensity is Intensity.EMERGENCY

    def expand(name: str, avoid: set[str]) -> list[str]:
        if any(name == a or name.startswith(a + "/") for a in avoid) or not exists(name):
            return []
        if not any(a.startswith(name + "/") for a in avoid):
            return [name]
        return [n for child in children(name) for n in expand(f"{name}/{child}", avoid)]

    if chosen:
        order = chosen if emergency else [n for c in chosen for n in expand(c, set(protected))]
        return _unique(order)
    background = [n for n in map(_normal, config.background) if n]
    order = [n for b in background for n in expand(b, set(protected))]
    if intensity is not Intensity.LIGHT:
        avoid = {*protected, *background}
        order += [n for child in children("") for n in expand(child, avoid)]
    if emergency:
        order += [p for p in protected if exists(p)]
    return _unique(order)


def _normal(name: str) -> str:
    return "/".join(part for part in name.split("/") if part and part != ".")


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
