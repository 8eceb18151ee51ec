"""One interruption, one identity: the event store on plain values."""

from __future__ import annotations

from spotguard.events import Change, Event, EventKind, EventStore

SPOT = EventKind.SPOT_INTERRUPTION
T0 = 1_800_000_120.0


def spot(deadline: float, action: str = "stop") -> Event:
    return Event(SPOT, f"spot-itn:{action}:{deadline}", action, deadline)


def test_moving_time_is_one_event_with_the_earliest_deadline() -> None:
    store = EventStore()
    first = store.update("spot", [spot(T0)])
    assert [e.id for e in first.new] == [f"spot-itn:stop:{T0}"]
    changes: list[Change] = []
    for n in range(1, 30):  # AWS's mock: request time + 2 min, on every request
        update = store.update("spot", [spot(T0 + n)])
        assert update.new == ()
        changes += update.changed
    assert len(changes) == 1  # said once, as a change
    assert changes[0].announced_deadline == T0 + 1
    (active,) = store.active()
    assert (active.id, active.deadline) == (f"spot-itn:stop:{T0}", T0)


def test_an_earlier_time_moves_the_deadline() -> None:
    store = EventStore()
    store.update("spot", [spot(T0)])
    store.update("spot", [spot(T0 + 5)])
    update = store.update("spot", [spot(T0 - 30)])
    assert [c.what for c in update.changed] == ["deadline moved earlier"]
    assert store.active()[0].deadline == T0 - 30
    assert store.active()[0].id == f"spot-itn:stop:{T0}"


def test_a_changed_action_is_taken() -> None:
    store = EventStore()
    store.update("spot", [spot(T0)])
    update = store.update("spot", [spot(T0, "hibernate")])
    assert update.new == ()
    assert store.active()[0].action == "hibernate"


def test_false_alarm_is_the_same_interruption() -> None:
    store = EventStore()
    store.update("spot", [spot(T0)])
    assert store.update("spot", []).new == ()
    assert store.active() == ()
    again = store.update("spot", [spot(T0 + 40)])
    assert again.new == ()
    assert store.active()[0].id == f"spot-itn:stop:{T0}"


def test_rebalance_is_one_per_life_and_scheduled_events_one_per_event_id() -> None:
    store = EventStore()
    rebalances = [Event(EventKind.REBALANCE, f"rebalance:{t}", "rebalance") for t in range(5)]
    news = [store.update("rebalance", [r]).new for r in rebalances]
    assert [len(n) for n in news] == [1, 0, 0, 0, 0]
    a = Event(EventKind.SCHEDULED, "instance-event-a", "instance-stop", T0)
    b = Event(EventKind.SCHEDULED, "instance-event-b", "instance-stop", T0)
    assert len(store.update("scheduled", [a]).new) == 1
    assert [e.id for e in store.update("scheduled", [a, b]).new] == ["instance-event-b"]


def test_after_a_resume_a_new_notice_is_new_and_a_stale_one_is_not() -> None:
    store = EventStore()
    store.update("spot", [spot(T0)])
    store.update("spot", [spot(T0 + 1)])
    store.new_life()
    stale = store.update("spot", [spot(T0 + 1)])  # still served after the resume
    assert stale.new == ()
    assert store.active()[0].id == f"spot-itn:stop:{T0}"  # the handled one's id
    fresh = store.update("spot", [spot(T0 + 7200)])
    assert [e.id for e in fresh.new] == [f"spot-itn:stop:{T0 + 7200}"]


def test_seeded_identity_from_a_previous_run_is_not_new() -> None:
    store = EventStore()
    store.seed(SPOT, "spot-itn:stop:before-the-crash")
    update = store.update("spot", [spot(T0 + 60)])
    assert update.new == ()
    assert store.active()[0].id == "spot-itn:stop:before-the-crash"
    assert store.active()[0].deadline == T0 + 60


def test_retired_ids_are_known() -> None:
    store = EventStore()
    store.retire([f"spot-itn:stop:{T0}"])
    assert store.update("spot", [spot(T0)]).new == ()
