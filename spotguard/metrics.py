"""Prometheus metrics, and a health check that fails when monitoring fails (NTH's never does)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from spotguard.estimator import ImageEstimate
from spotguard.planner import Phase

# Around the default request deadline (2 s) and the soak's (0.3 s): a call ends within two.
POLL_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9, 1.2, 2.0, 3.0, 4.0, 6.0)


class Metrics:
    """The agent's figures. Its own registry, so tests and two agents in one process don't clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.phase = Gauge("spotguard_phase", "1 for the current phase", ["phase"], registry=r)
        self.healthy = Gauge(
            "spotguard_healthy", "1 while the metadata service answers", registry=r
        )
        self.imds_failures = Gauge(
            "spotguard_imds_consecutive_failures", "metadata polls failed in a row", registry=r
        )
        self.events = Counter("spotguard_events", "new events seen", ["kind"], registry=r)
        self.reclaimed = Counter(
            "spotguard_reclaimed_bytes", "bytes reclaimed", ["intensity"], registry=r
        )
        self.last_reclaim = Gauge(
            "spotguard_last_reclaim_bytes", "bytes reclaimed by the last run", registry=r
        )
        self.image_expected = Gauge(
            "spotguard_image_expected_bytes", "expected hibernation image", registry=r
        )
        self.image_floor = Gauge("spotguard_image_floor_bytes", "kernel's floor", registry=r)
        self.swap_free = Gauge("spotguard_swap_free_bytes", "free swap", registry=r)
        self.predicted_hibernate = Gauge(
            "spotguard_predicted_hibernate_seconds",
            "trigger to image written if hibernating now: preallocation + write + fixed overhead",
            registry=r,
        )
        self.hibernations = Counter(
            "spotguard_hibernations", "hibernations issued", ["result"], registry=r
        )
        self.ticks = Counter("spotguard_ticks", "control steps run", registry=r)
        self.poll_seconds = Histogram(
            "spotguard_poll_seconds",
            "one poll of one metadata source, token and GET (the notice path's turn)",
            ["source"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.poll_seconds_max = Gauge(
            "spotguard_poll_seconds_max", "the longest poll since start", ["source"], registry=r
        )
        self._poll_max: dict[str, float] = {}

    def observe_poll(self, source: str, seconds: float) -> None:
        self.poll_seconds.labels(source).observe(seconds)
        if seconds > self._poll_max.get(source, -1.0):
            self._poll_max[source] = seconds
            self.poll_seconds_max.labels(source).set(seconds)

    def set_prediction(self, estimate: ImageEstimate, fixed_overhead: float) -> None:
        """What the planner compares with the deadline, exported all the time, not only at a
        notice: how ready the instance is to hibernate right now."""
        self.predicted_hibernate.set(estimate.predicted_write_s + fixed_overhead)

    def set_phase(self, phase: Phase) -> None:
        for each in Phase:
            self.phase.labels(each.value).set(1 if each is phase else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`/metrics` and `/healthz` (503 with the reason when unhealthy) on an opt-in port."""

    def __init__(
        self, metrics: Metrics, health: Callable[[], tuple[bool, str]], address: str, port: int
    ) -> None:
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((address, port), handler)
        self._thread = threading.Thread(  # a short poll: stop() is part of SIGTERM's second
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    metrics: Metrics, health: Callable[[], tuple[bool, str]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok, why = health()
                self._answer(200 if ok else 503, (why or "ok").encode() + b"\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: scrapes every few seconds would drown the journal."""

    return Handler
