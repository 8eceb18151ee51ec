"""The hibernation image estimate from fake /proc/meminfo, /proc/zoneinfo and /sys/power files."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotguard.config import Bytes, Config, HibernateConfig
from spotguard.estimator import EstimateError, ImageEstimator, reserved_bytes
from spotguard.hostfs import HostFS
from spotguard.planner import small_image_bytes

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096
MEMINFO = """\
MemTotal:        8388608 kB
MemFree:         1048576 kB
MemAvailable:    3145728 kB
Buffers:           10240 kB
Cached:          2097152 kB
SwapCached:            0 kB
SReclaimable:     102400 kB
Active(anon):    2097152 kB
Inactive(anon):  1048576 kB
Active(file):    1048576 kB
Inactive(file):  1048576 kB
SwapTotal:       8388608 kB
SwapFree:        8000000 kB
HugePages_Total:       0
"""
SAVEABLE = (8388608 - 1048576) * 1024
RECLAIMABLE = (102400 + 2097152 + 1048576 + 1048576 + 1048576) * 1024


def zoneinfo(*zones: tuple[int, int]) -> str:
    """(present, managed) pages per zone, in /proc/zoneinfo's layout."""
    return "".join(
        f"Node 0, zone   Zone{n}\n  pages free     100\n        spanned  {p + 10}\n"
        f"        present  {p}\n        managed  {m}\n        cma      0\n"
        for n, (p, m) in enumerate(zones)
    )


def tree(
    tmp_path: Path,
    meminfo: str = MEMINFO,
    image_size: str | None = None,
    zones: str | None = None,
) -> HostFS:
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    if zones is not None:
        (tmp_path / "proc" / "zoneinfo").write_text(zones)
    if image_size is not None:
        (tmp_path / "sys" / "power").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / "power" / "image_size").write_text(image_size)
    return HostFS(tmp_path)


def test_the_kernels_arithmetic(tmp_path: Path) -> None:
    config = HibernateConfig(swap_bandwidth=Bytes(200 * MIB))
    estimate = ImageEstimator(tree(tmp_path, image_size=f"{6 * GIB}\n"), config).estimate()
    assert estimate.saveable_bytes == SAVEABLE
    assert estimate.floor_bytes == SAVEABLE - RECLAIMABLE
    assert estimate.image_size_limit == 6 * GIB
    # snapshot.c's max_size caps the image: half of saveable + free, less 2x reserved_size
    assert estimate.image_bytes == 4 * GIB - 2 * MIB
    assert estimate.shrink_bytes == SAVEABLE - estimate.image_bytes
    # the shrink drops the 2 GiB of clean page cache, and swaps out the rest
    assert estimate.shrink_swap_bytes == estimate.shrink_bytes - 2 * GIB
    assert estimate.expected_bytes == estimate.image_bytes + estimate.shrink_swap_bytes
    assert estimate.swap_total_bytes == 8388608 * 1024
    assert estimate.swap_free_bytes == 8000000 * 1024
    assert estimate.bandwidth_bytes_per_s == estimate.swap_rate_bytes_per_s == 200 * MIB
    assert estimate.predicted_image_write_s == estimate.image_bytes / (200 * MIB)
    allocated = SAVEABLE + 1048576 * 1024 - estimate.image_bytes  # all frames but the target's
    assert estimate.predicted_shrink_s == pytest.approx(
        allocated / GIB + estimate.shrink_swap_bytes / (200 * MIB) + 2 * GIB / GIB
    )
    assert estimate.predicted_write_s == pytest.approx(
        estimate.predicted_shrink_s + estimate.predicted_image_write_s
    )
    assert estimate.rate_source == "swap=config write=config"
    assert estimate.fits(1.1)


def test_below_image_size_nothing_is_shrunk(tmp_path: Path) -> None:
    meminfo = MEMINFO.replace("MemFree:         1048576", "MemFree:         6291456")
    estimate = ImageEstimator(tree(tmp_path, meminfo), HibernateConfig()).estimate()
    assert estimate.shrink_bytes == estimate.shrink_swap_bytes == 0
    assert estimate.expected_bytes == estimate.image_bytes == estimate.saveable_bytes
    assert estimate.predicted_write_s == pytest.approx(
        estimate.saveable_bytes / (100 * MIB) + estimate.saveable_bytes / GIB  # write + frames
    )


def test_reserved_pages_present_count_in_saveable_and_floor(tmp_path: Path) -> None:
    zones = zoneinfo((3998, 3840), (782336, 772798), (1310720, 1245184))
    reserved = ((3998 - 3840) + (782336 - 772798) + (1310720 - 1245184)) * PAGE
    fs = tree(tmp_path, image_size=f"{8 * GIB}", zones=zones)
    assert reserved_bytes(fs) == reserved
    estimate = ImageEstimator(fs, HibernateConfig()).estimate()
    assert estimate.reserved_bytes == reserved
    assert estimate.saveable_bytes == SAVEABLE + reserved
    assert estimate.floor_bytes == SAVEABLE - RECLAIMABLE + reserved


def test_unreadable_zoneinfo_counts_no_reserved_pages(tmp_path: Path) -> None:
    assert reserved_bytes(tree(tmp_path)) == 0
    garbage = tree(tmp_path, zones="Node 0, zone DMA\n present lots\n managed\n")
    assert reserved_bytes(garbage) == 0


def test_image_size_zero_is_not_small_while_the_kernel_would_shrink(tmp_path: Path) -> None:
    """Issue 11: the floor as the expected image made the planner hibernate at once, and the
    kernel then shrank 4.4 GB inside the window."""
    config = Config()
    estimate = ImageEstimator(tree(tmp_path, image_size="0"), config.hibernate).estimate()
    assert estimate.image_bytes == estimate.floor_bytes
    assert estimate.shrink_swap_bytes == 3 * GIB  # all of anon: twice the excess is more
    assert estimate.expected_bytes > small_image_bytes(estimate, config)
    assert estimate.predicted_shrink_s >= 3 * GIB / config.hibernate.swap_bandwidth
    swapped = MEMINFO.replace("Active(anon):    2097152", "Active(anon):          0")
    swapped = swapped.replace("Inactive(anon):  1048576", "Inactive(anon):        0")
    swapped = swapped.replace("MemFree:         1048576", "MemFree:         4194304")
    after = ImageEstimator(tree(tmp_path, swapped, image_size="0"), config.hibernate).estimate()
    assert after.shrink_swap_bytes == 0  # only clean page cache left to drop, no swapping
    assert after.predicted_shrink_s < estimate.predicted_shrink_s / 4


def test_unshrunk_is_the_same_moment_with_image_size_past_saveable(tmp_path: Path) -> None:
    estimate = ImageEstimator(tree(tmp_path, image_size="0"), HibernateConfig()).estimate()
    assert estimate.shrink_bytes > 0
    raised = estimate.unshrunk(estimate.saveable_bytes)
    assert raised.image_bytes == raised.expected_bytes == estimate.saveable_bytes
    assert (raised.shrink_bytes, raised.shrink_swap_bytes) == (0, 0)
    assert raised.image_size_limit == estimate.saveable_bytes
    assert raised.predicted_write_s == pytest.approx(
        estimate.unshrunk_shrink_s + estimate.unshrunk_write_s
    )
    assert 0 < raised.predicted_shrink_s < estimate.predicted_shrink_s


def test_swap_cache_is_not_written_again_nor_counted_on_to_go(tmp_path: Path) -> None:
    meminfo = MEMINFO.replace("SwapCached:            0", "SwapCached:      1048576")
    estimate = ImageEstimator(tree(tmp_path, meminfo, image_size="0"), HibernateConfig()).estimate()
    assert estimate.swap_cached_bytes == GIB
    assert estimate.shrink_swap_bytes == 2 * GIB  # anon not yet in swap
    assert estimate.clean_bytes == 3 * GIB


def test_a_large_image_size_caps_at_saveable(tmp_path: Path) -> None:
    meminfo = MEMINFO.replace("MemFree:         1048576", "MemFree:         6291456")
    fs = tree(tmp_path, meminfo, image_size=f"{64 * 1024 * MIB}")
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


def test_the_kernel_log_of_this_machine_lowers_the_write_rate(tmp_path: Path) -> None:
    fs = tree(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kmsg").write_text(
        "6,900,5000000,-;PM: hibernation: hibernation entry\n"
        "6,901,5100000,-;PM: hibernation: Wrote 2681856 kbytes in 73.70 seconds (36.38 MB/s)\n"
    )
    estimate = ImageEstimator(fs, HibernateConfig()).estimate()
    assert estimate.bandwidth_bytes_per_s == int(2681856 * 1024 / 73.70)
    assert estimate.rate_source == "swap=config write=log"
    fields = estimate.prediction_fields()
    assert fields["predicted_s"] == round(estimate.predicted_write_s, 1)
    assert fields["rate_source"] == "swap=config write=log"


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
