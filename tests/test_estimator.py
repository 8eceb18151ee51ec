"""The hibernation image estimate from a fake /proc/meminfo and /sys/power/image_size."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotguard.config import Bytes, HibernateConfig
from spotguard.estimator import EstimateError, ImageEstimator
from spotguard.hostfs import HostFS

MIB = 1 << 20
MEMINFO = """\
MemTotal:        8388608 kB
MemFree:         1048576 kB
MemAvailable:    3145728 kB
Buffers:           10240 kB
Cached:          2097152 kB
SReclaimable:     102400 kB
Active(anon):    2097152 kB
Inactive(anon):  1048576 kB
Active(file):    1048576 kB
Inactive(file):  1048576 kB
SwapTotal:       8388608 kB
SwapFree:        8000000 kB
HugePages_Total:       0
"""


def tree(tmp_path: Path, meminfo: str = MEMINFO, image_size: str | None = None) -> HostFS:
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    if image_size is not None:
        (tmp_path / "sys" / "power").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / "power" / "image_size").write_text(image_size)
    return HostFS(tmp_path)


def test_the_kernels_arithmetic(tmp_path: Path) -> None:
    config = HibernateConfig(swap_bandwidth=Bytes(200 * MIB))
    estimate = ImageEstimator(tree(tmp_path, image_size=f"{1024 * MIB}\n"), config).estimate()
    saveable = (8388608 - 1048576) * 1024
    reclaimable = (102400 + 2097152 + 1048576 + 1048576 + 1048576) * 1024
    assert estimate.saveable_bytes == saveable
    assert estimate.floor_bytes == saveable - reclaimable
    assert estimate.image_size_limit == 1024 * MIB
    assert estimate.expected_bytes == max(saveable - reclaimable, 1024 * MIB)
    assert estimate.swap_total_bytes == 8388608 * 1024
    assert estimate.swap_free_bytes == 8000000 * 1024
    assert estimate.bandwidth_bytes_per_s == 200 * MIB
    assert estimate.predicted_write_s == estimate.expected_bytes / (200 * MIB)
    assert estimate.fits(1.1)


def test_a_large_image_size_caps_at_saveable(tmp_path: Path) -> None:
    fs = tree(tmp_path, image_size=f"{64 * 1024 * MIB}")
    estimate = ImageEstimator(fs, HibernateConfig()).estimate()
    assert estimate.expected_bytes == estimate.saveable_bytes


def test_missing_image_size_is_two_fifths_of_ram(tmp_path: Path) -> None:
    estimate = ImageEstimator(tree(tmp_path), HibernateConfig()).estimate()
    assert estimate.image_size_limit == 8388608 * 1024 * 2 // 5
    garbage = ImageEstimator(tree(tmp_path, image_size="lots"), HibernateConfig()).estimate()
    assert garbage.image_size_limit == estimate.image_size_limit


def test_floor_is_never_negative_and_no_swap_does_not_fit(tmp_path: Path) -> None:
    meminfo = MEMINFO.replace("SReclaimable:     102400", "SReclaimable:    9000000")
    meminfo = meminfo.replace("SwapFree:        8000000", "SwapFree:              0")
    estimate = ImageEstimator(tree(tmp_path, meminfo), HibernateConfig()).estimate()
    assert estimate.floor_bytes == 0
    assert not estimate.fits(1.1)


@pytest.mark.parametrize(
    ("meminfo", "message"),
    [
        (MEMINFO.replace("MemFree:         1048576 kB", "MemFree: lots"), "line 2"),
        (MEMINFO.replace("SwapFree:        8000000 kB\n", ""), "lacks SwapFree"),
        ("", "lacks MemTotal"),
    ],
)
def test_malformed_meminfo_is_a_clear_error(tmp_path: Path, meminfo: str, message: str) -> None:
    with pytest.raises(EstimateError, match=message):
        ImageEstimator(tree(tmp_path, meminfo), HibernateConfig()).estimate()


def test_missing_meminfo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match="cannot read /proc/meminfo"):
        ImageEstimator(HostFS(tmp_path), HibernateConfig()).estimate()
