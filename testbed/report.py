"""The RFC's hibernation table with our numbers beside it: text, JSON and one PNG.

Under TCG the emulated CPU is a co-bottleneck (compression ~100-130 MB/s), so the ratios
between arms of one run are the figures to compare with the RFC's, not the seconds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.measure import Measurement, event_times, memory_series

if TYPE_CHECKING:
    from testbed.run import ArmRun

MIB = float(1 << 20)
# The RFC: KVM guest, 8 GB, 100 MB/s disk; vanilla vs "with reclaim" (a one-shot `max`).
RFC = {
    ("hibernate", "default"): (49.07, 3.40),
    ("resume", "default"): (18.35, 7.13),
    ("hibernate", "0"): (71.55, 4.72),
    ("resume", "0"): (7.49, 7.41),
}
GOALS = {
    "hibernate_ratio": 0.05,
    "resume_ratio": 0.35,
    "image_over_floor": 1.2,
    "fg_p99_ms": 50.0,
}
Cell = Callable[[Measurement], float | None]
Summary = dict[str, dict[str, float | None]]  # "arm, image_size=N" -> figure name -> mean
DETAILS: list[tuple[str, Cell]] = [
    ("hibernate s", lambda m: m.hibernate_s),
    ("resume s", lambda m: m.resume_s),
    ("notice -> off s", lambda m: m.notice_to_exit_s),
    ("image copied MiB", lambda m: m.image_bytes / MIB),
    ("image written MiB", lambda m: m.written_bytes / MIB),
    ("kernel floor MiB", lambda m: m.floor_bytes / MIB),
    ("image / floor", lambda m: m.image_over_floor),
    ("bound s (written / disk)", lambda m: m.bound_s),
    ("kernel write s", lambda m: m.write_s),
    ("kernel shrink s", lambda m: m.prealloc_s),
    ("kernel read s", lambda m: m.read_s),
    ("swapped before MiB", lambda m: m.swap_used_bytes / MIB),
    ("reclaim before s", lambda m: m.reclaim_before_s),
    ("fg stall p99 ms", lambda m: m.fg_p99_ms),
    ("fg stall max ms", lambda m: m.fg_max_ms),
    ("touch before s", lambda m: m.warm_touch_s),
    ("re-touch after s", lambda m: m.retouch_s),
    ("checksum ok", lambda m: float(m.checksum_ok)),
]


def mean(runs: Sequence[Measurement], cell: Cell) -> float | None:
    values = [v for m in runs if (v := cell(m)) is not None]
    return statistics.fmean(values) if values else None


def write(facts: dict[str, Any], runs: Sequence[ArmRun], out: Path) -> Path:
    """Write ``hibernation-<MiB>M.{txt,json,png}`` under `out`; returns the text file."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"hibernation-{facts['memory_mib']}M"
    done = [r.measurement for r in runs if r.measurement is not None]
    groups = _groups(done)
    summary = _summary(groups)
    text = render(facts, groups, summary, [r.error for r in runs if r.error])
    stem.with_suffix(".txt").write_text(text)
    record = {
        "facts": facts,
        "rfc": {f"{what}, image_size={size}": v for (what, size), v in RFC.items()},
        "summary": summary,
        "runs": [
            {
                "measurement": asdict(r.measurement),
                "image_over_floor": r.measurement.image_over_floor,
            }
            if r.measurement
            else {"arm": r.observed.arm, "image_size": r.observed.image_size, "error": r.error}
            for r in runs
        ],
    }
    stem.with_suffix(".json").write_text(json.dumps(_finite(record), indent=2) + "\n")
    plotted = next((r for r in runs if r.measurement and r.observed.arm == "spotguard"), None)
    if plotted is not None:
        plot(plotted, facts, stem.with_suffix(".png"))
    return stem.with_suffix(".txt")


def _groups(done: Sequence[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in done:
        groups.setdefault((m.image_size, m.arm), []).append(m)
    return groups


def _summary(
    groups: dict[tuple[str, str], list[Measurement]],
) -> Summary:
    summary: Summary = {}
    for (size, arm), runs in groups.items():
        row = {name: mean(runs, cell) for name, cell in DETAILS}
        row["runs"] = len(runs)
        summary[f"{arm}, image_size={size}"] = row
    return summary


def _ratio(summary: Summary, arm: str, size: str, key: str) -> float:
    ours = summary.get(f"{arm}, image_size={size}", {}).get(key)
    base = summary.get(f"vanilla, image_size={size}", {}).get(key)
    return ours / base if ours is not None and base else math.nan


def goals(summary: Summary) -> list[tuple[str, float, bool]]:
    """The issue's goals for the spotguard arm at the default image size."""
    sg = summary.get("spotguard, image_size=default", {})
    one = summary.get("oneshot, image_size=default", {})
    van = summary.get("vanilla, image_size=default", {})
    p99, p99_one = sg.get("fg stall p99 ms"), one.get("fg stall p99 ms")
    retouch, retouch_van = sg.get("re-touch after s"), van.get("re-touch after s")
    floor = sg.get("image / floor")
    hib = _ratio(summary, "spotguard", "default", "hibernate s")
    res = _ratio(summary, "spotguard", "default", "resume s")
    nan = math.nan
    return [
        (
            f"hibernate spotguard/vanilla <= {GOALS['hibernate_ratio']}",
            hib,
            hib <= GOALS["hibernate_ratio"],
        ),
        (f"resume spotguard/vanilla <= {GOALS['resume_ratio']}", res, res <= GOALS["resume_ratio"]),
        (
            f"image <= {GOALS['image_over_floor']} x kernel floor",
            floor or nan,
            floor is not None and floor <= GOALS["image_over_floor"],
        ),
        (
            f"fg stall p99 < {GOALS['fg_p99_ms']:g} ms",
            p99 or nan,
            p99 is not None and p99 < GOALS["fg_p99_ms"],
        ),
        (
            "fg stall p99 below one-shot's",
            (p99 or nan) - (p99_one or nan),
            p99 is not None and p99_one is not None and p99 < p99_one,
        ),
        (
            "re-touch no worse than vanilla (s over vanilla)",
            (retouch or nan) - (retouch_van or nan),
            retouch is not None and retouch_van is not None and retouch <= retouch_van,
        ),
        (
            "memory checksum equal after resume (all arms)",
            min((r.get("checksum ok") or 0.0) for r in summary.values()) if summary else nan,
            bool(summary) and all(r.get("checksum ok") == 1.0 for r in summary.values()),
        ),
    ]


def render(
    facts: dict[str, Any],
    groups: dict[tuple[str, str], list[Measurement]],
    summary: Summary,
    errors: Sequence[str],
) -> str:
    arms = [a for a in ("vanilla", "oneshot", "spotguard") if any(k[1] == a for k in groups)]
    others = [a for a in arms if a != "vanilla"]
    lines = [
        f"# Hibernation, {facts['memory_mib']} MiB guest, {facts['accel']} "
        f"({facts['cpus']} vCPUs, {facts['disk_mib_s']:.0f} MiB/s disk, {facts['workload']}, "
        f"{facts['idle_s']:g} s idle, {facts['runs']} run(s) per arm; means)",
        "",
        "RFC: KVM, 8 GB guest. Ours: ratios between arms of one run are what to compare"
        + (" (TCG: the emulated CPU is a co-bottleneck)." if facts["accel"] == "TCG" else "."),
        "",
        _row(
            ["", "RFC vanilla", "RFC reclaim", "RFC ratio"]
            + [f"ours {a}" for a in arms]
            + [f"{a}/vanilla" for a in others]
        ),
        _row(["---"] * (4 + len(arms) + len(others))),
    ]
    for (what, size), (rfc_van, rfc_prep) in RFC.items():
        key = f"{what} s"
        cells = [_fmt(summary.get(f"{a}, image_size={size}", {}).get(key), " s") for a in arms]
        ratios = [_fmt(_ratio(summary, a, size, key)) for a in others]
        rfc = [f"{rfc_van:.2f} s", f"{rfc_prep:.2f} s", f"{rfc_prep / rfc_van:.3f}"]
        lines.append(_row([f"{what}, image_size={size}", *rfc, *cells, *ratios]))
    columns = sorted(summary)
    lines += ["", "| per arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, _ in DETAILS:
        lines.append(
            f"| {name} | " + " | ".join(_fmt(summary[c].get(name)) for c in columns) + " |"
        )
    lines += ["", "Goals (spotguard arm, image_size default):"]
    for label, value, met in goals(summary):
        lines.append(f"- [{'met' if met else 'NOT met'}] {label}: {_fmt(value)}")
    lines += [f"- run failed: {e}" for e in errors]
    return "\n".join(lines) + "\n"


def plot(run: ArmRun, facts: dict[str, Any], path: Path) -> None:
    """Memory and reclaim over time for one spotguard run's first boot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    since = run.observed.first_started
    series = memory_series(run.observed.first, since)
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    times = [s["t"] for s in series]
    for key, label in (
        ("load", "load.slice memory.current"),
        ("anon", "AnonPages"),
        ("cached", "page cache"),
        ("swap_used", "swap used"),
    ):
        axis.plot(times, [s.get(key, math.nan) / MIB for s in series], label=label)
    for event in event_times(run.observed.first, since):
        name = str(event["event"])
        style = ":" if name.startswith("reclaim.") else "--"
        axis.axvline(float(event["t"]), color="grey", linestyle=style, linewidth=0.8)
        if not name.startswith("reclaim.stage"):
            axis.annotate(
                name.removeprefix("TESTBED "),
                (float(event["t"]), 0),
                rotation=90,
                fontsize=7,
                va="bottom",
                xytext=(2, 4),
                textcoords="offset points",
            )
    axis.set_xlabel("seconds since QEMU start (host clock)")
    axis.set_ylabel("MiB")
    axis.set_title(
        f"spotguard arm, {facts['memory_mib']} MiB guest, {facts['accel']}: "
        "memory while idle, reclaiming and hibernating"
    )
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}{unit}" if abs(value) < 1 else f"{value:.2f}{unit}"


def _finite(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be computed is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
