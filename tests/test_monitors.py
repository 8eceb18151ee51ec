"""Monitors and fetch_facts against the simulator over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from spotguard.clock import FakeClock
from spotguard.events import Event, EventKind
from spotguard.imds import ImdsClient, ImdsMalformedError, ImdsUnavailableError, format_rfc3339
from spotguard.monitors import (
    INSTANCE_ACTION,
    LifecycleMonitor,
    RebalanceMonitor,
    ScheduledEventMonitor,
    SpotInterruptionMonitor,
    default_monitors,
    fetch_facts,
)
from spotguard.simulator import MetadataSimulator, SimulatedInstance, scheduled_event
from tests.fixtures_imds import fast_config

WHEN = 1_800_000_120.0


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_spot_notice_becomes_one_stable_event(
    simulator: MetadataSimulator, imds_client: ImdsClient, sim_clock: FakeClock, action: str
) -> None:
    monitor = SpotInterruptionMonitor(imds_client, sim_clock)
    assert monitor.poll() == []
    simulator.set_notice(action, WHEN)
    expected = Event(
        EventKind.SPOT_INTERRUPTION,
        f"spot-itn:{action}:{format_rfc3339(WHEN)}",
        action,
        WHEN,
    )
    assert monitor.poll() == [expected]
    sim_clock.advance(5)
    assert monitor.poll() == [expected]


def test_spot_notice_with_unknown_action_is_malformed(
    simulator: MetadataSimulator, imds_client: ImdsClient, sim_clock: FakeClock
) -> None:
    simulator.set_notice("reboot", WHEN)
    with pytest.raises(ImdsMalformedError, match="unknown action 'reboot'"):
        SpotInterruptionMonitor(imds_client, sim_clock).poll()


def test_spot_notice_garbage_and_missing_fields_are_malformed(
    simulator: MetadataSimulator, imds_client: ImdsClient, sim_clock: FakeClock
) -> None:
    monitor = SpotInterruptionMonitor(imds_client, sim_clock)
    simulator.set_notice("", WHEN)
    with pytest.raises(ImdsMalformedError, match="missing or non-string 'action'"):
        monitor.poll()
    simulator.set_notice("stop", WHEN)
    simulator.set_fault("garbage", 1, path=INSTANCE_ACTION)
    with pytest.raises(ImdsMalformedError, match="not JSON"):
        monitor.poll()
    assert monitor.poll()[0].action == "stop"  # the next poll reads fine again


def test_scheduled_events_keep_only_active_ones(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    monitor = ScheduledEventMonitor(imds_client)
    assert monitor.poll() == []
    simulator.set_scheduled(
        [
            scheduled_event("instance-stop", WHEN, event_id="instance-event-1", description="x"),
            scheduled_event("system-reboot", WHEN, event_id="instance-event-2", state="completed"),
            scheduled_event("instance-retirement", WHEN, event_id="instance-event-3"),
            scheduled_event("system-maintenance", WHEN, event_id="e-4", state="canceled"),
        ]
    )
    assert monitor.poll() == [
        Event(EventKind.SCHEDULED, "instance-event-1", "instance-stop", WHEN, "x"),
        Event(
            EventKind.SCHEDULED,
            "instance-event-3",
            "instance-retirement",
            WHEN,
            "scheduled maintenance",
        ),
    ]


@pytest.mark.parametrize(
    "events",
    [
        [{"Code": "instance-stop", "State": "active", "EventId": "e-1"}],  # no NotBefore
        [{"Code": "instance-stop", "State": "active", "EventId": "e", "NotBefore": "tomorrow"}],
        ["instance-stop"],
    ],
)
def test_scheduled_events_malformed(
    simulator: MetadataSimulator, imds_client: ImdsClient, events: list[Any]
) -> None:
    simulator.set_scheduled(events)
    with pytest.raises(ImdsMalformedError, match="events/maintenance/scheduled"):
        ScheduledEventMonitor(imds_client).poll()


def test_scheduled_events_not_a_list(simulator: MetadataSimulator, imds_client: ImdsClient) -> None:
    simulator.set_fault("garbage", 1, path="/latest/meta-data/events/")
    with pytest.raises(ImdsMalformedError):
        ScheduledEventMonitor(imds_client).poll()


def test_rebalance_recommendation(simulator: MetadataSimulator, imds_client: ImdsClient) -> None:
    monitor = RebalanceMonitor(imds_client)
    assert monitor.poll() == []
    simulator.set_rebalance(WHEN)
    stamp = format_rfc3339(WHEN)
    assert monitor.poll() == [
        Event(EventKind.REBALANCE, f"rebalance:{stamp}", "rebalance", None, f"since {stamp}")
    ]


@pytest.mark.parametrize(
    ("state", "action"),
    [("Terminated", "terminate"), ("Warmed:Terminated", "terminate")],
)
def test_lifecycle_terminating_states(
    simulator: MetadataSimulator, imds_client: ImdsClient, state: str, action: str
) -> None:
    simulator.set_lifecycle(state)
    assert LifecycleMonitor(imds_client).poll() == [
        Event(EventKind.ASG_LIFECYCLE, f"asg:{state}", action, None, state)
    ]


@pytest.mark.parametrize("state", [None, "InService", "Pending", "Warmed:Stopped", "Detached"])
def test_lifecycle_other_states_are_quiet(
    simulator: MetadataSimulator, imds_client: ImdsClient, state: str | None
) -> None:
    simulator.set_lifecycle(state)
    assert LifecycleMonitor(imds_client).poll() == []


def test_failures_reach_the_caller(simulator: MetadataSimulator, imds_client: ImdsClient) -> None:
    simulator.set_fault("error_503")
    for monitor in default_monitors(lambda: imds_client, FakeClock()):
        with pytest.raises(ImdsUnavailableError):
            monitor.poll()


def test_default_monitors_cover_every_kind(imds_client: ImdsClient) -> None:
    monitors = default_monitors(lambda: imds_client, FakeClock())
    assert {m.kind for m in monitors} == set(EventKind)
    assert all(m.poll() == [] for m in monitors)


def test_fetch_facts(simulator: MetadataSimulator, imds_client: ImdsClient) -> None:
    facts = fetch_facts(imds_client)
    assert facts.instance_id == "i-0123456789abcdef0"
    assert facts.region == "us-east-1"
    assert facts.life_cycle == "spot"
    assert facts.hibernation_configured is True
    simulator.hibernation_configured = False
    assert fetch_facts(imds_client).hibernation_configured is False


def test_fetch_facts_falls_back_to_the_identity_document() -> None:
    instance = SimulatedInstance(region="eu-central-1", life_cycle="on-demand")
    with MetadataSimulator(instance=instance) as sim:
        sim.set_fault("not_found", path="/latest/meta-data/placement/region")
        client = ImdsClient(fast_config(sim.url), clock=FakeClock())
        facts = fetch_facts(client)
        assert facts.region == "eu-central-1"
        assert facts.life_cycle == "on-demand"
        assert sim.count("GET", "/latest/dynamic/instance-identity/document", 200) == 1


@pytest.mark.parametrize("fault", ["garbage", "not_found"])
def test_fetch_facts_unknown_hibernation_is_none(
    simulator: MetadataSimulator, imds_client: ImdsClient, fault: str
) -> None:
    simulator.set_fault(fault, path="/latest/meta-data/hibernation/")
    assert fetch_facts(imds_client).hibernation_configured is None


def test_fetch_facts_garbled_identity_document_gives_no_region(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("not_found", path="/latest/meta-data/placement/")
    simulator.set_fault("garbage", path="/latest/dynamic/")
    facts = fetch_facts(imds_client)
    assert facts.region == ""
    assert facts.instance_id == "i-0123456789abcdef0"
