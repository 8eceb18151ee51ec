"""How long a hibernation takes on this machine: the kernel's preallocation, then the write.

`hibernate_preallocate_memory` (kernel/power/snapshot.c) first allocates a page frame for every
page of the image; when saveable memory exceeds its target (``image_size``, never below the
floor) it allocates all but the target instead, swapping the excess out on the way, inside
the hibernation window. Only then is the image compressed and written. A prediction from a
configured bandwidth alone missed all of that (issue 11: 35 s predicted, 161 s taken). So the
rates come from what this machine does: the swap writes of our own reclaim (pswpout per
second), the kernel's own "Allocated" line of each hibernation here (it recalibrates the
preallocation) and its "Wrote" line where a log has it; configured rates are the starting
point and the upper bound. Page allocation is fast on real CPUs and slow under emulation
(`hibernate.prealloc_bandwidth`); nothing userspace can time stands in for it reliably (a
page-fault probe swung 32-228 MiB/s on one nested-virtualisation host).

Against issue 11's four 8 GiB TCG runs (allocation 74 MB/s, as its oneshot arm's 472 MiB in
6.4 s; our swap writes 57 MB/s; image write 36 MB/s) the preallocation comes out at 97 s for
87 s measured (spotguard), 112/110 (vanilla), 203/167 (vanilla, image_size=0), 6.7/6.4
(oneshot); the write at 92/74 s (spotguard: the kernel's shrink overshot its target).
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
# Clean page cache is dropped, not written; a generous guess of how fast (no I/O at all).
DROP_BYTES_PER_S = 1 << 30
MIN_SWAP_SAMPLE = 16 << 20  # less than this swapped in one write says nothing about the device
CALIBRATION_RANGE = (0.5, 4.0)  # what one past hibernation may scale the preallocation by


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
    free: int = 0  # MemFree: the kernel allocates it too when it must shrink


@dataclass(frozen=True, slots=True)
class Prediction:
    """One hibernation, trigger to image written, split the way the kernel spends it."""

    image_bytes: int  # what the kernel copies and writes, after its shrink
    shrink_bytes: int  # what it must free first, inside the window
    shrink_swap_bytes: int  # of that, written to swap
    shrink_s: float  # the whole preallocation: page allocation and the shrink's swap writes
    write_s: float
    swap_rate: float  # bytes/s assumed for the shrink's swap writes (our own reclaim's)
    write_rate: float  # bytes/s assumed for the image: the slowest of config, reclaim, log
    rate_source: str  # where the rates came from, for the log
    calibration: float = 1.0  # measured / predicted preallocation of the last hibernation here
    alloc_bytes: int = 0  # page frames the kernel allocates
    alloc_rate: float = 0.0
    # The same trigger with image_size raised to hold all of saveable: no shrink, a bigger
    # write (see planner._raised_image).
    unshrunk_shrink_s: float = 0.0
    unshrunk_write_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.shrink_s + self.write_s


@dataclass(frozen=True, slots=True)
class _Rates:
    alloc: float
    swap: float
    write: float
    source: str


class Predictor:
    """Turns the memory now and the rates seen here into a Prediction; learns from the kernel's
    figures of each hibernation it sees in the kernel log (after a resume)."""

    def __init__(
        self,
        bandwidth: float,
        alloc_rate: float,
        kernel_log: KernelLog | None = None,
        swap_rate: SwapRate | None = None,
    ) -> None:
        self._bandwidth = bandwidth
        self._alloc_rate = alloc_rate
        self._kernel_log = kernel_log
        self.swap_rate = swap_rate or SwapRate()
        self.figures = KernelFigures()
        self._last: Prediction | None = None
        self._calibration = 1.0

    def predict(self, memory: MemoryNow) -> Prediction:
        self._learn()
        rates = self._rates()
        now = self._model(memory, rates)
        unshrunk = self._model(replace(memory, image_limit=memory.saveable), rates)
        prediction = replace(
            now,
            unshrunk_shrink_s=unshrunk.shrink_s,
            unshrunk_write_s=unshrunk.write_s,
        )
        self._last = prediction
        return prediction

    def _rates(self) -> _Rates:
        observed, logged = self.swap_rate.rate(), self.figures.write_rate
        write, write_from = _slowest(config=self._bandwidth, reclaim=observed, log=logged)
        swap_from = "reclaim" if observed else "config"
        return _Rates(
            alloc=self._alloc_rate,
            swap=observed or self._bandwidth,
            write=write,
            source=f"swap={swap_from} write={write_from}",
        )

    def _model(self, memory: MemoryNow, rates: _Rates) -> Prediction:
        target = max(memory.image_limit, memory.floor)
        shrink = max(memory.saveable - target, 0)
        image = memory.saveable - shrink
        # No shrink: a frame for each image page. A shrink: all frames but the target's.
        allocated = memory.saveable + memory.free - target if shrink else image
        swapped = min(memory.anon, max(shrink - memory.clean, 0))
        dropped = min(shrink, memory.clean)
        prealloc_s = allocated / rates.alloc + swapped / rates.swap + dropped / DROP_BYTES_PER_S
        return Prediction(
            image_bytes=image,
            shrink_bytes=shrink,
            shrink_swap_bytes=swapped,
            shrink_s=prealloc_s * self._calibration,
            write_s=image / rates.write,
            swap_rate=rates.swap,
            write_rate=rates.write,
            rate_source=rates.source,
            calibration=self._calibration,
            alloc_bytes=allocated,
            alloc_rate=rates.alloc,
        )

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
        if not fresh or last is None or last.shrink_s <= 0.5:
            return
        allocated_s = self.figures.allocated_s or 0.0
        ratio = allocated_s / (last.shrink_s / last.calibration)
        self._calibration = min(max(ratio, CALIBRATION_RANGE[0]), CALIBRATION_RANGE[1])
        log.info(
            "prediction.calibrated",
            predicted_prealloc_s=round(last.shrink_s, 1),
            kernel_shrink_s=allocated_s,
            calibration=round(self._calibration, 2),
        )


def _slowest(**rates: float | None) -> tuple[float, str]:
    """The lowest known rate and its name: each source bounds what the device can do."""
    name, rate = min(((n, r) for n, r in rates.items() if r), key=lambda item: item[1])
    return rate, name
