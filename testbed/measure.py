"""Turn the two boots' timed console lines into one arm run's figures.

Three kinds of lines carry facts: ``TESTBED <event> key=value ...`` markers from the in-guest
programs, the kernel's own hibernation lines (``PM: hibernation: ...``) and the agent's
structlog JSON lines. Times are the host's: each line is stamped when it arrives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.guest import Line

PAGE = 4096
MARKER = re.compile(r"TESTBED (\S+)(.*)")
KERNEL = {
    "allocated": re.compile(r"Allocated (\d+) kbytes in ([\d.]+) seconds"),
    "copy_pages": re.compile(r"Need to copy (\d+) pages"),
    "wrote": re.compile(r"Wrote (\d+) kbytes in ([\d.]+) seconds"),
    "read": re.compile(r"Read (\d+) kbytes in ([\d.]+) seconds"),
}


class MeasureError(ValueError):
    """A run's console lacks a line every complete run has."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What the host saw of one arm run: both boots' lines and its own times."""

    arm: str
    image_size: str  # "default" | "0"
    first: Sequence[Line]
    first_started: float
    first_exited: float
    second: Sequence[Line]
    second_started: float
    disk_bps: int
    notice_at: float | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    """One arm run. Seconds are host wall time under the run's accelerator; bytes are bytes."""

    arm: str
    image_size: str
    hibernate_s: float  # trigger marker -> QEMU exit
    resume_s: float  # second QEMU start -> the resumed workload's "back" marker
    notice_to_exit_s: float | None  # spotguard: spot notice posted -> QEMU exit
    image_bytes: int  # pages the kernel copied, uncompressed
    written_bytes: int  # compressed image written to swap
    write_s: float
    bound_s: float  # the physical bound: written bytes at the disk's bandwidth
    read_bytes: int
    read_s: float
    prealloc_s: float  # the kernel's shrink/preallocation inside the hibernation window
    floor_bytes: int  # the kernel's floor at the trigger (what it cannot shrink)
    saveable_bytes: int
    swap_used_bytes: int  # swapped out before the trigger
    reclaim_before_s: float  # reclaim time spent before the trigger
    fg_p99_ms: float  # foreground 10 ms sleep overshoot over the idle window
    fg_max_ms: float
    warm_touch_s: float  # checksum pass over the working set before hibernation
    retouch_s: float  # the same pass after resume
    checksum_ok: bool

    @property
    def image_over_floor(self) -> float:
        return self.image_bytes / self.floor_bytes if self.floor_bytes else float("nan")


def markers(lines: Sequence[Line], event: str) -> Iterator[tuple[Line, dict[str, str]]]:
    for line in lines:
        found = MARKER.search(line.text)
        if found and found.group(1) == event:
            yield line, dict(w.split("=", 1) for w in found.group(2).split() if "=" in w)


def marker(lines: Sequence[Line], event: str) -> tuple[Line, dict[str, str]]:
    for found in markers(lines, event):
        return found
    raise MeasureError(f"no 'TESTBED {event}' line on the console")


def kernel(lines: Sequence[Line], what: str) -> tuple[float, ...]:
    """The numbers of the last kernel line of kind `what` (a later attempt supersedes)."""
    found = [m for ln in lines if (m := KERNEL[what].search(ln.text))]
    if not found:
        raise MeasureError(f"no kernel line for {what!r} ({KERNEL[what].pattern})")
    return tuple(float(g) for g in found[-1].groups())


def agent_events(lines: Sequence[Line]) -> Iterator[tuple[Line, dict[str, Any]]]:
    for line in lines:
        start = line.text.find('{"')
        if start < 0:
            continue
        try:
            event = json.loads(line.text[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            yield line, event


def measure(seen: Observed) -> Measurement:
    trigger, at_trigger = marker(seen.first, "trigger")
    back, _ = marker(seen.second, "back")
    _, warm = marker(seen.first, "warm")
    _, retouch = marker(seen.second, "retouch")
    _, fg = marker([*seen.first, *seen.second], "fg")  # may print only after resume
    copy_pages = kernel(seen.first, "copy_pages")[0]
    wrote_kb, write_s = kernel(seen.first, "wrote")
    read_kb, read_s = kernel(seen.second, "read")
    try:
        prealloc_s = kernel(seen.first, "allocated")[1]
    except MeasureError:  # nothing to preallocate: the kernel prints no line
        prealloc_s = 0.0
    return Measurement(
        arm=seen.arm,
        image_size=seen.image_size,
        hibernate_s=seen.first_exited - trigger.t,
        resume_s=back.t - seen.second_started,
        notice_to_exit_s=None if seen.notice_at is None else seen.first_exited - seen.notice_at,
        image_bytes=int(copy_pages) * PAGE,
        written_bytes=int(wrote_kb) * 1024,
        write_s=write_s,
        bound_s=wrote_kb * 1024 / seen.disk_bps,
        read_bytes=int(read_kb) * 1024,
        read_s=read_s,
        prealloc_s=prealloc_s,
        floor_bytes=int(at_trigger["floor"]),
        saveable_bytes=int(at_trigger["saveable"]),
        swap_used_bytes=int(at_trigger["swap_used"]),
        reclaim_before_s=_reclaim_before(seen.first, trigger),
        fg_p99_ms=float(fg["p99_ms"]),
        fg_max_ms=float(fg["max_ms"]),
        warm_touch_s=float(warm["seconds"]),
        retouch_s=float(retouch["seconds"]),
        checksum_ok=retouch["ok"] == "1" and warm["ok"] == "1",
    )


def _reclaim_before(lines: Sequence[Line], trigger: Line) -> float:
    """oneshot: its one write; spotguard: the agent's reclaim runs finished before the trigger."""
    oneshot = [float(f["seconds"]) for _, f in markers(lines, "reclaim-done")]
    agent = [
        float(e.get("duration_s", 0.0))
        for ln, e in agent_events(lines)
        if e["event"] == "reclaim.done" and ln.t <= trigger.t
    ]
    return sum(oneshot) + sum(agent)


def memory_series(lines: Sequence[Line], since: float) -> list[dict[str, float]]:
    """The once-a-second memory samples, seconds from `since`, for the plot."""
    return [
        {"t": ln.t - since, **{k: float(v) for k, v in f.items() if k != "t"}}
        for ln, f in markers(lines, "mem")
    ]


def event_times(lines: Sequence[Line], since: float) -> list[dict[str, Any]]:
    """Markers and agent events worth a vertical line in the plot."""
    wanted = {"idle-start", "reclaim-start", "reclaim-done", "trigger", "back"}
    found: list[dict[str, Any]] = [
        {"t": ln.t - since, "event": f"TESTBED {name}"}
        for ln in lines
        if (m := MARKER.search(ln.text)) and (name := m.group(1)) in wanted
    ]
    found += [
        {"t": ln.t - since, "event": e["event"], "reclaimed_bytes": e.get("reclaimed_bytes")}
        for ln, e in agent_events(lines)
        if str(e["event"]).startswith(("reclaim.", "notice.", "hibernate.", "idle."))
    ]
    return sorted(found, key=lambda e: float(e["t"]))
