"""The planner on plain values: no clock, no sleeping, no I/O."""

from __future__ import annotations

import dataclasses

import pytest

from spotguard.config import Config, from_mapping
from spotguard.estimator import ImageEstimate
from spotguard.events import Event, EventKind
from spotguard.monitors import InstanceFacts
from spotguard.planner import (
    CancelReclaim,
    Decision,
    Graceful,
    Hibernate,
    Observation,
    Phase,
    PlannerState,
    Resumed,
    RunHooks,
    StartReclaim,
    is_idle,
    plan,
    small_image_bytes,
)
from spotguard.reclaim.api import Intensity, ReclaimResult
from spotguard.signals import HostSample, Pressure
from spotguard.trigger import TriggerResult

GIB = 1 << 30
WALL = 1_800_000_000.0
MONO = 5_000.0
FACTS = InstanceFacts("i-0abc", "us-east-1", "spot", hibernation_configured=True)
IDLE = HostSample(99.0, Pressure(0.0, 0.0, 0.0, 0.0, 0.0), 0.0, 0.05)
BUSY = HostSample(40.0, Pressure(30.0, 0.0, 0.0, 0.0, 0.0), 0.0, 1.5)


def config(**sections: dict[str, object]) -> Config:
    return from_mapping(sections, env={})


def estimate(
    expected: int = 3 * GIB, floor: int = GIB // 2, swap_free: int = 8 * GIB, clean: int = 0
) -> ImageEstimate:
    bandwidth = 100 << 20
    return ImageEstimate(
        saveable_bytes=7 * GIB,
        floor_bytes=floor,
        image_size_limit=3 * GIB,
        expected_bytes=expected,
        swap_total_bytes=8 * GIB,
        swap_free_bytes=swap_free,
        bandwidth_bytes_per_s=bandwidth,
        predicted_write_s=expected / bandwidth,
        clean_bytes=clean,
    )


def notice(action: str = "stop", in_s: float = 120.0, now: float = WALL) -> Event:
    return Event(EventKind.SPOT_INTERRUPTION, f"spot-itn:{action}", action, deadline=now + in_s)


def obs(t: float = 0.0, **fields: object) -> Observation:
    base: dict[str, object] = {"facts": FACTS, "estimate": estimate(), "host": IDLE}
    base.update(fields)
    return Observation(wall=WALL + t, monotonic=MONO + t, **base)  # type: ignore[arg-type]


def kinds(decisions: list[Decision]) -> list[str]:
    return [type(d).__name__ + (f":{d.kind}" if isinstance(d, RunHooks) else "") for d in decisions]


def steps(
    state: PlannerState, cfg: Config, *observations: Observation
) -> tuple[PlannerState, list[Decision]]:
    decisions: list[Decision] = []
    for each in observations:
        state, decisions = plan(state, each, cfg)
    return state, decisions


class TestIdle:
    def test_light_reclaim_after_configured_idle_time(self) -> None:
        cfg = config(idle={"duration": "30s"})
        state, first = plan(PlannerState(), obs(0), cfg)
        assert first == []
        state, early = plan(state, obs(29), cfg)
        assert early == []
        state, due = plan(state, obs(30), cfg)
        starts = [d for d in due if isinstance(d, StartReclaim)]
        assert [s.request.intensity for s in starts] == [Intensity.LIGHT]
        assert kinds(due) == ["RunHooks:pre-reclaim", "StartReclaim"]

    def test_activity_resets_the_idle_clock(self) -> None:
        cfg = config(idle={"duration": "30s"})
        state, _ = steps(PlannerState(), cfg, obs(0), obs(20), obs(21, host=BUSY), obs(40))
        _, decisions = plan(state, obs(50), cfg)
        assert decisions == []  # idle again only since t=40
        _, decisions = plan(state, obs(70), cfg)
        assert any(isinstance(d, StartReclaim) for d in decisions)

    def test_not_repeated_until_repeat_after(self) -> None:
        cfg = config(idle={"duration": "10s"}, reclaim={"repeat_after": "600s"})
        state, _ = steps(PlannerState(), cfg, obs(0), obs(10))
        done = ReclaimResult(Intensity.LIGHT, 100 << 20, 3.0, "no-progress")
        state, _ = plan(state, obs(14, reclaim_finished=done), cfg)
        _, soon = plan(state, obs(100), cfg)
        assert soon == []
        _, later = plan(state, obs(614), cfg)
        assert any(isinstance(d, StartReclaim) for d in later)

    def test_light_reclaim_cut_by_its_budget_goes_on(self) -> None:
        cfg = config(idle={"duration": "10s"})
        state, _ = steps(PlannerState(), cfg, obs(0), obs(10))
        cut = ReclaimResult(Intensity.LIGHT, 100 << 20, 60.0, "budget")
        _, decisions = plan(state, obs(71, reclaim_finished=cut), cfg)
        assert any(isinstance(d, StartReclaim) for d in decisions)

    def test_nothing_starts_while_reclaim_runs(self) -> None:
        cfg = config(idle={"duration": "0s"})
        _, decisions = plan(PlannerState(), obs(0, reclaim_running=Intensity.LIGHT), cfg)
        assert decisions == []

    @pytest.mark.parametrize(
        ("sample", "idle"),
        [
            (IDLE, True),
            (BUSY, False),
            (None, False),
            (HostSample(None, Pressure(), None, None), False),  # first sample: no rate yet
            (dataclasses.replace(IDLE, pressure=Pressure(memory_some=5.0)), False),
            (dataclasses.replace(IDLE, io_bytes_per_s=float(500 << 20)), False),
        ],
    )
    def test_is_idle(self, sample: HostSample | None, idle: bool) -> None:
        assert is_idle(sample, config()) is idle


class TestWarnings:
    def test_rebalance_starts_one_deep_reclaim(self) -> None:
        cfg = config()
        rebalance = Event(EventKind.REBALANCE, "rebalance:t", "rebalance", WALL)
        state, decisions = plan(
            PlannerState(), obs(0, events=(rebalance,), new_events=(rebalance,)), cfg
        )
        assert state.phase is Phase.PREPARING
        assert kinds(decisions) == [
            "RunHooks:on-notice",
            "Notify",
            "RunHooks:pre-reclaim",
            "StartReclaim",
        ]
        deep = decisions[-1]
        assert isinstance(deep, StartReclaim)
        assert deep.request.intensity is Intensity.DEEP
        _, again = plan(state, obs(5, events=(rebalance,)), cfg)
        assert not any(isinstance(d, StartReclaim) for d in again)

    def test_deep_replaces_a_running_light_reclaim(self) -> None:
        rebalance = Event(EventKind.REBALANCE, "rebalance:t", "rebalance", WALL)
        _, decisions = plan(
            PlannerState(), obs(0, events=(rebalance,), reclaim_running=Intensity.LIGHT), config()
        )
        assert isinstance(decisions[0], CancelReclaim)

    @pytest.mark.parametrize("code", ["instance-stop", "instance-retirement"])
    def test_scheduled_stop_is_a_warning(self, code: str) -> None:
        event = Event(EventKind.SCHEDULED, "evt-1", code, WALL + 86400)
        state, _ = plan(PlannerState(), obs(0, events=(event,)), config())
        assert state.phase is Phase.PREPARING

    def test_asg_termination_is_a_warning(self) -> None:
        event = Event(EventKind.ASG_LIFECYCLE, "asg:Terminated", "terminate")
        state, decisions = plan(PlannerState(), obs(0, events=(event,)), config())
        assert state.phase is Phase.PREPARING
        assert any(isinstance(d, StartReclaim) for d in decisions)

    def test_scheduled_reboot_is_not(self) -> None:
        event = Event(EventKind.SCHEDULED, "evt-1", "system-reboot", WALL + 86400)
        state, _ = plan(PlannerState(), obs(0, events=(event,)), config())
        assert state.phase is Phase.ARMED


class TestStopNotice:
    def test_small_image_hibernates_at_once(self) -> None:
        small = estimate(expected=GIB // 2, floor=GIB // 2)
        n = notice()
        state, decisions = plan(
            PlannerState(), obs(0, events=(n,), new_events=(n,), estimate=small), config()
        )
        assert state.phase is Phase.HIBERNATING
        assert kinds(decisions) == [
            "RunHooks:on-notice",
            "Notify",
            "RunHooks:pre-hibernate",
            "Hibernate",
            "Notify",
        ]
        hibernate = decisions[3]
        assert isinstance(hibernate, Hibernate)
        assert hibernate.reason == "image-small"
        assert hibernate.image_size_bytes is None  # nothing clean left to drop

    def test_large_image_reclaims_within_the_deadline(self) -> None:
        cfg = config(hibernate={"deadline_margin": "20s", "fixed_overhead": "10s"})
        big = estimate(expected=3 * GIB)  # 30.7 s to write at 100 MiB/s
        n = notice(in_s=120)
        state, decisions = plan(PlannerState(), obs(0, events=(n,), estimate=big), cfg)
        assert state.phase is Phase.EMERGENCY
        (start,) = [d for d in decisions if isinstance(d, StartReclaim)]
        assert start.request.intensity is Intensity.EMERGENCY
        # latest start = 120 - 20 - (30.72 + 10) = 59.3 s; minus one poll interval
        assert start.request.budget_s == pytest.approx(58.3, abs=0.1)
        assert start.request.target_bytes == 7 * GIB - small_image_bytes(big, cfg)

    def test_hibernates_once_reclaim_made_the_image_small(self) -> None:
        cfg = config()
        n = notice()
        state, _ = plan(PlannerState(), obs(0, events=(n,)), cfg)
        running = {"events": (n,), "reclaim_running": Intensity.EMERGENCY}
        state, decisions = plan(state, obs(5, **running), cfg)
        assert decisions == []
        shrunk = estimate(expected=GIB // 2 + (10 << 20))
        state, decisions = plan(state, obs(10, estimate=shrunk, **running), cfg)
        assert kinds(decisions) == [
            "CancelReclaim",
            "RunHooks:pre-hibernate",
            "Hibernate",
            "Notify",
        ]

    def test_deadline_wins_over_a_large_image(self) -> None:
        cfg = config(hibernate={"deadline_margin": "20s", "fixed_overhead": "10s"})
        n = notice(in_s=120)
        running = {"events": (n,), "reclaim_running": Intensity.EMERGENCY}
        state, _ = plan(PlannerState(), obs(0, events=(n,)), cfg)
        state, decisions = plan(state, obs(50, **running), cfg)
        assert decisions == []
        state, decisions = plan(state, obs(58.5, **running), cfg)
        hibernate = [d for d in decisions if isinstance(d, Hibernate)]
        assert [(h.reason, h.image_size_bytes) for h in hibernate] == [("deadline", None)]

    def test_reclaim_that_shortens_the_hibernation_goes_on_past_the_plain_deadline(
        self,
    ) -> None:
        """Issue 11: the kernel's shrink inside the window was slower than our own reclaim, so
        triggering at the plain deadline ended later than reclaiming on."""
        cfg = config(hibernate={"deadline_margin": "20s", "fixed_overhead": "10s"})
        n = notice(in_s=120)
        slow = dataclasses.replace(estimate(), predicted_write_s=100.0, reclaim_gain=3.0)
        state, decisions = plan(PlannerState(), obs(0, events=(n,), estimate=slow), cfg)
        (start,) = [d for d in decisions if isinstance(d, StartReclaim)]
        small_s = small_image_bytes(slow, cfg) / slow.bandwidth_bytes_per_s
        # until only a small image still fits: 120 - 20 - 10 - its write, less one poll
        assert start.request.budget_s == pytest.approx(120 - 20 - 10 - small_s - 1, abs=0.1)
        running = {"events": (n,), "reclaim_running": Intensity.EMERGENCY}
        state, decisions = plan(state, obs(30, estimate=slow, **running), cfg)
        assert decisions == []  # the plain rule would have hibernated at t=0
        even = dataclasses.replace(slow, predicted_write_s=60.0, reclaim_gain=1.0)
        _, decisions = plan(state, obs(31, estimate=even, **running), cfg)
        assert [d.reason for d in decisions if isinstance(d, Hibernate)] == ["deadline"]

    def test_exhausted_reclaim_hibernates_without_waiting(self) -> None:
        cfg = config(hibernate={"tune_image_size": True})
        n = notice()
        state, _ = plan(PlannerState(), obs(0, events=(n,)), cfg)
        done = ReclaimResult(Intensity.EMERGENCY, GIB, 8.0, "no-progress")
        left = estimate(clean=GIB)  # e.g. swap cache our reclaim left behind
        _, decisions = plan(state, obs(9, events=(n,), reclaim_finished=done, estimate=left), cfg)
        (hibernate,) = [d for d in decisions if isinstance(d, Hibernate)]
        assert hibernate.reason == "reclaim-exhausted"
        # The kernel may drop the clean GiB (10 s at worst, at swap bandwidth): image_size is
        # lowered by that much, never into anonymous memory.
        assert hibernate.image_size_bytes == 2 * GIB
        _, untuned = plan(
            state, obs(9, events=(n,), reclaim_finished=done, estimate=left), config()
        )
        assert [d.image_size_bytes for d in untuned if isinstance(d, Hibernate)] == [None]

    def test_no_tightening_when_the_shrink_would_not_fit_the_deadline(self) -> None:
        cfg = config(hibernate={"tune_image_size": True})
        n = notice(in_s=75)  # latest start ~14 s away: too little for 20 s of shrinking
        state, _ = plan(PlannerState(), obs(0, events=(n,)), cfg)
        done = ReclaimResult(Intensity.EMERGENCY, GIB, 8.0, "no-progress")
        left = estimate(clean=2 * GIB)
        _, decisions = plan(state, obs(1, events=(n,), reclaim_finished=done, estimate=left), cfg)
        (hibernate,) = [d for d in decisions if isinstance(d, Hibernate)]
        assert hibernate.image_size_bytes is None

    def test_issued_at_most_once_per_notice(self) -> None:
        cfg = config()
        n = notice()
        small = estimate(expected=GIB // 2)
        state, first = plan(PlannerState(), obs(0, events=(n,), estimate=small), cfg)
        assert sum(isinstance(d, Hibernate) for d in first) == 1
        issued = TriggerResult(issued=True, reason="ok")
        for t in (1, 2, 3):
            state, later = plan(
                state, obs(t, events=(n,), estimate=small, trigger_result=issued), cfg
            )
            assert not any(isinstance(d, Hibernate) for d in later)
        moved = notice(now=WALL + 10)  # a mock that moves the time gives a new id
        moved = dataclasses.replace(moved, id="spot-itn:stop:other")
        _, later = plan(state, obs(4, events=(moved,), estimate=small), cfg)
        assert not any(isinstance(d, Hibernate) for d in later)

    def test_refused_hibernation_takes_the_graceful_path(self) -> None:
        cfg = config()
        n = notice()
        small = estimate(expected=GIB // 2)
        state, _ = plan(PlannerState(), obs(0, events=(n,), estimate=small), cfg)
        refused = TriggerResult(False, "not allowed", "UnauthorizedOperation")
        state, decisions = plan(
            state, obs(1, events=(n,), estimate=small, trigger_result=refused), cfg
        )
        assert state.phase is Phase.GRACEFUL
        (graceful,) = [d for d in decisions if isinstance(d, Graceful)]
        assert "not allowed" in graceful.reason
        assert "RunHooks:graceful" in kinds(decisions)

    @pytest.mark.parametrize(
        ("fields", "why"),
        [
            ({"facts": dataclasses.replace(FACTS, hibernation_configured=False)}, "not configured"),
            ({"estimate": estimate(expected=GIB // 2, swap_free=GIB // 4)}, "swap too small"),
            ({"estimate": None, "estimate_error": "no /proc/meminfo"}, "no /proc/meminfo"),
            ({"facts": None}, "facts unknown"),
        ],
    )
    def test_impossible_hibernation_is_graceful(self, fields: dict[str, object], why: str) -> None:
        n = notice()
        state, decisions = plan(PlannerState(), obs(0, events=(n,), **fields), config())
        assert state.phase is Phase.GRACEFUL
        assert not any(isinstance(d, Hibernate) for d in decisions)
        (graceful,) = [d for d in decisions if isinstance(d, Graceful)]
        assert why in graceful.reason

    def test_local_mode_does_not_need_ec2_facts(self) -> None:
        cfg = config(hibernate={"mode": "local"})
        n = notice()
        small = estimate(expected=GIB // 2)
        state, _ = plan(PlannerState(), obs(0, events=(n,), facts=None, estimate=small), cfg)
        assert state.phase is Phase.HIBERNATING

    def test_swap_that_fits_only_after_reclaim_waits_for_reclaim(self) -> None:
        n = notice()
        tight = estimate(expected=3 * GIB, swap_free=2 * GIB)
        state, decisions = plan(PlannerState(), obs(0, events=(n,), estimate=tight), config())
        assert state.phase is Phase.EMERGENCY
        assert any(isinstance(d, StartReclaim) for d in decisions)


class TestHibernateNotice:
    def test_only_short_hooks_and_no_hibernation_of_our_own(self) -> None:
        n = notice("hibernate")
        state, decisions = plan(
            PlannerState(), obs(0, events=(n,), reclaim_running=Intensity.LIGHT), config()
        )
        assert state.phase is Phase.EC2_HIBERNATING
        assert kinds(decisions) == ["CancelReclaim", "RunHooks:pre-hibernate", "Notify"]
        hooks = decisions[1]
        assert isinstance(hooks, RunHooks)
        assert hooks.budget_s == config().hibernate.pre_hibernate_budget
        _, again = plan(state, obs(1, events=(n,)), config())
        assert again == []


class TestResume:
    def test_wall_clock_jump_means_resumed(self) -> None:
        cfg = config()
        n = notice()
        small = estimate(expected=GIB // 2)
        state, _ = plan(PlannerState(), obs(0, events=(n,), estimate=small), cfg)
        assert state.phase is Phase.HIBERNATING
        # Two hours hibernated: the wall clock moved, the monotonic clock did not.
        after = Observation(wall=WALL + 7201, monotonic=MONO + 1, facts=FACTS, estimate=small)
        state, decisions = plan(state, after, cfg)
        assert state.phase is Phase.ARMED
        assert isinstance(decisions[0], Resumed)
        assert decisions[0].slept_s == pytest.approx(7200)
        assert kinds(decisions)[1:] == ["RunHooks:post-resume"]
        # The same notice, still served after the resume, does not start another round.
        still = Observation(wall=WALL + 7202, monotonic=MONO + 2, events=(n,), estimate=small)
        state, decisions = plan(state, still, cfg)
        assert state.phase is Phase.ARMED
        assert decisions == []

    def test_sleep_hook_signal_means_resumed(self) -> None:
        going_down = PlannerState(phase=Phase.HIBERNATING, notice_id="n")
        state, decisions = plan(going_down, obs(0, resume_signalled=True), config())
        assert isinstance(decisions[0], Resumed)
        # The same resume, signalled again after the clock jump caught it, is not a second one.
        _, decisions = plan(state, obs(1, resume_signalled=True), config())
        assert not any(isinstance(d, Resumed) for d in decisions)

    def test_small_drift_is_not_a_resume(self) -> None:
        state, _ = plan(PlannerState(), obs(0), config())
        drift = Observation(wall=WALL + 2.5, monotonic=MONO + 1, facts=FACTS, estimate=estimate())
        _, decisions = plan(state, drift, config())
        assert not any(isinstance(d, Resumed) for d in decisions)
