"""How big the hibernation image would be now, the floor it cannot go below, and whether it fits.

`ImageEstimate` and `Estimator` are the interface the planner reads: names and fields stay; new
fields come with defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from spotguard.config import HibernateConfig
from spotguard.hostfs import HostFS
from spotguard.prediction import KernelLog, KmsgLog, MemoryNow, Predictor, SwapRate
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo


@dataclass(frozen=True, slots=True)
class ImageEstimate:
    saveable_bytes: int  # MemTotal - MemFree + reserved pages present: all the kernel saves
    floor_bytes: int  # saveable minus everything reclaimable: the kernel cannot go below it
    image_size_limit: int  # /sys/power/image_size
    # What the hibernation writes to swap: the image, plus what the kernel swaps out first
    # when saveable exceeds its target. Not the floor at image_size=0: shrinking to it inside
    # the window is the slow path, not a small image.
    expected_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    bandwidth_bytes_per_s: int  # the image write rate the prediction assumed
    predicted_write_s: float  # trigger -> image written: the kernel's shrink plus the write
    clean_bytes: int = 0  # file LRU + swap cache: what the kernel can drop without writing
    reserved_bytes: int = 0  # reserved pages present in memory (/proc/zoneinfo), saved too
    swap_cached_bytes: int = 0  # already in swap, still in RAM: copied into the image again
    image_bytes: int = 0  # what the kernel copies and writes after its shrink
    shrink_bytes: int = 0  # what the kernel frees first, inside the window
    shrink_swap_bytes: int = 0  # of which swapped out (the rest is dropped clean)
    predicted_shrink_s: float = 0.0
    predicted_image_write_s: float = 0.0
    swap_rate_bytes_per_s: int = 0  # assumed for the shrink's swap writes
    rate_source: str = ""  # where the rates came from: config, reclaim (pswpout), log (kernel)
    calibration: float = 1.0  # measured / predicted shrink of the last hibernation here
    seconds_per_image_byte: float = 0.0  # without a shrink: allocating its frame + writing it
    max_image_bytes: int = 0  # the kernel's own cap on the image (max_size), whatever image_size
    # With image_size raised to hold all of saveable (no shrink): preallocation and write.
    unshrunk_shrink_s: float = 0.0
    unshrunk_write_s: float = 0.0

    def fits(self, margin: float) -> bool:
        """Swap must hold the image with a margin: compressed hibernation does not check."""
        return self.swap_free_bytes >= self.expected_bytes * margin

    def unshrunk(self, image_size: int) -> ImageEstimate:
        """This estimate with /sys/power/image_size at `image_size` (>= saveable): the kernel
        then takes its fast path, a frame for each saveable page, and shrinks nothing."""
        return replace(
            self,
            image_size_limit=image_size,
            expected_bytes=self.saveable_bytes,
            image_bytes=self.saveable_bytes,
            shrink_bytes=0,
            shrink_swap_bytes=0,
            predicted_write_s=self.unshrunk_shrink_s + self.unshrunk_write_s,
            predicted_shrink_s=self.unshrunk_shrink_s,
            predicted_image_write_s=self.unshrunk_write_s,
        )

    def prediction_fields(self) -> dict[str, object]:
        """The prediction's parts, for the `hibernate.issued` line (predicted vs measured)."""
        return {
            "predicted_s": round(self.predicted_write_s, 1),
            "predicted_shrink_s": round(self.predicted_shrink_s, 1),
            "predicted_image_write_s": round(self.predicted_image_write_s, 1),
            "predicted_image_bytes": self.image_bytes,
            "shrink_bytes": self.shrink_bytes,
            "shrink_swap_bytes": self.shrink_swap_bytes,
            "saveable_bytes": self.saveable_bytes,
            "floor_bytes": self.floor_bytes,
            "swap_cached_bytes": self.swap_cached_bytes,
            "write_rate": self.bandwidth_bytes_per_s,
            "swap_rate": self.swap_rate_bytes_per_s,
            "rate_source": self.rate_source,
        }


class Estimator(Protocol):
    def estimate(self) -> ImageEstimate: ...


class EstimateError(ValueError):
    """The kernel's memory accounting could not be read; the message says which file and why."""


_REQUIRED = (
    "MemTotal",
    "MemFree",
    "SReclaimable",
    "Active(anon)",
    "Inactive(anon)",
    "Active(file)",
    "Inactive(file)",
    "SwapTotal",
    "SwapFree",
)
IMAGE_SIZE = "/sys/power/image_size"
RESERVED_SIZE = "/sys/power/reserved_size"
ZONEINFO = "/proc/zoneinfo"
PAGE = os.sysconf("SC_PAGE_SIZE")
log = structlog.get_logger()


class ImageEstimator:
    """The kernel's own arithmetic at hibernation (kernel/power/snapshot.c), done ahead of time,
    and how long the kernel will take over it here (spotguard.prediction)."""

    def __init__(
        self,
        fs: HostFS,
        config: HibernateConfig,
        *,
        kernel_log: KernelLog | None = None,
        swap_rate: SwapRate | None = None,
    ) -> None:
        self._fs = fs
        self._config = config
        self._reserved: int | None = None  # fixed at boot (memory hotplug aside): read once
        self._predictor = Predictor(
            float(config.swap_bandwidth),
            float(config.prealloc_bandwidth),
            kernel_log if kernel_log is not None else KmsgLog(fs),
            swap_rate,
        )

    def estimate(self) -> ImageEstimate:
        """Raises EstimateError when /proc/meminfo is missing or malformed."""
        try:
            info = read_meminfo(self._fs)
        except ProcFormatError as exc:
            raise EstimateError(str(exc)) from None
        missing = [key for key in _REQUIRED if key not in info]
        if missing:
            raise EstimateError(f"/proc/meminfo lacks {', '.join(missing)}")
        if self._reserved is None:
            self._reserved = reserved_bytes(self._fs)
        reserved = self._reserved
        used = info["MemTotal"] - info["MemFree"]
        saveable = used + reserved
        reclaimable = sum(info[k] for k in _REQUIRED[2:7])
        floor = max(saveable - reclaimable, 0)
        limit = self._image_size(info["MemTotal"])
        swap_cached = info.get("SwapCached", 0)
        file_lru = info["Active(file)"] + info["Inactive(file)"]
        anon_lru = info["Active(anon)"] + info["Inactive(anon)"]
        dirty = info.get("Dirty", 0) + info.get("Writeback", 0)
        # The kernel caps the image at about half of what it can use (max_size in snapshot.c).
        max_image = (saveable + info["MemFree"]) // 2 - 2 * self._reserved_size()
        predicted = self._predictor.predict(
            MemoryNow(
                saveable=saveable,
                floor=floor,
                image_limit=min(limit, max(max_image, 0)),
                anon=max(anon_lru - swap_cached, 0),
                clean=max(file_lru - dirty, 0),
                free=info["MemFree"],
            )
        )
        return ImageEstimate(
            saveable_bytes=saveable,
            floor_bytes=floor,
            image_size_limit=limit,
            expected_bytes=predicted.image_bytes + predicted.shrink_swap_bytes,
            swap_total_bytes=info["SwapTotal"],
            swap_free_bytes=info["SwapFree"],
            bandwidth_bytes_per_s=int(predicted.write_rate),
            predicted_write_s=predicted.total_s,
            clean_bytes=file_lru + swap_cached,
            reserved_bytes=reserved,
            swap_cached_bytes=swap_cached,
            image_bytes=predicted.image_bytes,
            shrink_bytes=predicted.shrink_bytes,
            shrink_swap_bytes=predicted.shrink_swap_bytes,
            predicted_shrink_s=predicted.shrink_s,
            predicted_image_write_s=predicted.write_s,
            swap_rate_bytes_per_s=int(predicted.swap_rate),
            rate_source=predicted.rate_source,
            calibration=predicted.calibration,
            seconds_per_image_byte=predicted.calibration / predicted.alloc_rate
            + 1 / predicted.write_rate,
            max_image_bytes=max(max_image, 0),
            unshrunk_shrink_s=predicted.unshrunk_shrink_s,
            unshrunk_write_s=predicted.unshrunk_write_s,
        )

    def _image_size(self, mem_total: int) -> int:
        """/sys/power/image_size; the kernel's default (2/5 of RAM) where it is missing or odd."""
        return self._sys_power_int(IMAGE_SIZE, mem_total * 2 // 5)

    def _reserved_size(self) -> int:
        """/sys/power/reserved_size: kept free for drivers; the kernel's default is 1 MiB."""
        return self._sys_power_int(RESERVED_SIZE, 1 << 20)

    def _sys_power_int(self, path: str, default: int) -> int:
        try:
            text = self._fs.read_text(path).strip()
        except OSError:
            return default
        try:
            return int(text)
        except ValueError:
            log.warning("estimate.sys_power_malformed", path=path, value=text[:40])
            return default


def reserved_bytes(fs: HostFS) -> int:
    """Reserved pages present in memory: per zone, present minus managed (/proc/zoneinfo).

    The kernel saves them (saveable_page() keeps PageReserved pages that are present), but
    MemTotal counts only managed pages: about 300 MB at 8 GiB that MemTotal - MemFree misses.
    0 when zoneinfo is missing or unreadable: the estimate then errs small, as it did before.
    """
    try:
        text = fs.read_text(ZONEINFO)
    except OSError:
        return 0
    pages = 0
    present: int | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if line.startswith("Node "):
            present = None
        elif key == "present" and value.isdigit():
            present = int(value)
        elif key == "managed" and value.isdigit() and present is not None:
            pages += max(present - int(value), 0)
            present = None
    return pages * PAGE
