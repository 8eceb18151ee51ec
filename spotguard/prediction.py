"""How long a hibernation takes on this machine: the kernel's own shrink first, then the write.

When saveable memory exceeds the kernel's target (``image_size``, or the floor when that is
lower), `hibernate_preallocate_memory` (kernel/power/snapshot.c) first swaps the excess out,
inside the hibernation window and at swap-write speed; only then is the image compressed and
written. A prediction from a configured bandwidth alone missed both (issue 11: 35 s predicted,
161 s taken). So the rates come from what this machine did: the swap writes of our own reclaim
(pswpout per second), the kernel's own lines from the last hibernation, and the configured
bandwidth only as an upper bound.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from spotguard.hostfs import HostFS

log = structlog.get_logger()

KMSG = "/dev/kmsg"
# Reclaim under writeback does not count pages still being written as freed, so the kernel's
# shrink writes about twice what it needs to free (6.1 under TCG, issue 11: 2.7 GB swapped for
# a 1.2 GB excess over the clean page cache; vanilla 3.4 GB for 2.0 GB).
SHRINK_OVERSHOOT = 2.0
# The shrink's swap writes ran at 0.55x what memory.reclaim reached on the same guest (issue 11:
# 31 MB/s inside the window, 57 MB/s for the one-shot write): reclaim from allocations waits on
# writeback where proactive reclaim goes on. A hibernation seen in the kernel log recalibrates.
SHRINK_SLOWDOWN = 0.55
# Clean page cache is dropped, not written; a generous guess of how fast (no I/O at all).
DROP_BYTES_PER_S = 1 << 30
MIN_SWAP_SAMPLE = 16 << 20  # less than this swapped in one write says nothing about the device
CALIBRATION_RANGE = (0.5, 4.0)  # what one past hibernation may scale the model by


@dataclass(frozen=True, slots=True)
class KernelFigures:
    """The kernel's own lines about its most recent hibernation attempt, where it logged them.

    After a resume the ring buffer holds what was logged up to the snapshot ("Allocated",
    "Need to copy"); "Wrote" is logged after the snapshot, so only a log that outlived the
    power-off (a saved console) has it.
    """

    allocated_bytes: int | None = None
    allocated_s: float | None = None
    copied_bytes: int | None = None
    wrote_bytes: int | None = None
    wrote_s: float | None = None

    @property
    def write_rate(self) -> float | None:
        if self.wrote_bytes is None or not self.wrote_s:
            return None
        return self.wrote_bytes / self.wrote_s


_ENTRY = re.compile(r"PM: (?:hibernation: )?hibernation entry")
_ALLOCATED = re.compile(r"PM: (?:hibernation: )?Allocated (\d+) kbytes in (\d+(?:\.\d+)?) seconds")
_COPY = re.compile(r"PM: (?:hibernation: )?Need to copy (\d+) pages")
_WROTE = re.compile(r"PM: (?:hibernation: )?Wrote (\d+) kbytes in (\d+(?:\.\d+)?) seconds")
_PAGE = 4096  # the kernel logs 4 KiB pages on every architecture spotguard runs on


def parse_kernel_log(lines: Iterable[str], known: KernelFigures | None = None) -> KernelFigures:
    """Fold kernel log lines into the figures of the latest attempt: a new "hibernation entry"
    starts a fresh set, so figures of two attempts are never mixed."""
    figures = known or KernelFigures()
    for line in lines:
        if _ENTRY.search(line):
            figures = KernelFigures()
        elif found := _ALLOCATED.search(line):
            kib, seconds = found.groups()
            figures = replace(figures, allocated_bytes=int(kib) * 1024, allocated_s=float(seconds))
        elif found := _COPY.search(line):
            figures = replace(figures, copied_bytes=int(found.group(1)) * _PAGE)
        elif found := _WROTE.search(line):
            kib, seconds = found.groups()
            figures = replace(figures, wrote_bytes=int(kib) * 1024, wrote_s=float(seconds))
    return figures


class KernelLog(Protocol):
    def read_new(self) -> list[str]:
        """Lines logged since the previous call (all of the buffer on the first)."""


class KmsgLog:
    """/dev/kmsg (root-prefixed), read without blocking: one record per read, EAGAIN at the end.

    The descriptor stays open, so each call costs one read when nothing is new; it survives a
    hibernation with the rest of the process. A plain file (a saved log, a test tree) works too:
    it reads to EOF and goes on from there next time.
    """

    def __init__(self, fs: HostFS, path: str = KMSG, max_records: int = 100_000) -> None:
        self._path = fs.path(path)
        self._fd: int | None = None
        self._max_records = max_records
        self._failed = False

    def read_new(self) -> list[str]:
        fd = self._open()
        if fd is None:
            return []
        chunks: list[bytes] = []
        for _ in range(self._max_records):
            try:
                data = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the record we were at was overwritten: go on
                    continue
                self._give_up(str(exc))
                break
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks).decode("utf-8", errors="replace")
        return [_message(line) for line in text.splitlines() if line and not line[0].isspace()]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        if self._fd is None and not self._failed:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                self._failed = True  # no kernel log here (a test tree, a container): no figures
            except OSError as exc:
                self._give_up(str(exc))
        return self._fd

    def _give_up(self, why: str) -> None:
        """Without the kernel log the prediction falls back to rates seen here: say so once."""
        if not self._failed:
            log.warning("prediction.kernel_log_unreadable", path=str(self._path), error=why)
        self._failed = True
        self.close()


def _message(line: str) -> str:
    """A kmsg record is ``prio,seq,usec,flags;text``; a dmesg-style line is kept whole."""
    head, sep, text = line.partition(";")
    return text if sep and head.count(",") >= 2 else line


class SwapRate:
    """Swap-write throughput our own reclaim reached, over its last few large writes.

    The engine notes each write that swapped enough to be bound by the device (pswpout delta
    over the write's duration); the estimator reads it. Thread-safe: they run in two threads.
    """

    def __init__(self, keep: int = 8) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def note(self, swapped_bytes: int, seconds: float) -> None:
        if swapped_bytes >= MIN_SWAP_SAMPLE and seconds > 0:
            with self._lock:
                self._samples.append((swapped_bytes, seconds))

    def rate(self) -> float | None:
        with self._lock:
            seconds = sum(s for _, s in self._samples)
            return sum(b for b, _ in self._samples) / seconds if seconds else None


@dataclass(frozen=True, slots=True)
class MemoryNow:
    """What the kernel's arithmetic needs, in bytes (see ImageEstimator)."""

    saveable: int
    floor: int
    image_limit: int  # /sys/power/image_size, capped by the kernel's own maximum
    anon: int  # anonymous LRU pages not yet in swap: what a shrink must write
    # clean page cache: what a shrink drops without writing. Not the swap cache: issue 11 saw
    # the kernel's shrink leave it and copy it into the image (2.2 of 2.6 GiB).
    clean: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """One hibernation, trigger to image written, split the way the kernel spends it."""

    image_bytes: int  # what the kernel copies and writes, after its shrink
    shrink_bytes: int  # what it must free first, inside the window
    shrink_swap_bytes: int  # of that, written to swap (the slow part)
    shrink_s: float
    write_s: float
    swap_rate: float  # bytes/s assumed for the shrink's swap writes (our rate, slowed down)
    write_rate: float  # bytes/s assumed for the image: the slowest of config, reclaim, log
    rate_source: str  # where the rates came from, for the log
    calibration: float = 1.0  # measured / predicted of the last hibernation here
    # Seconds of hibernation one second of our own reclaim saves now. Above 1, reclaiming before
    # the trigger ends the whole sooner than triggering at once: the kernel's shrink is slower
    # than our reclaim (SHRINK_SLOWDOWN), or the image write is slower than our swap writes.
    reclaim_gain: float = 0.0

    @property
    def total_s(self) -> float:
        return self.shrink_s + self.write_s


class Predictor:
    """Turns the memory now and the rates seen here into a Prediction; learns from the kernel's
    figures of each hibernation it sees in the kernel log (after a resume)."""

    def __init__(
        self,
        bandwidth: float,
        kernel_log: KernelLog | None = None,
        swap_rate: SwapRate | None = None,
    ) -> None:
        self._bandwidth = bandwidth
        self._kernel_log = kernel_log
        self.swap_rate = swap_rate or SwapRate()
        self.figures = KernelFigures()
        self._last: Prediction | None = None
        self._calibration = 1.0

    def predict(self, memory: MemoryNow) -> Prediction:
        self._learn()
        observed, logged = self.swap_rate.rate(), self.figures.write_rate
        swap_rate = (observed or self._bandwidth) * SHRINK_SLOWDOWN
        swap_from = "reclaim" if observed else "config"
        write_rate, write_from = _slowest(config=self._bandwidth, reclaim=observed, log=logged)
        target = max(memory.image_limit, memory.floor)
        shrink = max(memory.saveable - target, 0)
        image = memory.saveable - shrink
        swapped = min(memory.anon, int(SHRINK_OVERSHOOT * max(shrink - memory.clean, 0)))
        dropped = min(shrink, memory.clean)
        shrink_s = (swapped / swap_rate + dropped / DROP_BYTES_PER_S) * self._calibration
        reclaim_rate = observed or self._bandwidth
        if not memory.anon:  # nothing left for our reclaim to swap out
            gain = 0.0
        elif swapped:  # a byte less in memory is a byte less to shrink, twice over if not capped
            per_byte = (1.0 if swapped == memory.anon else SHRINK_OVERSHOOT) / swap_rate
            gain = reclaim_rate * per_byte * self._calibration
        else:  # a byte less in memory is a byte less to write
            gain = reclaim_rate / write_rate
        prediction = Prediction(
            image_bytes=image,
            shrink_bytes=shrink,
            shrink_swap_bytes=swapped,
            shrink_s=shrink_s,
            write_s=image / write_rate,
            swap_rate=swap_rate,
            write_rate=write_rate,
            rate_source=f"swap={swap_from} write={write_from}",
            calibration=self._calibration,
            reclaim_gain=gain,
        )
        self._last = prediction
        return prediction

    def _learn(self) -> None:
        """A new hibernation in the kernel log: compare its shrink with what we predicted last
        (the process is frozen with that prediction in memory and resumes with it)."""
        if self._kernel_log is None:
            return
        lines = self._kernel_log.read_new()
        if not lines:
            return
        before = self.figures
        self.figures = parse_kernel_log(lines, before)
        fresh = self.figures != before and self.figures.allocated_s is not None
        last = self._last
        if not fresh or last is None or last.shrink_s <= 1.0:
            return
        allocated_s = self.figures.allocated_s or 0.0
        ratio = allocated_s / (last.shrink_s / last.calibration)
        self._calibration = min(max(ratio, CALIBRATION_RANGE[0]), CALIBRATION_RANGE[1])
        log.info(
            "prediction.calibrated",
            predicted_shrink_s=round(last.shrink_s, 1),
            kernel_shrink_s=allocated_s,
            calibration=round(self._calibration, 2),
        )


def _slowest(**rates: float | None) -> tuple[float, str]:
    """The lowest known rate and its name: each source bounds what the device can do."""
    name, rate = min(((n, r) for n, r in rates.items() if r), key=lambda item: item[1])
    return rate, name
