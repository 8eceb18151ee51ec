"""The testbed's arithmetic on recorded consoles, without a guest: what one run's lines say
(the kernel's time split, the agent's prediction, the deadline), a run folder read back from
its logs, and issue 11's goals judged met / NOT met / not measured from medians."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from testbed import record, report
from testbed.guest import Line
from testbed.measure import MeasureError, Measurement, Observed, measure
from testbed.record import ArmRun, RunInfo
from testbed.run import Plan, busy_host, plan_facts

# Lines as a 1 GiB guest printed them (kernel printk stamps; host arrival times in front).
FIRST = [
    (100.0, "TESTBED idle-start t=40.0 arm=spotguard idle=25"),
    (101.0, "TESTBED mem t=41 swap_used=0 load=1"),
    (101.5, "[  OK  ] Started\r\x1b[K[  OK  ] systemd redraws its status line"),
    (
        103.0,
        '{"event": "reclaim.done", "intensity": "emergency", "reclaimed_bytes": 300000000, '
        '"duration_s": 2.0}',
    ),
    (104.0, "TESTBED mem t=44 swap_used=200000000 load=1"),
    (
        125.0,
        '{"event": "hibernate.issued", "why_now": "image-small", "image_bytes": 231919616, '
        '"seconds_left": 100.0, "predicted_s": 30.0, "predicted_shrink_s": 9.0, '
        '"predicted_image_write_s": 20.0}',
    ),
    (125.5, "[   65.308203] PM: hibernation: hibernation entry"),
    (
        125.6,
        "TESTBED trigger t=65.323 image_size=384188416 saveable=998621184 floor=106442752 "
        "reserved=68165632 swap_cached=155774976 swap_used=203042816",
    ),
    (125.7, "TESTBED fg t=65.4 n=100 p50_ms=1.00 p99_ms=6.05 max_ms=89.89[   65.4] Filesystems"),
    (125.8, "[   65.632362] PM: hibernation: Preallocating image memory"),
    (134.0, "[   74.042479] PM: hibernation: Allocated 229300 kbytes in 8.40 seconds (27.29 MB/s)"),
    (135.0, "[   74.312666] PM: hibernation: Need to copy 56621 pages"),
    (135.1, "[   74.538475] PM: Compressing and saving image data (56732 pages)..."),
    (150.0, "[   89.727781] PM: hibernation: Wrote 226928 kbytes in 15.18 seconds (14.94 MB/s)"),
    (20.0, "TESTBED warm t=30 seconds=9.119 ok=1"),
]
SECOND = [
    (230.0, "[   40.1] PM: hibernation: Read 226928 kbytes in 20.94 seconds (10.83 MB/s)"),
    (255.0, "TESTBED back t=50"),
    (255.5, "TESTBED mem t=50.5 swap_used=300000000 swapcached=100000000 load=1"),
    (
        256.0,
        '[   55.0] spotguard[300]: {"asked": 150000000, "seconds": 2.5, "event": "readahead.done"}',
    ),
    (280.0, "TESTBED retouch t=70 seconds=20.076 ok=1"),
]


def lines(raw: list[tuple[float, str]]) -> list[Line]:
    return [Line(t, text, i) for i, (t, text) in enumerate(raw)]


def observed(arm: str = "spotguard", **changes: object) -> Observed:
    seen = Observed(
        arm=arm,
        image_size="default",
        first=lines(FIRST),
        first_started=0.0,
        first_exited=151.0,
        second=lines(SECOND),
        second_started=200.0,
        disk_bps=100 << 20,
        notice_at=101.0 if arm == "spotguard" else None,
        notice_s=120.0,
        prediction_overhead_s=10.0,
    )
    return replace(seen, **changes)  # type: ignore[arg-type]


def test_a_marker_the_kernel_printed_into_right_after_its_name() -> None:
    """Seen at 8 GiB: the kernel's first hibernation line landed between the marker's name and
    its fields, which arrived on the next console line."""
    at = next(i for i, (_, text) in enumerate(FIRST) if text.startswith("TESTBED trigger"))
    t, text = FIRST[at]
    cut = [
        *FIRST[:at],
        (t, "TESTBED trigger [   65.308203] PM: hibernation: hibernation entry"),
        (t + 0.003, text.removeprefix("TESTBED trigger ")),
        *FIRST[at + 1 :],
    ]
    assert measure(observed(first=lines(cut))) == measure(observed())


def test_one_run_figures_come_from_its_lines() -> None:
    m = measure(observed())
    assert m.hibernate_s == pytest.approx(151.0 - 125.6)
    assert m.notice_to_exit_s == pytest.approx(50.0)
    assert m.deadline_slack_s == pytest.approx(70.0)
    # the agent's predicted_s leaves its fixed overhead out; its planner adds it, so do we
    assert (m.predicted_s, m.predicted_shrink_s, m.predicted_write_s) == (40.0, 9.0, 20.0)
    assert m.prediction_error == pytest.approx(40.0 / 25.4 - 1)
    assert m.prealloc_s == 8.4
    # by the kernel's own clock, not the lines' arrival: Allocated -> Compressing and saving
    assert m.snapshot_s == pytest.approx(74.538475 - 74.042479)
    assert m.other_s == pytest.approx(m.hibernate_s - 8.4 - m.snapshot_s - 15.18)
    assert m.image_bytes == 56621 * 4096
    assert m.reserved_bytes == 68165632
    assert m.floor_bytes == 106442752
    # 200 MB swapped out over the 2 s emergency window (interpolated between samples)
    assert m.anon_reclaim_bps == pytest.approx((200e6 * 2 / 3) / 2.0)
    # swap cache an earlier write left, freed in the window: out of RAM without swap growth
    cached = [
        (101.0, "TESTBED mem t=41 swap_used=500000000 swapcached=300000000 load=1"),
        (104.0, "TESTBED mem t=44 swap_used=500000000 swapcached=0 load=1"),
    ]
    freed = measure(observed(first=lines([*FIRST[:1], *cached, *FIRST[2:4], *FIRST[5:]])))
    assert freed.anon_reclaim_bps == pytest.approx((300e6 * 2 / 3) / 2.0)
    assert m.read_s == 20.94
    assert m.checksum_ok
    assert m.fg_max_ms == 89.89  # the kernel's line printed into the marker's is cut off


def test_an_arm_without_the_notice_is_timed_from_its_trigger() -> None:
    m = measure(observed("vanilla"))
    assert m.notice_to_exit_s == pytest.approx(m.hibernate_s)
    assert m.predicted_s == 40.0  # from the lines; a vanilla console has none in real runs


def test_a_console_without_the_kernel_write_is_an_error_not_a_zero() -> None:
    first = [(t, text) for t, text in FIRST if "Wrote" not in text]
    with pytest.raises(MeasureError, match="wrote"):
        measure(observed(first=lines(first)))


def test_a_run_folder_reads_back_to_the_same_figures(tmp_path: Path) -> None:
    seen = observed()
    for name, raw in zip(record.CONSOLES, (FIRST, SECOND), strict=True):
        text = "".join(f"{t:.3f} {line}\n" for t, line in raw)
        (tmp_path / f"{name}.console").write_text(text)
    info = RunInfo("python -m testbed.run --memory 1024", "2026-12-01T20:00:00Z", {"memory_mib": 1})
    record.save(tmp_path, record.outcome(seen, info))
    again = record.load(tmp_path)
    assert again.measurement == measure(seen)
    assert again.info == info
    assert record.recorded([tmp_path.parent], memory_mib=2) == []


def test_an_archived_run_reads_back_from_its_gzipped_consoles(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp" / "1024M-default-spotguard-x-0"
    scratch.mkdir(parents=True)
    for name, raw in zip(record.CONSOLES, (FIRST, SECOND), strict=True):
        (scratch / f"{name}.console").write_text("".join(f"{t:.3f} {ln}\n" for t, ln in raw))
    (scratch / "root.qcow2").write_bytes(b"disk")  # scratch only: never archived
    info = RunInfo("python -m testbed.run --memory 1024", "2026-12-01T20:00:00Z", {"memory_mib": 1})
    record.save(scratch, record.outcome(observed(), info))
    kept = tmp_path / "runs"
    (archived,) = record.archive(tmp_path / "tmp", kept)
    assert sorted(p.name for p in archived.iterdir()) == [
        "hibernate.console.gz",
        "observed.json",
        "resume.console.gz",
    ]
    assert record.archive(tmp_path / "tmp", kept) == []  # once
    assert record.load(archived).measurement == measure(observed())
    both = record.recorded([tmp_path / "tmp", kept])
    assert len(both) == 1  # the same run, in scratch and archive
    assert both[0].measurement is not None
    # what the re-touch had to read back: in swap, less what swap cache still held
    assert both[0].measurement.paged_back_bytes == 200_000_000
    # and what the readahead asked back of it, from its own event
    assert (both[0].measurement.readahead_bytes, both[0].measurement.readahead_s) == (150e6, 2.5)


def test_a_reading_error_is_not_kept_but_a_failed_run_is(tmp_path: Path) -> None:
    """The figures are read from the consoles again at every report: a parser fixed since
    reads a run it once failed on; a guest that never hibernated stays failed."""
    broken = [(t, "TESTBED trigger") if text.startswith("TESTBED trigger") else (t, text)
              for t, text in FIRST]  # fmt: skip
    for name, raw in zip(record.CONSOLES, (broken, SECOND), strict=True):
        text = "".join(f"{t:.3f} {line}\n" for t, line in raw)
        (tmp_path / f"{name}.console").write_text(text)
    info = RunInfo("python -m testbed.run --memory 1024", "2026-12-01T20:00:00Z", {"memory_mib": 1})
    unreadable = record.outcome(observed(first=lines(broken)), info)
    assert unreadable.measurement is None
    record.save(tmp_path, unreadable)
    (tmp_path / f"{record.CONSOLES[0]}.console").write_text(
        "".join(f"{t:.3f} {line}\n" for t, line in FIRST)  # as a fixed parser would read it
    )
    assert record.load(tmp_path).measurement == measure(observed())
    record.save(tmp_path, record.outcome(observed(), info, "the guest did not boot"))
    assert record.load(tmp_path).error == "the guest did not boot"


def run(m: Measurement) -> ArmRun:
    return ArmRun(observed(m.arm), m, "", RunInfo("cmd", "2026-12-01T20:00:00Z", {"memory_mib": 1}))


def test_goals_are_judged_on_medians_and_every_run(tmp_path: Path) -> None:
    sg = measure(observed())
    van = replace(measure(observed("vanilla")), hibernate_s=500.0, resume_s=100.0)
    runs = [
        run(van),
        run(replace(sg, hibernate_s=20.0, resume_s=30.0)),
        run(replace(sg, hibernate_s=30.0, resume_s=30.0)),
        run(replace(sg, hibernate_s=40.0, resume_s=30.0, notice_to_exit_s=115.0)),
    ]
    text = report.write(runs, tmp_path).read_text()
    checks = report.goals(report.by_arm([r.measurement for r in runs if r.measurement]))

    def goal(start: str) -> report.Goal:
        return next(g for g in checks if g.label.startswith(start))

    hib = goal("hibernate spotguard/vanilla <= 0.069 (image_size=default)")
    assert hib.value == pytest.approx(30.0 / 500.0)  # the median run over vanilla's
    assert hib.met is True
    assert goal("hibernate spotguard/vanilla <= 0.069 (image_size=0)").met is None
    deadline = goal("spotguard: notice")
    assert deadline.met is False  # one run of three left 5 s: every run must leave 10
    assert deadline.value == pytest.approx(5.0)
    assert goal("image <= 1.2 x").met is None  # no vanilla image_size=0 run in this table
    assert "[NOT met] spotguard: notice -> off" in text
    assert "[not measured] image <= 1.2 x" in text
    assert "30.00 (20.00-40.00)" in text  # median (min-max)
    assert "cmd" in text
    saved = json.loads((tmp_path / "hibernation-1M.json").read_text())
    assert [g["verdict"] for g in saved["goals"]][:2] == ["met", "NOT met"]


def test_spot_action_hibernate_has_no_deadline_to_judge() -> None:
    m = measure(observed("spotguard-hibernate", notice_at=125.6, notice_s=None))
    assert m.deadline_s is None
    assert m.deadline_slack_s is None
    checks = report.goals(report.by_arm([m]))
    assert all(g.met is None for g in checks if g.label.startswith("spotguard: notice"))


def test_a_busy_host_run_says_so_and_leaves_no_spinner_behind(tmp_path: Path) -> None:
    """`--busy-host N`: the promise holds on a busy host too, so the testbed can make one."""
    with busy_host(2) as spinners:
        assert [s.poll() for s in spinners] == [None, None]  # spinning all through the block
    assert all(s.returncode is not None for s in spinners)
    facts = plan_facts(Plan(busy_workers=2))
    assert facts["busy_workers"] == 2
    assert "busy_workers" not in plan_facts(Plan())  # a quiet run's facts, as before
    busy = replace(run(measure(observed())), info=RunInfo("cmd", "", {**facts, "memory_mib": 1}))
    text = report.write([busy], tmp_path).read_text()
    assert "Busy host: 2 process(es) spinning" in text
    quiet = report.write([run(measure(observed()))], tmp_path / "quiet").read_text()
    assert "Busy host" not in quiet


def test_the_floor_limit_scales_this_runs_rates_to_the_kernels_floor(tmp_path: Path) -> None:
    """What no agent could beat on this host: the run's own per-byte rates and fixed costs,
    for an image the size of the kernel's floor; not where the kernel shrank (then its
    "preallocation" was swapping out, which a floor-sized image would not do)."""
    m = replace(
        measure(observed()),
        image_bytes=400 << 20,
        written_bytes=400 << 20,
        saveable_bytes=420 << 20,
        floor_bytes=300 << 20,
        prealloc_s=4.0,
        write_s=4.0,
        snapshot_s=2.0,
        other_s=1.0,
        hibernate_s=11.0,
    )
    assert m.at_floor_s == pytest.approx(3.0 + 8.0 * 300 / 400)
    assert replace(m, saveable_bytes=2 << 30).at_floor_s is None  # shrunk: not a rate
    van = replace(measure(observed("vanilla")), hibernate_s=90.0)
    text = report.write([run(van), run(m)], tmp_path).read_text()
    assert f"floor would hibernate in {9.0 / 90.0:.3f} x vanilla's time here" in text
    resume = replace(m, resume_s=20.0, read_s=8.0, read_bytes=400 << 20)
    assert resume.resume_at_floor_s == pytest.approx(12.0 + 8.0 * 300 / 400)
