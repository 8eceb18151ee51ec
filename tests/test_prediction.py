"""The hibernation prediction: the kernel's log lines, our swap rate, and what they predict."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from spotguard.assemble import build_agent
from spotguard.clock import SystemClock
from spotguard.config import HibernateConfig, from_mapping
from spotguard.estimator import ImageEstimator
from spotguard.hostfs import HostFS
from spotguard.metrics import Metrics
from spotguard.prediction import (
    CALIBRATION_RANGE,
    MIN_SWAP_SAMPLE,
    KernelFigures,
    KmsgLog,
    MemoryNow,
    Predictor,
    SwapRate,
    parse_kernel_log,
)
from spotguard.reclaim.api import Intensity, ReclaimRequest
from spotguard.simhost import SimCgroup, SimHost
from tests.test_estimator import tree

MIB = 1 << 20
GIB = 1 << 30
ATTEMPT = [
    "6,1500,900000000,-;PM: hibernation: hibernation entry",
    "6,1510,900100000,-;PM: hibernation: Preallocating image memory",
    "6,1511,987500000,-;PM: hibernation: Allocated 4870592 kbytes in 87.40 seconds (55.72 MB/s)",
    "6,1512,987600000,-;PM: hibernation: Need to copy 670208 pages",
    "6,1530,990000000,-;PM: hibernation: Wrote 2681856 kbytes in 73.70 seconds (36.38 MB/s)",
]


def test_the_latest_attempts_figures_from_kmsg_records() -> None:
    figures = parse_kernel_log(ATTEMPT)
    assert figures == KernelFigures(
        allocated_bytes=4870592 * 1024,
        allocated_s=87.40,
        copied_bytes=670208 * 4096,
        wrote_bytes=2681856 * 1024,
        wrote_s=73.70,
    )
    assert figures.write_rate == pytest.approx(2681856 * 1024 / 73.70)
    again = parse_kernel_log(["[ 1200.5] PM: hibernation: hibernation entry"], figures)
    assert again == KernelFigures()  # a new attempt: nothing of the old one is mixed in
    dmesg = parse_kernel_log(["[  99.1] PM: Allocated 1024 kbytes in 0.50 seconds (2.04 MB/s)"])
    assert (dmesg.allocated_bytes, dmesg.allocated_s, dmesg.write_rate) == (1 << 20, 0.5, None)
    assert parse_kernel_log(["Allocated 5 kbytes in 1.0 seconds", "random noise"]) == (
        KernelFigures()
    )


def test_kmsg_is_read_once_then_only_what_is_new(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    kmsg = tmp_path / "dev" / "kmsg"
    kmsg.write_text(ATTEMPT[0] + "\n SUBSYSTEM=acpi\n" + ATTEMPT[2] + "\n")
    reader = KmsgLog(HostFS(tmp_path))
    assert reader.read_new() == [
        "PM: hibernation: hibernation entry",
        "PM: hibernation: Allocated 4870592 kbytes in 87.40 seconds (55.72 MB/s)",
    ]
    assert reader.read_new() == []
    with kmsg.open("a") as out:
        out.write(ATTEMPT[4] + "\n")
    assert reader.read_new() == [ATTEMPT[4].split(";", 1)[1]]
    reader.close()


def test_no_kernel_log_is_no_figures(tmp_path: Path) -> None:
    assert KmsgLog(HostFS(tmp_path)).read_new() == []
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kmsg").mkdir()  # unreadable as a file: EISDIR, once
    assert KmsgLog(HostFS(tmp_path)).read_new() == []


def test_swap_rate_keeps_the_recent_large_writes() -> None:
    rate = SwapRate(keep=2)
    assert rate.rate() is None
    rate.note(MIN_SWAP_SAMPLE - 1, 0.01)  # too little to be bound by the device
    rate.note(100 * MIB, 0.0)
    assert rate.rate() is None
    rate.note(100 * MIB, 1.0)
    rate.note(300 * MIB, 1.0)
    assert rate.rate() == 200 * MIB
    rate.note(50 * MIB, 1.0)
    assert rate.rate() == 175 * MIB  # the first sample has aged out


class FakeLog:
    def __init__(self) -> None:
        self.pending: list[str] = []

    def read_new(self) -> list[str]:
        lines, self.pending = self.pending, []
        return lines


# Issue 11's spotguard arm at the trigger (8 GiB guest, image_size default).
TRIGGER = MemoryNow(
    saveable=4670 * MIB,
    floor=90 * MIB,
    image_limit=3158 * MIB,
    anon=3100 * MIB,
    clean=150 * MIB,
    free=(8192 + 300 - 4670) * MIB,
)


def test_the_slowest_known_rate_bounds_each_part() -> None:
    rates = SwapRate()
    predictor = Predictor(100 * MIB, GIB, FakeLog(), rates)
    first = predictor.predict(TRIGGER)
    assert (first.swap_rate, first.write_rate) == (100 * MIB, 100 * MIB)
    assert first.image_bytes == 3158 * MIB
    assert first.shrink_swap_bytes == (4670 - 3158 - 150) * MIB
    # a shrink: every frame but the target's is allocated, the excess swapped out on the way
    assert first.alloc_bytes == TRIGGER.saveable + TRIGGER.free - 3158 * MIB
    assert first.shrink_s == pytest.approx(
        first.alloc_bytes / GIB + first.shrink_swap_bytes / (100 * MIB) + 150 * MIB / GIB
    )
    rates.note(57 * MIB, 1.0)
    seen = predictor.predict(TRIGGER)
    assert (seen.swap_rate, seen.write_rate, seen.rate_source) == (
        57 * MIB,
        57 * MIB,
        "swap=reclaim write=reclaim",
    )
    assert seen.total_s > first.total_s


def test_below_the_target_only_the_image_is_allocated() -> None:
    small = dataclasses.replace(TRIGGER, saveable=1024 * MIB, anon=800 * MIB)
    predicted = Predictor(100 * MIB, 200 * MIB, FakeLog()).predict(small)
    assert (predicted.shrink_bytes, predicted.alloc_bytes) == (0, 1024 * MIB)
    assert predicted.shrink_s == pytest.approx(1024 / 200)
    assert predicted.write_s == pytest.approx(1024 / 100)


def test_beside_the_kernels_shrink_the_path_without_one() -> None:
    """image_size=0 with half a GiB left to save: the kernel allocates every frame but the
    floor's to shrink it (the slow part under emulation); with image_size raised past
    saveable it allocates the image's frames only and writes it whole."""
    zero = dataclasses.replace(
        TRIGGER,
        saveable=512 * MIB,
        anon=300 * MIB,
        clean=50 * MIB,
        image_limit=0,
        free=7900 * MIB,
    )
    predicted = Predictor(100 * MIB, 200 * MIB, FakeLog()).predict(zero)
    assert predicted.alloc_bytes == zero.saveable + zero.free - zero.floor
    assert predicted.unshrunk_shrink_s == pytest.approx(512 / 200)
    assert predicted.unshrunk_write_s == pytest.approx(512 / 100)
    assert predicted.unshrunk_shrink_s + predicted.unshrunk_write_s < predicted.total_s


def test_issue_11s_spotguard_arm_within_a_quarter() -> None:
    """The model against the kernel's own split at the trigger of issue 11's spotguard arm:
    87.4 s preallocation, 73.7 s write; allocation at 74 MB/s (its oneshot arm), our reclaim's
    57 MB/s, a 36 MB/s write configured."""
    rates = SwapRate()
    rates.note(57 * 1000 * 1000, 1.0)
    predicted = Predictor(36e6, 74e6, FakeLog(), rates).predict(TRIGGER)
    assert predicted.shrink_s == pytest.approx(87.4, rel=0.25)
    assert predicted.write_s == pytest.approx(73.7, rel=0.25)
    assert predicted.total_s == pytest.approx(87.4 + 73.7, rel=0.25)


def test_a_hibernation_in_the_log_calibrates_the_shrink() -> None:
    kernel = FakeLog()
    predictor = Predictor(36 * MIB, 74e6, kernel)
    before = predictor.predict(TRIGGER)  # the last prediction before the trigger...
    kernel.pending = [  # ...and after the resume, the kernel's own figure: twice as long
        "PM: hibernation: hibernation entry",
        f"PM: hibernation: Allocated 1000 kbytes in {before.shrink_s * 2:.2f} seconds (1 MB/s)",
    ]
    after = predictor.predict(TRIGGER)
    assert after.calibration == pytest.approx(2.0, rel=0.01)
    assert after.shrink_s == pytest.approx(2 * before.shrink_s, rel=0.01)
    assert after.write_s == before.write_s
    kernel.pending = [
        "PM: hibernation: hibernation entry",
        f"PM: hibernation: Allocated 1000 kbytes in {before.shrink_s * 50:.2f} seconds (1 MB/s)",
    ]
    assert predictor.predict(TRIGGER).calibration == CALIBRATION_RANGE[1]
    assert predictor.predict(TRIGGER).calibration == CALIBRATION_RANGE[1]  # nothing new: kept


def test_the_prediction_is_exported_as_a_metric(tmp_path: Path) -> None:
    estimate = ImageEstimator(tree(tmp_path, image_size="0"), HibernateConfig()).estimate()
    metrics = Metrics()
    metrics.set_prediction(estimate, 10.0)
    text = metrics.render().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("spotguard_predicted_hibernate"))
    assert float(line.split()[1]) == pytest.approx(estimate.predicted_write_s + 10.0)
    assert estimate.predicted_write_s > 30.0  # image_size=0: the whole shrink is in it


def test_the_agent_predicts_from_the_swap_rate_its_own_reclaim_reached(tmp_path: Path) -> None:
    """build_agent shares one SwapRate between the engine and the estimator."""
    config = from_mapping(
        {
            "agent": {"state_file": str(tmp_path / "state.json")},
            "reclaim": {"backend": "v2", "background": ["batch.slice"]},
            "imds": {"url": "http://127.0.0.1:9"},  # built, never asked here
        },
        env={},
    )
    batch = {"batch.slice": SimCgroup(file_bytes=64 * MIB, anon_bytes=512 * MIB)}
    host = SimHost(tmp_path / "host", cgroups=batch, reclaim_bytes_per_s=1024 * MIB)
    agent = build_agent(config, SystemClock(), fs=HostFS(host.root), kernel=host)
    assert agent.parts.estimator.estimate().rate_source == "swap=config write=config"
    request = ReclaimRequest(Intensity.DEEP, 30.0, cgroups=("batch.slice",))
    agent.parts.reclaimer.reclaim(request, threading.Event())
    after = agent.parts.estimator.estimate()
    assert after.rate_source.startswith("swap=reclaim ")
    assert after.swap_rate_bytes_per_s != 100 * MIB  # what the reclaim reached, not the config


def test_the_whole_image_writes_at_the_device_rate_reserved_pages_too() -> None:
    """Reserved pages (mostly zeros) went out at ~440 MB/s on a quiet host, so they once had a
    rate of their own (200 MB/s). On a busy one (testbed --busy-host 1, 2026-12-02) the
    kernel wrote a 410 MB image, 265 MB of it reserved, in 11.96 s: 34 MB/s for all of it,
    where the split said 5.9 s. The image writes at the device's rate whatever it holds."""
    predictor = Predictor(36 * MIB, GIB, FakeLog())
    small = MemoryNow(
        saveable=438_341_632, floor=353_849_344, image_limit=3 * GIB, anon=20 * MIB, clean=0
    )
    assert predictor.predict(small).write_s == pytest.approx(11.96, rel=0.25)
    assert predictor.predict(small).write_s == pytest.approx(small.saveable / (36 * MIB))
