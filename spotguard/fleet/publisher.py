"""The agent's side of a drill: its decisions, as `spotguard` events on an EventBridge bus.

Opt-in (`[fleet] event_bus`). Publishing must never delay the notice path: every call only
puts an entry on a bounded in-memory queue and returns; one background thread sends batches
with short timeouts. A full queue or a failed call drops the entries with a log line — the
drill report then shows the gap, the hibernation goes ahead regardless.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from spotguard.clock import Clock
from spotguard.estimator import ImageEstimate
from spotguard.events import Event
from spotguard.fleet.events import SOURCE, Kind
from spotguard.monitors import InstanceFacts
from spotguard.reclaim.api import ReclaimResult

if TYPE_CHECKING:  # the stubs are a dev dependency; boto3 itself loads only when needed
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

log = structlog.get_logger()

BATCH = 10  # PutEvents takes at most 10 entries


def events_client(region: str, timeout_s: float) -> EventBridgeClient:
    """An EventBridge client the standard way (AWS_ENDPOINT_URL_EVENTBRIDGE, instance role apply),
    with one retry: an entry late by more than a few seconds is of no use to a drill."""
    import boto3  # noqa: PLC0415 - 20+ MiB, paid at the first decision, not while idling
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    config = BotoConfig(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "total_max_attempts": 2},
    )
    return boto3.client("events", region_name=region or None, config=config)


class FleetReporter:
    """Publishes one event per decision; see the module doc for why it never blocks."""

    def __init__(
        self,
        bus: str,
        *,
        clock: Clock,
        fixed_overhead_s: float,
        region: str = "",
        queue_size: int = 100,
        timeout_s: float = 2.0,
        client_for: Callable[[str, float], EventBridgeClient] = events_client,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._fixed_overhead_s = fixed_overhead_s
        self._region = region
        self._timeout_s = timeout_s
        self._client_for = client_for
        self._client: EventBridgeClient | None = None
        self._entries: queue.Queue[PutEventsRequestEntryTypeDef | None] = queue.Queue(queue_size)
        self._facts: InstanceFacts | None = None
        # Decisions made before the instance id is known (a notice already out at start) wait
        # for it, in order, rather than being lost.
        self._waiting: list[tuple[Kind, float, Mapping[str, Any]]] = []
        self._waiting_max = queue_size
        self._lock = threading.Lock()
        # Started now, so a decision only ever enqueues; it sleeps until the first one.
        self._thread = threading.Thread(target=self._send_all, name="fleet", daemon=True)
        self._thread.start()

    # -- one call per decision ---------------------------------------------------------------
    def notice_seen(self, facts: InstanceFacts | None, event: Event) -> None:
        self._put(
            Kind.NOTICE_SEEN,
            facts,
            {
                "kind": event.kind.value,
                "notice": event.id,
                "action": event.action,
                "deadline": event.deadline,
                "seconds_left": self._left(event),
            },
        )

    def reclaim_done(self, facts: InstanceFacts | None, result: ReclaimResult) -> None:
        self._put(
            Kind.RECLAIM_DONE,
            facts,
            {
                "intensity": result.intensity.value,
                "reclaimed_bytes": result.reclaimed_bytes,
                "seconds": round(result.duration_s, 3),
                "stop_reason": result.stop_reason,
            },
        )

    def hibernation_issued(
        self,
        facts: InstanceFacts | None,
        event: Event,
        reason: str,
        estimate: ImageEstimate | None,
        mode: str,
    ) -> None:
        predicted = (
            None
            if estimate is None
            else round(estimate.predicted_write_s + self._fixed_overhead_s, 2)
        )
        self._put(
            Kind.HIBERNATION_ISSUED,
            facts,
            {
                "notice": event.id,
                "why_now": reason,
                "mode": mode,
                "image_bytes": estimate.expected_bytes if estimate else None,
                "predicted_seconds": predicted,
                "seconds_left": self._left(event),
                "deadline": event.deadline,
            },
        )

    def graceful(self, facts: InstanceFacts | None, event: Event | None, reason: str) -> None:
        self._put(Kind.GRACEFUL, facts, {"reason": reason, "notice": event.id if event else None})

    def resumed(self, facts: InstanceFacts | None, slept_s: float) -> None:
        self._put(Kind.RESUMED, facts, {"slept_seconds": round(slept_s, 1)})

    def close(self, wait_s: float = 2.0) -> None:
        """Give what is queued a moment to go out (agent shutdown), then stop the sender."""
        try:
            self._entries.put(None, timeout=wait_s)
        except queue.Full:
            return
        self._thread.join(wait_s)

    # -- the queue and the sender -------------------------------------------------------------
    def _left(self, event: Event) -> float | None:
        return None if event.deadline is None else round(event.deadline - self._clock.wall(), 1)

    def known(self, facts: InstanceFacts) -> None:
        """The instance's facts arrived: what waited for its id goes out now, in order."""
        with self._lock:
            self._facts = facts
            waiting, self._waiting = self._waiting, []
            for kind, at, detail in waiting:
                self._enqueue(facts, kind, at, detail)

    def _put(self, kind: Kind, facts: InstanceFacts | None, detail: Mapping[str, Any]) -> None:
        with self._lock:
            self._facts = known = facts or self._facts  # dropped at resume; the id stays
            if known is None:
                if len(self._waiting) < self._waiting_max:
                    self._waiting.append((kind, self._clock.wall(), detail))
                else:
                    log.warning(
                        "fleet.dropped", detail_type=kind.value, reason="instance id unknown"
                    )
                return
            for waiting_kind, at, waiting_detail in self._waiting:
                self._enqueue(known, waiting_kind, at, waiting_detail)
            self._waiting = []
            self._enqueue(known, kind, self._clock.wall(), detail)

    def _enqueue(
        self, facts: InstanceFacts, kind: Kind, at: float, detail: Mapping[str, Any]
    ) -> None:
        entry: PutEventsRequestEntryTypeDef = {
            "Source": SOURCE,
            "DetailType": kind.value,
            "Detail": json.dumps({"instance-id": facts.instance_id, "at": at, **detail}),
            "EventBusName": self._bus,
        }
        self._region = self._region or facts.region
        try:
            self._entries.put_nowait(entry)
        except queue.Full:
            log.warning("fleet.dropped", detail_type=kind.value, reason="queue full")

    def _send_all(self) -> None:
        while True:
            first = self._entries.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    more = self._entries.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send(batch)
                    return
                batch.append(more)
            self._send(batch)

    def _send(self, batch: list[PutEventsRequestEntryTypeDef]) -> None:
        types = [entry["DetailType"] for entry in batch]
        try:
            if self._client is None:
                self._client = self._client_for(self._region, self._timeout_s)
            answer = self._client.put_events(Entries=batch)
        except Exception as exc:  # any failure: drop, say so, keep the sender alive
            log.warning("fleet.publish_failed", detail_types=types, error=str(exc))
            return
        failed = [
            (entry["DetailType"], result.get("ErrorCode", ""), result.get("ErrorMessage", ""))
            for entry, result in zip(batch, answer.get("Entries", []), strict=False)
            if "ErrorCode" in result
        ]
        for detail_type, code, message in failed:
            log.warning(
                "fleet.publish_failed", detail_types=[detail_type], error=f"{code}: {message}"
            )
        log.debug("fleet.published", count=len(batch) - len(failed))
