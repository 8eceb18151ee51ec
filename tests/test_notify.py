"""The webhook against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from spotguard.clock import FakeClock, SystemClock
from spotguard.notify import Webhook

PAYLOAD = {"event": "spot-interruption", "action": "hibernate", "deadline": 1_800_000_120.0}


@dataclass
class Receiver:
    """Answers with the scripted statuses in turn (then 200) and keeps what it was sent."""

    url: str
    statuses: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.content_types.append(self.headers["Content-Type"])
            receiver.bodies.append(json.loads(body))
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_a_5xx_is_retried_until_accepted(receiver: Receiver) -> None:
    receiver.statuses = [503, 502]
    clock = FakeClock()
    with capture_logs() as logs:
        sent = Webhook(receiver.url, attempts=3, clock=clock).send(PAYLOAD, clock.wall() + 60)
    assert sent
    assert receiver.bodies == [PAYLOAD] * 3
    assert receiver.content_types == ["application/json"] * 3
    assert [e["event"] for e in logs] == ["webhook.retry", "webhook.retry", "webhook.sent"]
    assert all("secret-token" not in str(e) for e in logs)


def test_gives_up_after_the_attempts(receiver: Receiver) -> None:
    receiver.statuses = [500] * 5
    clock = FakeClock()
    with capture_logs() as logs:
        sent = Webhook(receiver.url, attempts=2, clock=clock).send(PAYLOAD, None)
    assert not sent
    assert len(receiver.bodies) == 2
    assert logs[-1]["event"] == "webhook.failed"


def test_a_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [404]
    assert not Webhook(receiver.url, attempts=3, clock=FakeClock()).send(PAYLOAD, None)
    assert len(receiver.bodies) == 1


def test_never_waits_past_the_deadline(receiver: Receiver) -> None:
    receiver.statuses = [503] * 5
    clock = FakeClock()
    deadline = clock.wall() + 0.2  # the first backoff (0.5 s) would cross it
    assert not Webhook(receiver.url, attempts=5, clock=clock).send(PAYLOAD, deadline)
    assert len(receiver.bodies) == 1
    assert clock.wall() <= deadline


def test_a_passed_deadline_sends_nothing(receiver: Receiver) -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        assert not Webhook(receiver.url, attempts=3, clock=clock).send(PAYLOAD, clock.wall())
    assert receiver.bodies == []
    assert [e["event"] for e in logs] == ["webhook.expired"]


def test_a_silent_receiver_is_bounded_by_the_deadline(silent_url: str) -> None:
    clock = SystemClock()
    deadline = clock.wall() + 0.5
    with capture_logs() as logs:
        assert not Webhook(silent_url, attempts=3, clock=clock).send(PAYLOAD, deadline)
    assert logs[-1]["event"] == "webhook.failed"
    assert "timed out" in logs[-1]["error"].lower()


def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        clock = FakeClock()
        with capture_logs() as logs:
            assert not Webhook(url, attempts=3, clock=clock).send(PAYLOAD, clock.wall() + 60)
    assert [e["event"] for e in logs] == ["webhook.retry", "webhook.retry", "webhook.failed"]


def test_values_json_cannot_encode_are_sent_as_text(receiver: Receiver) -> None:
    assert Webhook(receiver.url, attempts=1).send({"hooks": Path("/etc/spotguard"), "n": 1}, None)
    assert receiver.bodies == [{"hooks": "/etc/spotguard", "n": 1}]
