"""The webhook against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import ipaddress
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
from spotguard.config import ConfigError, from_mapping
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


# -- where a webhook may go, and what its logs may say ---------------------------------------
def test_a_failing_webhook_logs_the_host_never_the_path_query_or_password(
    receiver: Receiver,
) -> None:
    receiver.statuses = [500] * 3
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://user:hunter2@127.0.0.1:{port}/hooks/secret-token?key=s3cr3t#frag"
    with capture_logs() as logs:
        assert not Webhook(url, attempts=3, clock=FakeClock()).send(PAYLOAD, None)
    assert [e["event"] for e in logs] == ["webhook.retry", "webhook.retry", "webhook.failed"]
    assert logs[-1]["host"] == f"127.0.0.1:{port}"
    assert logs[-1]["error"] == "HTTP 500"
    for secret in ("secret-token", "s3cr3t", "hunter2", "/hooks", "frag"):
        assert all(secret not in str(e) for e in logs), secret


def test_a_refused_connection_is_logged_without_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/t/secret-token"
        with capture_logs() as logs:
            assert not Webhook(url, attempts=1, clock=FakeClock()).send(PAYLOAD, None)
    assert logs[-1]["error"] == "connection failed"
    assert "secret-token" not in str(logs)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the metadata service
        "http://169.254.170.2/v2/credentials/x",  # ECS task credentials
        "http://[fd00:ec2::254]/latest/meta-data/",  # the metadata service over IPv6
        "http://[fe80::1%25eth0]:8080/x",  # any other link-local address
        "http://[::ffff:169.254.169.254]/",  # the same, IPv4-mapped
    ],
)
def test_link_local_and_metadata_targets_are_refused_without_a_request(url: str) -> None:
    checked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        checked.append(host)  # a literal address still goes through the same check
        return [host.strip("[]")]

    with capture_logs() as logs:
        assert not Webhook(url, attempts=3, clock=FakeClock(), resolver=resolver).send(
            PAYLOAD, None
        )
    assert [e["event"] for e in logs] == ["webhook.refused"]
    assert "link-local or the metadata service" in logs[0]["reason"]
    assert checked  # checked, then refused: no attempt was made


def test_a_name_that_resolves_to_the_metadata_service_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("instance-data.example", 443)
        return ["10.0.0.7", "169.254.169.254"]

    with capture_logs() as logs:
        webhook = Webhook("https://instance-data.example/x", 3, resolver=resolver)
        assert not webhook.send(PAYLOAD, None)
    assert logs == [
        {
            "event": "webhook.refused",
            "host": "instance-data.example",
            "reason": "it resolves to 169.254.169.254: link-local or the metadata service",
            "log_level": "warning",
        }
    ]


def test_a_connection_that_reaches_a_refused_address_is_cut_before_sending(
    receiver: Receiver,
) -> None:
    """DNS said one thing, the connection went elsewhere (a rebinding): the connected peer is
    checked too. Here 127.0.0.0/8 plays the refused network, so the peer is a real server."""
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    with capture_logs() as logs:
        webhook = Webhook(
            receiver.url,
            3,
            clock=FakeClock(),
            resolver=lambda host, port: ["192.0.2.10"],  # what the check was told
            refused=loopback,
        )
        assert not webhook.send(PAYLOAD, None)
    assert receiver.bodies == []  # not a byte of the request was sent
    assert [e["event"] for e in logs] == ["webhook.refused"]  # not retried
    assert (
        logs[0]["reason"] == "the connection reached 127.0.0.1: link-local or the metadata service"
    )


def test_link_local_targets_may_be_allowed_explicitly(receiver: Receiver) -> None:
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    webhook = Webhook(receiver.url, 1, allow_link_local=True, refused=loopback)
    assert webhook.send(PAYLOAD, None)
    assert receiver.bodies == [PAYLOAD]


def test_an_ordinary_receiver_by_name_is_reached(receiver: Receiver) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    assert Webhook(url, 1).send(PAYLOAD, None)
    assert receiver.bodies == [PAYLOAD]


def test_the_config_allows_link_local_only_when_asked_and_wants_a_host() -> None:
    assert from_mapping({}, env={}).agent.webhook_allow_link_local is False
    env = {"SPOTGUARD_AGENT_WEBHOOK_ALLOW_LINK_LOCAL": "true"}
    assert from_mapping({}, env=env).agent.webhook_allow_link_local is True
    for url in ("https:///no-host", "http://[::1/open-bracket"):
        with pytest.raises(ConfigError, match=r"agent\.webhook_url: must name a host"):
            from_mapping({"agent": {"webhook_url": url}}, env={})


def test_a_url_with_a_bad_port_fails_as_a_send_not_at_start() -> None:
    with capture_logs() as logs:
        webhook = Webhook("http://127.0.0.1:http/x", 1, clock=FakeClock())
        assert not webhook.send(PAYLOAD, None)
    assert logs[-1]["event"] == "webhook.failed"
    assert logs[-1]["host"] == "127.0.0.1"
