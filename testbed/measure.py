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
    # Where the kernel starts writing: the end of its snapshot (device suspend, the copy).
    "saving": re.compile(r"Compressing and saving image data|Saving image data pages"),
}
STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")  # printk's own clock, exact where arrival lags
PRINTK = re.compile(r"\[\s*\d+\.\d+\]")
AGENT_ARMS = ("spotguard", "spotguard-hibernate")
IMAGE_SIZES = ("default", "0")  # the RFC's two rows: the kernel's default image_size, and 0
# The agent's prediction in its `hibernate.issued` event (spotguard.estimator's
# prediction_fields): trigger -> image written, and its parts.
PREDICTION_FIELDS = ("predicted_s", "predicted_shrink_s", "predicted_image_write_s")
# saveable > this x the copied image: the kernel shrank it, its "preallocation" was swapping.
SHRUNK = 1.1


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
    notice_at: float | None = None  # agent arms: when the host posted the notice
    notice_s: float | None = None  # the notice's lead time; None: EC2 hibernates at once
    # The agent's hibernate.fixed_overhead: its `predicted_s` leaves it out, its planner adds it.
    prediction_overhead_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Measurement:
    """One arm run. Seconds are host wall time under the run's accelerator; bytes are bytes."""

    arm: str
    image_size: str
    hibernate_s: float  # trigger marker -> QEMU exit
    resume_s: float  # second QEMU start -> the resumed workload's "back" marker
    # Spot notice -> QEMU exit. Agent arms: from when the host posted it; vanilla and oneshot
    # hibernate at the moment the notice would come (their trigger), so from their trigger.
    notice_to_exit_s: float
    deadline_s: float | None  # the notice's lead time (None: action hibernate, no deadline)
    # The agent's own prediction of its hibernation (its predicted_s + fixed_overhead), when it
    # logs one, and two of its parts as logged: the kernel's shrink and the image write.
    predicted_s: float | None
    predicted_shrink_s: float | None  # vs prealloc_s
    predicted_write_s: float | None  # vs write_s
    image_bytes: int  # pages the kernel copied, uncompressed
    written_bytes: int  # compressed image written to swap
    write_s: float
    bound_s: float  # the physical bound: written bytes at the disk's bandwidth
    read_bytes: int
    read_s: float
    prealloc_s: float  # the kernel's shrink/preallocation inside the hibernation window
    snapshot_s: float  # end of the shrink -> start of the write: devices, the atomic copy
    other_s: float  # the rest of the window: freezing tasks, sync, power-off, console lag
    floor_bytes: int  # the kernel's floor at the trigger (reserved pages included)
    reserved_bytes: int  # pages present but not managed (kernel, memmap): always saved
    saveable_bytes: int
    swap_cached_bytes: int  # in RAM and in swap at the trigger: the kernel copies them again
    swap_used_bytes: int  # swapped out before the trigger
    anon_reclaim_bps: float | None  # swap-out rate during the oneshot write / emergency reclaim
    reclaim_before_s: float  # reclaim time spent before the trigger
    fg_p99_ms: float  # foreground 10 ms sleep overshoot over the idle window
    fg_max_ms: float
    warm_touch_s: float  # checksum pass over the working set before hibernation
    retouch_s: float  # the same pass after resume
    checksum_ok: bool
    # In swap and not in RAM as swap cache at the first sample after resume: what the re-touch
    # must read back (vanilla's image holds the swap cache its own shrink made; ours drops it).
    paged_back_bytes: int = 0
    # What `spotguard readahead` asked back from swap after resume (agent arms), and how long
    # its asking took: the reads go on after it, at disk speed.
    readahead_bytes: int = 0
    readahead_s: float | None = None

    @property
    def image_over_floor(self) -> float:
        return self.image_bytes / self.floor_bytes if self.floor_bytes else float("nan")

    @property
    def prediction_error(self) -> float | None:
        """predicted / measured - 1: negative means the agent expected to be done sooner."""
        if self.predicted_s is None or self.hibernate_s <= 0:
            return None
        return self.predicted_s / self.hibernate_s - 1.0

    @property
    def at_floor_s(self) -> float | None:
        """This hibernation had its image been the kernel's floor, at the run's own rates: the
        allocation and the write per byte, the snapshot and the rest as they were. The best
        any reclaim could have done on this host. None where the kernel shrank the image (its
        preallocation was then swapping, which a floor-sized image would not do)."""
        if min(self.image_bytes, self.written_bytes) <= 0:
            return None
        if self.saveable_bytes > SHRUNK * self.image_bytes:
            return None
        per_byte = self.prealloc_s / self.image_bytes + self.write_s / self.written_bytes
        return self.snapshot_s + self.other_s + per_byte * self.floor_bytes

    @property
    def resume_at_floor_s(self) -> float | None:
        """This resume had it read an image the size of the kernel's floor: the boot before
        the read as it was, the read at the run's own rate."""
        if self.read_bytes <= 0:
            return None
        return self.resume_s - self.read_s + self.read_s * self.floor_bytes / self.read_bytes

    @property
    def deadline_slack_s(self) -> float | None:
        """Seconds to spare before the deadline (the goal: at least 10)."""
        return None if self.deadline_s is None else self.deadline_s - self.notice_to_exit_s


def markers(lines: Sequence[Line], event: str) -> Iterator[tuple[Line, dict[str, str]]]:
    """A marker's fields. The kernel may print into the middle of one on the shared serial
    console ("max_ms=114.30[  420.12] Filesystems sync: ..."): its line ends the marker. When
    it prints right after the name ("TESTBED trigger [  156.56] PM: ..."), the fields come on
    the next line, which then starts with the marker's first field, ``t=``."""
    for at, line in enumerate(lines):
        found = MARKER.search(line.text)
        if found and found.group(1) == event:
            words = PRINTK.split(found.group(2), maxsplit=1)[0].split()
            following = lines[at + 1].text if at + 1 < len(lines) else ""
            if not words and following.startswith("t="):
                words = PRINTK.split(following, maxsplit=1)[0].split()
            yield line, dict(w.split("=", 1) for w in words if "=" in w)


def marker(lines: Sequence[Line], event: str) -> tuple[Line, dict[str, str]]:
    for found in markers(lines, event):
        return found
    raise MeasureError(f"no 'TESTBED {event}' line on the console")


def kernel(lines: Sequence[Line], what: str) -> tuple[float, ...]:
    """The numbers of the last kernel line of kind `what` (a later attempt supersedes)."""
    return tuple(float(g) for g in kernel_line(lines, what)[1].groups())


def kernel_line(lines: Sequence[Line], what: str) -> tuple[Line, re.Match[str]]:
    for line in reversed(lines):
        if found := KERNEL[what].search(line.text):
            return line, found
    raise MeasureError(f"no kernel line for {what!r} ({KERNEL[what].pattern})")


def stamp(line: Line) -> float:
    """The kernel's own timestamp of a printk line, else the host's arrival time."""
    found = STAMP.match(line.text)
    return float(found.group(1)) if found else line.t


def between(first: Line, second: Line) -> float:
    """Seconds between two lines: by the kernel's clock when both carry its stamp."""
    if STAMP.match(first.text) and STAMP.match(second.text):
        return stamp(second) - stamp(first)
    return second.t - first.t


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
    hibernate_s = seen.first_exited - trigger.t
    prealloc_s, snapshot_s = _kernel_split(seen.first)
    notice_at = seen.notice_at if seen.notice_at is not None else trigger.t
    prediction = _prediction(seen.first)
    return Measurement(
        arm=seen.arm,
        image_size=seen.image_size,
        hibernate_s=hibernate_s,
        resume_s=back.t - seen.second_started,
        notice_to_exit_s=seen.first_exited - notice_at,
        deadline_s=seen.notice_s,
        predicted_s=None if prediction[0] is None else prediction[0] + seen.prediction_overhead_s,
        predicted_shrink_s=prediction[1],
        predicted_write_s=prediction[2],
        image_bytes=int(copy_pages) * PAGE,
        written_bytes=int(wrote_kb) * 1024,
        write_s=write_s,
        bound_s=wrote_kb * 1024 / seen.disk_bps,
        read_bytes=int(read_kb) * 1024,
        read_s=read_s,
        prealloc_s=prealloc_s,
        snapshot_s=snapshot_s,
        other_s=hibernate_s - prealloc_s - snapshot_s - write_s,
        floor_bytes=int(at_trigger["floor"]),
        reserved_bytes=int(at_trigger.get("reserved", 0)),
        saveable_bytes=int(at_trigger["saveable"]),
        swap_cached_bytes=int(at_trigger.get("swap_cached", 0)),
        swap_used_bytes=int(at_trigger["swap_used"]),
        anon_reclaim_bps=_anon_reclaim_rate(seen.first, trigger),
        reclaim_before_s=_reclaim_before(seen.first, trigger),
        fg_p99_ms=float(fg["p99_ms"]),
        fg_max_ms=float(fg["max_ms"]),
        warm_touch_s=float(warm["seconds"]),
        retouch_s=float(retouch["seconds"]),
        checksum_ok=retouch["ok"] == "1" and warm["ok"] == "1",
        paged_back_bytes=_paged_back(seen.second),
        **_readahead(seen.second),
    )


def _readahead(lines: Sequence[Line]) -> dict[str, Any]:
    """The readahead's own `readahead.done` event, where the resumed guest logged one."""
    for _, e in agent_events(lines):
        if e["event"] == "readahead.done":
            return {"readahead_bytes": int(e["asked"]), "readahead_s": float(e["seconds"])}
    return {}


def _paged_back(lines: Sequence[Line]) -> int:
    """Swap in use minus swap cache at the resumed guest's first memory sample; 0 without one."""
    for _, fields in markers(lines, "mem"):
        return max(int(fields["swap_used"]) - int(fields.get("swapcached", 0)), 0)
    return 0


def _kernel_split(lines: Sequence[Line]) -> tuple[float, float]:
    """The kernel's shrink (its own figure) and its snapshot: from the end of the shrink (or
    the start of hibernation when nothing was preallocated) to the start of the write."""
    saving, _ = kernel_line(lines, "saving")
    try:
        allocated, found = kernel_line(lines, "allocated")
    except MeasureError:  # nothing to preallocate: the kernel prints no line
        entry = next((ln for ln in lines if "Preallocating image memory" in ln.text), saving)
        return 0.0, between(entry, saving)
    return float(found.group(2)), between(allocated, saving)


def _prediction(lines: Sequence[Line]) -> tuple[float | None, ...]:
    """The agent's predicted seconds at its (last) `hibernate.issued`: total, shrink, write;
    None where it logged none."""
    issued = [e for _, e in agent_events(lines) if e["event"] == "hibernate.issued"]
    last = issued[-1] if issued else {}
    return tuple(
        float(v) if isinstance(v := last.get(name), int | float) else None
        for name in PREDICTION_FIELDS
    )


def _anon_reclaim_rate(lines: Sequence[Line], trigger: Line) -> float | None:
    """Anon moved out of RAM per second during the reclaim that races the clock: the oneshot
    arm's one write, or the agent's emergency reclaim runs finished before the trigger. Out of
    RAM is in swap and not in swap cache: freeing swap cache an earlier write left (as a
    cancelled light reclaim does) moves anon out with no swap growth, and a write that leaves
    its pages cached has not. From the once-a-second memory samples: windows under ~5 s are
    rough."""
    windows = [(ln.t - float(f["seconds"]), ln.t) for ln, f in markers(lines, "reclaim-done")] + [
        (ln.t - float(e.get("duration_s", 0.0)), ln.t)
        for ln, e in agent_events(lines)
        if e["event"] == "reclaim.done" and e.get("intensity") == "emergency" and ln.t <= trigger.t
    ]
    samples = [
        (ln.t, float(f["swap_used"]) - float(f.get("swapcached", 0)))
        for ln, f in markers(lines, "mem")
    ]
    swapped = sum(_at(samples, end) - _at(samples, start) for start, end in windows)
    seconds = sum(end - start for start, end in windows)
    return swapped / seconds if seconds > 0 and samples else None


def _at(samples: Sequence[tuple[float, float]], t: float) -> float:
    """The sampled value at host time `t`, linearly between the samples around it."""
    before = [(st, v) for st, v in samples if st <= t] or samples[:1]
    after = [(st, v) for st, v in samples if st >= t] or samples[-1:]
    (t0, v0), (t1, v1) = before[-1], after[0]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


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
