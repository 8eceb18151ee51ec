"""The drill as a picture: one bar per instance, from its warning to its stop, with the
deadline and the hibernation marked. matplotlib is an optional extra (`spotguard[plot]`)."""

from __future__ import annotations

from pathlib import Path

from spotguard.fleet.report import DrillReport, Outcome

COLOURS = {
    Outcome.HIBERNATED: "tab:green",
    Outcome.GRACEFUL: "tab:orange",
    Outcome.MISSED: "tab:red",
    Outcome.PENDING: "tab:gray",
}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to get it."""


def write_png(report: DrillReport, now: float, path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional, and heavy

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise PlotUnavailable(
            "the PNG timeline needs matplotlib: pip install 'spotguard[plot]'"
        ) from None
    warned = sorted(report.warned(), key=lambda i: (i.warned_at or 0.0, i.instance_id))
    if not warned:
        raise PlotUnavailable("no instance was warned: nothing to draw")
    start = min(i.warned_at or 0.0 for i in warned)
    height = min(max(2.0, 0.25 * len(warned) + 1.0), 40.0)
    figure, axes = plt.subplots(figsize=(10, height))
    for row, instance in enumerate(warned):
        warned_at = (instance.warned_at or start) - start
        end = instance.stopped_at() or instance.deadline(report.notice_s) or now
        outcome = instance.outcome(now, report.notice_s)
        axes.barh(row, end - start - warned_at, left=warned_at, color=COLOURS.get(outcome, "k"))
        deadline = instance.deadline(report.notice_s)
        if deadline is not None:
            axes.plot([deadline - start] * 2, [row - 0.4, row + 0.4], color="black", lw=1)
        if instance.hibernate_at is not None:
            axes.plot(instance.hibernate_at - start, row, marker="v", color="black", ms=4)
    if len(warned) <= 40:
        axes.set_yticks(range(len(warned)), [i.instance_id for i in warned], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(
        "seconds since the first warning"
        " (bar: warning -> stopped; |: deadline; v: hibernate issued)"
    )
    axes.set_title(report.summary(now).line(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
