"""How big the hibernation image would be now, the floor it cannot go below, and whether it fits.

OWNER: reclaim-engine helper (issue 3) implements `ImageEstimator` here; `ImageEstimate` and
`Estimator` are the interface the planner reads and must keep their names and fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog

from spotguard.config import HibernateConfig
from spotguard.hostfs import HostFS
from spotguard.reclaim.procfs import ProcFormatError, read_meminfo


@dataclass(frozen=True, slots=True)
class ImageEstimate:
    saveable_bytes: int  # about MemTotal - MemFree
    floor_bytes: int  # saveable minus everything reclaimable: the kernel cannot go below it
    image_size_limit: int  # /sys/power/image_size
    expected_bytes: int  # max(floor, min(saveable, image_size))
    swap_total_bytes: int
    swap_free_bytes: int
    bandwidth_bytes_per_s: int
    predicted_write_s: float
    clean_bytes: int = 0  # file LRU + swap cache: what the kernel can drop without writing

    def fits(self, margin: float) -> bool:
        """Swap must hold the image with a margin: compressed hibernation does not check."""
        return self.swap_free_bytes >= self.expected_bytes * margin


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
log = structlog.get_logger()


class ImageEstimator:
    """The kernel's own arithmetic at hibernation (kernel/power/snapshot.c), done ahead of time."""

    def __init__(self, fs: HostFS, config: HibernateConfig) -> None:
        self._fs = fs
        self._config = config

    def estimate(self) -> ImageEstimate:
        """Raises EstimateError when /proc/meminfo is missing or malformed."""
        try:
            info = read_meminfo(self._fs)
        except ProcFormatError as exc:
            raise EstimateError(str(exc)) from None
        missing = [key for key in _REQUIRED if key not in info]
        if missing:
            raise EstimateError(f"/proc/meminfo lacks {', '.join(missing)}")
        saveable = info["MemTotal"] - info["MemFree"]
        reclaimable = sum(info[k] for k in _REQUIRED[2:7])
        floor = max(saveable - reclaimable, 0)
        limit = self._image_size(info["MemTotal"])
        expected = max(floor, min(saveable, limit))
        bandwidth = int(self._config.swap_bandwidth)
        return ImageEstimate(
            saveable_bytes=saveable,
            floor_bytes=floor,
            image_size_limit=limit,
            expected_bytes=expected,
            swap_total_bytes=info["SwapTotal"],
            swap_free_bytes=info["SwapFree"],
            bandwidth_bytes_per_s=bandwidth,
            predicted_write_s=expected / bandwidth,
            clean_bytes=info["Active(file)"] + info["Inactive(file)"] + info.get("SwapCached", 0),
        )

    def _image_size(self, mem_total: int) -> int:
        """/sys/power/image_size; the kernel's default (2/5 of RAM) where it is missing or odd."""
        default = mem_total * 2 // 5
        try:
            text = self._fs.read_text(IMAGE_SIZE).strip()
        except OSError:
            return default
        try:
            return int(text)
        except ValueError:
            log.warning("estimate.image_size_malformed", path=IMAGE_SIZE, value=text[:40])
            return default
