"""The RFC's hibernation table with our numbers beside it, and issue 11's goals: text, JSON, PNG.

Under TCG the emulated CPU is a co-bottleneck (compression ~36-130 MB/s), so the ratios
between arms of one run are the figures to compare with the RFC's, not the seconds. With
several runs per arm every figure is the median, with min-max beside it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.measure import (
    AGENT_ARMS,
    IMAGE_SIZES,
    Measurement,
    agent_events,
    event_times,
    markers,
    memory_series,
)
from testbed.record import ArmRun

MIB = float(1 << 20)
ARM_ORDER = ("vanilla", "oneshot", "spotguard", "spotguard-hibernate")
# The RFC: KVM guest, 8 GB, 100 MB/s disk; vanilla vs "with reclaim" (a one-shot `max`).
RFC = {
    ("hibernate", "default"): (49.07, 3.40),
    ("resume", "default"): (18.35, 7.13),
    ("hibernate", "0"): (71.55, 4.72),
    ("resume", "0"): (7.49, 7.41),
}
# Issue 11's goals for the spotguard arm (medians), and for every run where it says so.
GOALS = {
    "hibernate_ratio": 0.069,  # the RFC's own ratio
    "hibernate_stretch": 0.05,
    "resume_ratio": 0.39,
    "image_over_smallest": 1.2,  # x vanilla's image at image_size=0, the kernel's smallest
    "deadline_margin_s": 10.0,
    "prediction_error": 0.25,
    "emergency_vs_oneshot": 0.9,
    "fg_p99_ms": 50.0,
}
Cell = Callable[[Measurement], float | None]
Stats = dict[str, float | None]  # median, min, max, n
Summary = dict[str, dict[str, Stats]]  # "arm, image_size=N" -> figure name -> stats
DETAILS: list[tuple[str, Cell]] = [
    ("hibernate s", lambda m: m.hibernate_s),
    ("predicted hibernate s (agent, + fixed overhead)", lambda m: m.predicted_s),
    ("prediction error (pred/measured - 1)", lambda m: m.prediction_error),
    ("predicted shrink s (agent)", lambda m: m.predicted_shrink_s),
    ("predicted write s (agent)", lambda m: m.predicted_write_s),
    ("resume s", lambda m: m.resume_s),
    ("notice -> off s", lambda m: m.notice_to_exit_s),
    ("deadline s", lambda m: m.deadline_s),
    ("deadline slack s", lambda m: m.deadline_slack_s),
    ("image copied MiB", lambda m: m.image_bytes / MIB),
    ("image written MiB", lambda m: m.written_bytes / MIB),
    ("saveable at trigger MiB", lambda m: m.saveable_bytes / MIB),
    ("kernel floor MiB (reserved incl.)", lambda m: m.floor_bytes / MIB),
    ("reserved present MiB", lambda m: m.reserved_bytes / MIB),
    ("image / floor", lambda m: m.image_over_floor),
    ("swap cache at trigger MiB", lambda m: m.swap_cached_bytes / MIB),
    ("bound s (written / disk)", lambda m: m.bound_s),
    ("kernel preallocate (shrink) s", lambda m: m.prealloc_s),
    ("kernel snapshot (devices, copy) s", lambda m: m.snapshot_s),
    ("kernel write s", lambda m: m.write_s),
    ("other (freeze, sync, power-off) s", lambda m: m.other_s),
    ("at the kernel floor s (this run's rates and fixed costs)", lambda m: m.at_floor_s),
    ("kernel write MB/s", lambda m: m.written_bytes / 1e6 / m.write_s if m.write_s else None),
    ("kernel read s", lambda m: m.read_s),
    ("resume at the kernel floor s (this run's boot and read rate)", lambda m: m.resume_at_floor_s),
    ("resume before read s (boot)", lambda m: m.resume_s - m.read_s),
    ("swapped before MiB", lambda m: m.swap_used_bytes / MIB),
    ("reclaim before s", lambda m: m.reclaim_before_s),
    (
        "anon reclaim MB/s (oneshot write / emergency)",
        lambda m: None if m.anon_reclaim_bps is None else m.anon_reclaim_bps / 1e6,
    ),
    ("fg stall p99 ms", lambda m: m.fg_p99_ms),
    ("fg stall max ms", lambda m: m.fg_max_ms),
    ("touch before s", lambda m: m.warm_touch_s),
    ("re-touch after s", lambda m: m.retouch_s),
    (
        "paged back on re-touch MiB (swap - swap cache, at resume)",
        lambda m: m.paged_back_bytes / MIB,
    ),
    ("readahead asked back MiB (after resume)", lambda m: m.readahead_bytes / MIB),
    ("readahead asking s", lambda m: m.readahead_s),
    (
        "re-touch MB/s paged back",
        lambda m: m.paged_back_bytes / 1e6 / m.retouch_s if m.retouch_s else None,
    ),
    ("checksum ok", lambda m: float(m.checksum_ok)),
]


@dataclass(frozen=True, slots=True)
class Goal:
    label: str
    value: float | None
    met: bool | None  # None: not measured in these runs

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else "NOT met"


def stats(runs: Sequence[Measurement], cell: Cell) -> Stats:
    values = [v for m in runs if (v := cell(m)) is not None and not math.isnan(v)]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def write(runs: Sequence[ArmRun], out: Path) -> Path:
    """Write ``hibernation-<MiB>M.{txt,json,png}`` under `out`; returns the text file."""
    out.mkdir(parents=True, exist_ok=True)
    facts = _facts(runs)
    stem = out / f"hibernation-{facts['memory_mib']}M"
    groups = by_arm([r.measurement for r in runs if r.measurement is not None])
    summary = {f"{arm}, image_size={size}": _summary(ms) for (size, arm), ms in groups.items()}
    checks = goals(groups)
    stem.with_suffix(".txt").write_text(render(facts, runs, groups, summary, checks))
    record = {
        "facts": facts,
        "commands": _commands(runs),
        "rfc": {f"{what}, image_size={size}": v for (what, size), v in RFC.items()},
        "summary": summary,
        "goals": [{**asdict(g), "verdict": g.verdict} for g in checks],
        "runs": [_run_record(r) for r in runs],
    }
    stem.with_suffix(".json").write_text(json.dumps(_finite(record), indent=2) + "\n")
    plotted = [r for r in runs if r.measurement and r.observed.arm == "spotguard"]
    plotted.sort(key=lambda r: r.observed.image_size == "default")  # the goals' row last
    if plotted:
        plot(plotted[-1], facts, stem.with_suffix(".png"))
    return stem.with_suffix(".txt")


def _run_record(run: ArmRun) -> dict[str, Any]:
    base = {
        "arm": run.observed.arm,
        "image_size": run.observed.image_size,
        "started_utc": run.info.started_utc,
        "command": run.info.command,
        "host_load": list(run.info.host_load),
    }
    m = run.measurement
    if m is None:
        return {**base, "error": run.error}
    derived = {
        "image_over_floor": m.image_over_floor,
        "prediction_error": m.prediction_error,
        "deadline_slack_s": m.deadline_slack_s,
    }
    return {**base, "measurement": asdict(m), **derived}


def _facts(runs: Sequence[ArmRun]) -> dict[str, Any]:
    """The plan's facts of the latest run, with every value that differed between runs."""
    facts: dict[str, Any] = dict(runs[-1].info.facts) if runs else {}
    for key in list(facts):
        seen = sorted({str(r.info.facts.get(key)) for r in runs})
        if len(seen) > 1:
            facts[key] = " / ".join(seen)
    facts["runs"] = len(runs)
    return facts


def _commands(runs: Sequence[ArmRun]) -> list[str]:
    return list(dict.fromkeys(r.info.command for r in runs if r.info.command))


def by_arm(done: Sequence[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in done:
        groups.setdefault((m.image_size, m.arm), []).append(m)
    return groups


def _summary(runs: Sequence[Measurement]) -> dict[str, Stats]:
    return {name: stats(runs, cell) for name, cell in DETAILS}


def _median(
    groups: dict[tuple[str, str], list[Measurement]], arm: str, size: str, cell: Cell
) -> float | None:
    return stats(groups.get((size, arm), []), cell)["median"]


def _ratio(
    groups: dict[tuple[str, str], list[Measurement]],
    arm: str,
    size: str,
    cell: Cell,
    base: tuple[str, str] | None = None,
) -> float | None:
    """arm's median over the base's (vanilla at the same image size unless told)."""
    base_arm, base_size = base or ("vanilla", size)
    ours, theirs = _median(groups, arm, size, cell), _median(groups, base_arm, base_size, cell)
    return ours / theirs if ours is not None and theirs else None


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def goals(groups: dict[tuple[str, str], list[Measurement]]) -> list[Goal]:
    """Issue 11's goals, each met / NOT met / not measured in these runs."""

    def hib(m: Measurement) -> float:
        return m.hibernate_s

    def image(m: Measurement) -> float:
        return float(m.image_bytes)

    found = [
        Goal(
            f"hibernate spotguard/vanilla <= {GOALS['hibernate_ratio']} (image_size=default)",
            ratio := _ratio(groups, "spotguard", "default", hib),
            _at_most(ratio, GOALS["hibernate_ratio"]),
        ),
        Goal(
            f"stretch: hibernate spotguard/vanilla <= {GOALS['hibernate_stretch']}",
            ratio,
            _at_most(ratio, GOALS["hibernate_stretch"]),
        ),
        Goal(
            f"hibernate spotguard/vanilla <= {GOALS['hibernate_ratio']} (image_size=0)",
            ratio0 := _ratio(groups, "spotguard", "0", hib),
            _at_most(ratio0, GOALS["hibernate_ratio"]),
        ),
        Goal(
            f"image <= {GOALS['image_over_smallest']} x the kernel's smallest "
            "(spotguard default / vanilla image_size=0)",
            smallest := _ratio(groups, "spotguard", "default", image, ("vanilla", "0")),
            _at_most(smallest, GOALS["image_over_smallest"]),
        ),
        Goal(
            f"resume spotguard/vanilla <= {GOALS['resume_ratio']} (image_size=default)",
            res := _ratio(groups, "spotguard", "default", lambda m: m.resume_s),
            _at_most(res, GOALS["resume_ratio"]),
        ),
    ]
    margin = GOALS["deadline_margin_s"]
    for arm in ("spotguard", "vanilla", "oneshot"):
        runs = [m for (_, a), ms in groups.items() if a == arm for m in ms]
        slack = [s for m in runs if (s := m.deadline_slack_s) is not None]
        found.append(
            Goal(
                f"{arm}: notice -> off <= deadline - {margin:g} s in every run, all rows "
                f"({len(slack)} runs; least slack s)",
                min(slack) if slack else None,
                all(s >= margin for s in slack) if slack else None,
            )
        )
    sg = [m for (_, a), ms in groups.items() if a == "spotguard" for m in ms]
    errors = [e for m in sg if (e := m.prediction_error) is not None]
    worst = max(errors, key=abs) if errors else None
    # A run whose agent logged no prediction fails the goal: an absent prediction is no fit.
    predicted_all = bool(sg) and len(errors) == len(sg)
    found.append(
        Goal(
            f"spotguard: prediction within +-{GOALS['prediction_error']:.0%} of the measured "
            f"hibernation in every run ({len(errors)} of {len(sg)} runs logged one; worst)",
            worst,
            None
            if not sg
            else predicted_all and all(abs(e) <= GOALS["prediction_error"] for e in errors),
        )
    )

    def anon(m: Measurement) -> float | None:
        return m.anon_reclaim_bps

    emergency = _ratio(groups, "spotguard", "default", anon, ("oneshot", "default"))
    found += [
        Goal(
            f"emergency anon reclaim >= {GOALS['emergency_vs_oneshot']} x oneshot's write "
            "(swap-out MB/s, image_size=default)",
            emergency,
            None if emergency is None else emergency >= GOALS["emergency_vs_oneshot"],
        ),
    ]
    p99 = _median(groups, "spotguard", "default", lambda m: m.fg_p99_ms)
    p99_one = _median(groups, "oneshot", "default", lambda m: m.fg_p99_ms)
    retouch = _median(groups, "spotguard", "default", lambda m: m.retouch_s)
    retouch_van = _median(groups, "vanilla", "default", lambda m: m.retouch_s)
    every = [m for ms in groups.values() for m in ms]
    found += [
        Goal(
            f"fg stall p99 < {GOALS['fg_p99_ms']:g} ms",
            p99,
            None if p99 is None else p99 < GOALS["fg_p99_ms"],
        ),
        Goal(
            "fg stall p99 below one-shot's (ms over one-shot)",
            None if p99 is None or p99_one is None else p99 - p99_one,
            None if p99 is None or p99_one is None else p99 < p99_one,
        ),
        Goal(
            "re-touch after resume no worse than vanilla (s over vanilla)",
            None if retouch is None or retouch_van is None else retouch - retouch_van,
            None if retouch is None or retouch_van is None else retouch <= retouch_van,
        ),
        Goal(
            f"memory checksum equal after resume (every run of every arm: {len(every)})",
            float(sum(m.checksum_ok for m in every)) if every else None,
            all(m.checksum_ok for m in every) if every else None,
        ),
    ]
    return found


def limits(groups: dict[tuple[str, str], list[Measurement]]) -> list[str]:
    """What no agent could beat here: an image at the kernel's floor, at the spotguard runs'
    own rates and fixed costs, over vanilla's (the RFC's ratios at their best)."""
    found = []
    for size in IMAGE_SIZES:
        for what, at_floor, took in (
            ("hibernate", lambda m: m.at_floor_s, lambda m: m.hibernate_s),
            ("resume", lambda m: m.resume_at_floor_s, lambda m: m.resume_s),
        ):
            floor = _median(groups, "spotguard", size, at_floor)
            vanilla = _median(groups, "vanilla", size, took)
            if floor is not None and vanilla:
                found.append(
                    f"- limit: an image at the kernel floor would {what} in {floor / vanilla:.3f}"
                    f" x vanilla's time here (image_size={size}; spotguard's runs at the floor"
                    " / vanilla's, medians)"
                )
    return found


def _busy(facts: dict[str, Any]) -> list[str]:
    workers = facts.get("busy_workers")
    if workers is None:
        return []
    return [f"Busy host: {workers} process(es) spinning on the host beside every run."]


def render(
    facts: dict[str, Any],
    runs: Sequence[ArmRun],
    groups: dict[tuple[str, str], list[Measurement]],
    summary: Summary,
    checks: Sequence[Goal],
) -> str:
    arms = [a for a in ARM_ORDER if any(k[1] == a for k in groups)]
    others = [a for a in arms if a != "vanilla"]
    several = any(len(ms) > 1 for ms in groups.values())
    lines = [
        f"# Hibernation, {facts.get('memory_mib')} MiB guest, {facts.get('accel')} "
        f"({facts.get('cpus')} vCPUs, {_num(facts.get('disk_mib_s'))} MiB/s disk, "
        f"{facts.get('workload')}, {_num(facts.get('idle_s'))} s idle, "
        f"{facts.get('runs')} run(s) in all; {'medians (min-max)' if several else 'one run each'})",
        *_busy(facts),
        "",
        "Commands (each run's own in the JSON):",
        *[f"    {c}" for c in _commands(runs)],
        f"Checkout: {facts.get('commit', 'unknown')} (the product measured; git log for it)",
        "",
        "RFC: KVM, 8 GB guest. Ours: ratios between arms of one run are what to compare"
        + (" (TCG: the emulated CPU is a co-bottleneck)." if facts.get("accel") == "TCG" else "."),
        "vanilla and oneshot hibernate at the moment the agent arms get the notice, so their",
        "notice -> off is their hibernation; spotguard-hibernate: action `hibernate`, EC2 starts",
        "at the notice (no deadline): its image is the image at the notice.",
        "",
        _row(
            ["", "RFC vanilla", "RFC reclaim", "RFC ratio"]
            + [f"ours {a}" for a in arms]
            + [f"{a}/vanilla" for a in others]
        ),
        _row(["---"] * (4 + len(arms) + len(others))),
    ]
    for (what, size), (rfc_van, rfc_prep) in RFC.items():

        def cell(m: Measurement, what: str = what) -> float:
            return m.hibernate_s if what == "hibernate" else m.resume_s

        cells = [_fmt(_median(groups, a, size, cell), " s") for a in arms]
        ratios = [_fmt(_ratio(groups, a, size, cell)) for a in others]
        rfc = [f"{rfc_van:.2f} s", f"{rfc_prep:.2f} s", f"{rfc_prep / rfc_van:.3f}"]
        lines.append(_row([f"{what}, image_size={size}", *rfc, *cells, *ratios]))
    columns = [f"{a}, image_size={s}" for s in ("default", "0") for a in ARM_ORDER]
    columns = [c for c in columns if c in summary]
    lines += ["", "| per arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, _ in DETAILS:
        lines.append(f"| {name} | " + " | ".join(_stat(summary[c][name]) for c in columns) + " |")
    lines += ["", "Per run:", "", _row(list(PER_RUN)), _row(["---"] * len(PER_RUN))]
    for run in runs:
        lines.append(_row(_per_run(run)))
    for run in runs:
        lines += timeline(run)
    lines += ["", "Goals (issue 11; spotguard arm, medians unless it says every run):"]
    lines += [f"- [{g.verdict}] {g.label}: {_fmt(g.value)}" for g in checks]
    lines += limits(groups)
    lines += [
        f"- run failed: {r.observed.arm} {r.info.started_utc}: {r.error}" for r in runs if r.error
    ]
    return "\n".join(lines) + "\n"


PER_RUN = (
    "started (UTC)",
    "arm, image_size",
    "hibernate s",
    "predicted s (error)",
    "notice -> off s",
    "deadline s",
    "<= deadline - 10 s",
    "image MiB",
    "floor MiB",
    "shrink / snapshot / write / other s",
    "resume s (read s)",
    "host load (start, end)",
)


def _per_run(run: ArmRun) -> list[str]:
    head = [run.info.started_utc, f"{run.observed.arm}, {run.observed.image_size}"]
    m = run.measurement
    if m is None:
        return head + [f"failed: {run.error}"] + [""] * (len(PER_RUN) - 3)
    predicted = "-" if m.predicted_s is None else f"{m.predicted_s:.1f} ({m.prediction_error:+.0%})"
    slack = m.deadline_slack_s
    check = "-" if slack is None else "yes" if slack >= GOALS["deadline_margin_s"] else "NO"
    split = " / ".join(f"{v:.1f}" for v in (m.prealloc_s, m.snapshot_s, m.write_s, m.other_s))
    return [
        *head,
        f"{m.hibernate_s:.1f}",
        predicted,
        f"{m.notice_to_exit_s:.1f}",
        "-" if m.deadline_s is None else f"{m.deadline_s:g}",
        check,
        f"{m.image_bytes / MIB:.0f}",
        f"{m.floor_bytes / MIB:.0f}",
        split,
        f"{m.resume_s:.1f} ({m.read_s:.1f})",
        ", ".join(f"{x:.1f}" for x in run.info.host_load) or "-",
    ]


# The agent's events that explain a run, and the fields of each worth a look.
TIMELINE = {
    "notice.received": ("action", "seconds_left"),
    "reclaim.started": ("intensity", "budget_s", "target_bytes"),
    "reclaim.cancelled": ("reason",),
    "reclaim.done": ("intensity", "reclaimed_bytes", "duration_s", "stop_reason"),
    "hibernate.issued": (
        "why_now",
        "seconds_left",
        "predicted_s",
        "predicted_shrink_s",
        "predicted_image_write_s",
        "predicted_image_bytes",
        "shrink_bytes",
        "swap_rate",
        "write_rate",
        "rate_source",
    ),
    "hibernate.refused": ("reason", "seconds_left"),
}


def timeline(run: ArmRun) -> list[str]:
    """What the agent did in one agent-arm run, in seconds from the guest's idle start."""
    if run.observed.arm not in AGENT_ARMS or not run.observed.first:
        return []
    idle = next((ln.t for ln, _ in markers(run.observed.first, "idle-start")), None)
    if idle is None:
        return []
    head = f"Agent, {run.observed.arm} {run.observed.image_size} {run.info.started_utc}"
    found = [
        "",
        f"{head} (s from idle start; the notice at {_num(run.info.facts.get('idle_s'))}):",
    ]
    for line, event in agent_events(run.observed.first):
        wanted = TIMELINE.get(str(event["event"]))
        if wanted is None:
            continue
        fields = " ".join(f"{k}={event[k]}" for k in wanted if event.get(k) is not None)
        found.append(f"    {line.t - idle:+7.1f} {event['event']} {fields}")
    return found


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
        f"spotguard arm ({run.observed.image_size}), {facts.get('memory_mib')} MiB guest, "
        f"{facts.get('accel')}: memory while idle, reclaiming and hibernating",
        fontsize=9,
    )
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _stat(found: Stats) -> str:
    if (found["n"] or 0) > 1:
        return f"{_fmt(found['median'])} ({_fmt(found['min'])}-{_fmt(found['max'])})"
    return _fmt(found["median"])


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


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
