"""The order a run takes cgroups in, around protected and already-planned subtrees."""

from __future__ import annotations

from spotguard.config import ReclaimConfig
from spotguard.reclaim.api import Intensity
from spotguard.reclaim.plan import plan

TREE = {
    "": ["app.slice", "batch.slice", "system.slice"],
    "system.slice": ["db.service", "cron.service", "batch.service"],
    "app.slice": [],
    "batch.slice": [],
}
EXISTING = {"", *TREE[""], *(f"system.slice/{c}" for c in TREE["system.slice"])}
CONFIG = ReclaimConfig(
    background=("batch.slice", "system.slice/batch.service", "missing.slice"),
    protected=("system.slice/db.service",),
)


def order(intensity: Intensity, config: ReclaimConfig = CONFIG, *explicit: str) -> list[str]:
    return plan(lambda n: TREE.get(n, []), EXISTING.__contains__, config, intensity, explicit)


def test_light_is_background_only() -> None:
    assert order(Intensity.LIGHT) == ["batch.slice", "system.slice/batch.service"]


def test_deep_adds_the_rest_around_protected_and_background_subtrees() -> None:
    assert order(Intensity.DEEP) == [
        "batch.slice",
        "system.slice/batch.service",
        "app.slice",
        "system.slice/cron.service",  # system.slice itself holds db.service: split around it
    ]


def test_emergency_takes_protected_last() -> None:
    assert order(Intensity.EMERGENCY)[-1] == "system.slice/db.service"
    assert len(order(Intensity.EMERGENCY)) == 5


def test_a_protected_parent_protects_its_subtree() -> None:
    config = ReclaimConfig(background=("system.slice/cron.service",), protected=("system.slice",))
    assert order(Intensity.DEEP, config) == ["app.slice", "batch.slice"]


def test_explicit_cgroups_replace_the_plan_but_not_the_protection() -> None:
    assert order(Intensity.DEEP, CONFIG, "system.slice", "app.slice/", "nope") == [
        "system.slice/cron.service",
        "system.slice/batch.service",
        "app.slice",
    ]
    assert order(Intensity.EMERGENCY, CONFIG, "system.slice") == ["system.slice"]
