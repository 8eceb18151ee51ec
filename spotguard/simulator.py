"""A local EC2 metadata service for tests, benchmarks and qemu guests.

It behaves like the real service where spotguard (and cloud-init's Ec2 datasource) can tell
the difference: IMDSv2 tokens that expire by the injected clock, 404 pages in HTML, directory
listings, version prefixes, and the notices spot instances get. Faults the real service shows
(throttling, the hop limit, a disabled service) can be switched on for the next N requests.
Everything is driven from Python or, for another process, over HTTP under ``/simulator/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import signal
import socket
import socketserver
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from spotguard.clock import Clock, SystemClock
from spotguard.imds import (
    MAX_TOKEN_TTL,
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
    format_event_time,
    format_rfc3339,
    parse_rfc3339,
)

# Which requests each fault hits: a held GET is a slow service, a held PUT is the hop limit.
FAULTS: Mapping[str, frozenset[str]] = {
    "timeout": frozenset({"GET"}),
    "token_timeout": frozenset({"PUT"}),
    "error_500": frozenset({"GET", "PUT"}),
    "error_503": frozenset({"GET", "PUT"}),
    "garbage": frozenset({"GET"}),
    "slow": frozenset({"GET", "PUT"}),
    "disabled": frozenset({"GET", "PUT"}),
    "not_found": frozenset({"GET"}),
}
VERSIONS = ("1.0", "2007-01-19", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest")
CONTROL_PREFIX = "/simulator/"
NOT_FOUND = (
    b'<?xml version="1.0" encoding="iso-8859-1"?>\n'
    b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
    b'\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
    b'<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    b" <head>\n  <title>404 - Not Found</title>\n </head>\n"
    b" <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n"
)
FAULT_ANSWERS: Mapping[str, tuple[int, bytes, str]] = {  # status, body, content type
    "error_500": (500, b"Internal Server Error", "text/plain"),
    "error_503": (503, b"Service Unavailable", "text/plain"),
    "garbage": (200, b"\x00\xffnot-json{<<", "text/plain"),
    "disabled": (403, b"Forbidden", "text/plain"),
    "not_found": (404, NOT_FOUND, "text/html"),
}

Node: TypeAlias = "str | bytes | dict[str, Node]"


@dataclass(frozen=True, slots=True)
class SimulatedInstance:
    """The instance the simulator describes; the defaults look like a us-east-1 spot VM."""

    instance_id: str = "i-0123456789abcdef0"
    instance_type: str = "m5.large"
    region: str = "us-east-1"
    availability_zone: str = ""  # "": the region's "a" zone
    life_cycle: str = "spot"
    ami_id: str = "ami-0abcdef1234567890"
    local_ipv4: str = "172.31.16.10"
    mac: str = "0e:12:34:56:78:9a"
    account_id: str = "123456789012"

    @property
    def zone(self) -> str:
        return self.availability_zone or f"{self.region}a"

    @property
    def hostname(self) -> str:
        domain = "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"
        return f"ip-{self.local_ipv4.replace('.', '-')}.{domain}"


def scheduled_event(
    code: str,
    not_before: float,
    *,
    not_after: float | None = None,
    event_id: str = "instance-event-0123456789abcdef0",
    state: str = "active",
    description: str = "scheduled maintenance",
) -> dict[str, str]:
    """One entry of events/maintenance/scheduled, times as epoch seconds."""
    return {
        "Code": code,
        "Description": description,
        "EventId": event_id,
        "NotBefore": format_event_time(not_before),
        "NotAfter": format_event_time(not_after if not_after is not None else not_before + 7200),
        "State": state,
    }


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass(slots=True)
class _Fault:
    name: str
    remaining: int | None  # None: until cleared
    delay: float | None
    path: str  # only requests whose path starts with this


@dataclass(frozen=True, slots=True)
class _Notice:
    action: str
    time: float | None  # None: "in_seconds" after each request, as AWS's mock does
    in_seconds: float


class MetadataSimulator:
    """The metadata service on a local port (``port=0``: any free one); see the module doc."""

    def __init__(
        self,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        instance: SimulatedInstance | None = None,
        v1_allowed: bool = False,
        v2: bool = True,
        hibernation_configured: bool = True,
        user_data: bytes | None = None,
        hold: float = 5.0,
        slow: float = 0.2,
    ) -> None:
        """`v2=False` is a service from before IMDSv2 (the token PUT gets 405). `hold` is how
        long the timeout faults keep a request before dropping it, `slow` the slow fault's delay.
        """
        self.clock: Clock = clock or SystemClock()
        self.instance = instance or SimulatedInstance()
        self.v1_allowed = v1_allowed
        self.v2 = v2
        self.hibernation_configured = hibernation_configured
        self._hold = hold
        self._slow = slow
        self._lock = threading.Lock()
        self._started_at = self.clock.wall()
        self._tokens: dict[str, float] = {}
        self._user_data = user_data
        self._notice: _Notice | None = None
        self._rebalance: float | None = None
        self._scheduled: list[Mapping[str, Any]] = []
        self._lifecycle: str | None = None
        self._faults: list[_Fault] = []
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._served_at: dict[str, float] = {}
        self._server = _Server(address, port, self)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> MetadataSimulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="imds-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()  # held requests give up at once
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetadataSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control ---------------------------------------------------------------------------

    def set_notice(
        self,
        action: str = "terminate",
        time: float | None = None,
        *,
        in_seconds: float = 120.0,
        moving: bool = False,
    ) -> None:
        """Announce a spot interruption at `time` (epoch), default `in_seconds` from now.

        The time is pinned; `moving=True` recomputes it on every request, as AWS's mock does.
        """
        if time is None and not moving:
            time = self.clock.wall() + in_seconds
        with self._lock:
            self._notice = _Notice(action, time, in_seconds)
            self._forget_served("spot/")

    def clear_notice(self) -> None:
        with self._lock:
            self._notice = None
            self._forget_served("spot/")

    def set_rebalance(self, notice_time: float | None = None) -> None:
        with self._lock:
            self._rebalance = self.clock.wall() if notice_time is None else notice_time
            self._forget_served("events/recommendations/")

    def clear_rebalance(self) -> None:
        with self._lock:
            self._rebalance = None
            self._forget_served("events/recommendations/")

    def set_scheduled(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Serve these entries as they are (see `scheduled_event`), even malformed ones."""
        with self._lock:
            self._scheduled = list(events)
            self._forget_served("events/maintenance/")

    def set_lifecycle(self, state: str | None) -> None:
        """The Auto Scaling target lifecycle state; None: the path is 404."""
        with self._lock:
            self._lifecycle = state
            self._forget_served("autoscaling/")

    def set_user_data(self, data: bytes | None) -> None:
        with self._lock:
            self._user_data = data

    def set_fault(
        self, name: str, count: int | None = None, *, delay: float | None = None, path: str = "/"
    ) -> None:
        """Misbehave on the next `count` requests the fault applies to (None: until cleared).

        `delay` overrides how long `timeout`/`token_timeout` hold and `slow` waits; `path`
        limits the fault to requests under it (e.g. only spot/instance-action).
        """
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        if count is not None and count < 1:
            raise ValueError(f"fault count must be >= 1 or None, got {count}")
        with self._lock:
            self._faults.append(_Fault(name, count, delay, path))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def clear(self) -> None:
        """No notices, no events, no faults: a quiet instance again."""
        self.clear_notice()
        self.clear_rebalance()
        self.set_scheduled([])
        self.set_lifecycle(None)
        self.clear_faults()

    # -- observation -----------------------------------------------------------------------

    def count(
        self, method: str | None = None, path: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered so far that match; status 0 counts dropped ones."""
        with self._lock:
            return sum(
                n
                for (m, p, s), n in self._counts.items()
                if method in (None, m) and path in (None, p) and status in (None, s)
            )

    def served_at(self, path: str) -> float | None:
        """When a meta-data leaf (e.g. "spot/instance-action") was first answered 200 since
        it last changed, by the simulator's wall clock."""
        with self._lock:
            return self._served_at.get(path)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": [
                    {"method": m, "path": p, "status": s, "count": n}
                    for (m, p, s), n in sorted(self._counts.items())
                ],
                "served_at": dict(self._served_at),
            }

    # -- serving ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: Message, body: bytes) -> _Answer:
        """What the service says to one request (the HTTP handler only writes it out)."""
        path = urlsplit(target).path or "/"
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path.removeprefix(CONTROL_PREFIX).strip("/"), body)
        with self._lock:
            answer = self._metadata(method, path, headers)
            self._counts[(method, path, 0 if answer.drop else answer.status)] += 1
            return answer

    def _metadata(self, method: str, path: str, headers: Message) -> _Answer:
        fault = self._take_fault(method, path)
        if fault is not None and fault.name != "slow":
            return self._faulty(fault)
        delay = (fault.delay or self._slow) if fault is not None else 0.0
        if method == "PUT" and path == TOKEN_PATH:
            answer = self._token(headers)
        elif method != "GET":
            answer = _Answer(405, b"Method Not Allowed")
        elif not self._authorized(headers.get(TOKEN_HEADER)):
            answer = _Answer(401, b"Unauthorized")
        else:
            answer = self._read(path)
        return dataclasses.replace(answer, delay=delay)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if method in FAULTS[fault.name] and path.startswith(fault.path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _faulty(self, fault: _Fault) -> _Answer:
        if fault.name in ("timeout", "token_timeout"):
            return _Answer(0, delay=fault.delay or self._hold, drop=True)
        return _Answer(*FAULT_ANSWERS[fault.name])

    def _token(self, headers: Message) -> _Answer:
        if not self.v2:
            return _Answer(405, b"Method Not Allowed")
        if headers.get("X-Forwarded-For") is not None:
            return _Answer(403, b"Forbidden")
        text = (headers.get(TTL_HEADER) or "").strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_TOKEN_TTL:
            return _Answer(400, b"Bad Request")
        now = self.clock.monotonic()
        self._tokens = {t: end for t, end in self._tokens.items() if end > now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + int(text)
        return _Answer(200, token.encode(), headers={TTL_HEADER: text})

    def _authorized(self, token: str | None) -> bool:
        if token is None:
            return self.v1_allowed or not self.v2
        return self._tokens.get(token, 0.0) > self.clock.monotonic()

    def _read(self, path: str) -> _Answer:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return _Answer(200, "\n".join(VERSIONS).encode())
        if parts[0] not in VERSIONS:
            return _Answer(404, NOT_FOUND, "text/html")
        node: Node = self._tree()
        for part in parts[1:]:
            if not isinstance(node, dict) or part not in node:
                return _Answer(404, NOT_FOUND, "text/html")
            node = node[part]
        if isinstance(node, dict):
            listing = [f"{k}/" if isinstance(v, dict) else k for k, v in sorted(node.items())]
            return _Answer(200, "\n".join(listing).encode())
        if parts[1:2] == ["meta-data"]:
            self._served_at.setdefault("/".join(parts[2:]), self.clock.wall())
        return _Answer(200, node if isinstance(node, bytes) else node.encode())

    def _forget_served(self, prefix: str) -> None:
        self._served_at = {p: t for p, t in self._served_at.items() if not p.startswith(prefix)}

    def _tree(self) -> dict[str, Node]:
        """One version's tree as it stands now; leaves are the exact bodies served."""
        tree: dict[str, Node] = {
            "meta-data": self._meta_data(),
            "dynamic": {"instance-identity": {"document": json.dumps(self._identity(), indent=2)}},
        }
        if self._user_data is not None:
            tree["user-data"] = self._user_data
        return tree

    def _meta_data(self) -> dict[str, Node]:
        i = self.instance
        events: dict[str, Node] = {
            "maintenance": {"scheduled": json.dumps(self._scheduled, indent=2)}
        }
        if self._rebalance is not None:
            notice = {"noticeTime": format_rfc3339(self._rebalance)}
            events["recommendations"] = {"rebalance": json.dumps(notice)}
        tree: dict[str, Node] = {
            "ami-id": i.ami_id,
            "ami-launch-index": "0",
            "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "events": events,
            "hibernation": {"configured": "true" if self.hibernation_configured else "false"},
            "hostname": i.hostname,
            "instance-id": i.instance_id,
            "instance-life-cycle": i.life_cycle,
            "instance-type": i.instance_type,
            "local-hostname": i.hostname,
            "local-ipv4": i.local_ipv4,
            "mac": i.mac,
            "network": {"interfaces": {"macs": {i.mac: self._interface()}}},
            "placement": {"availability-zone": i.zone, "region": i.region},
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        if self._notice is not None:
            n = self._notice
            when = format_rfc3339(
                n.time if n.time is not None else self.clock.wall() + n.in_seconds
            )
            action = json.dumps({"action": n.action, "time": when})
            tree["spot"] = {"instance-action": action, "termination-time": when}
        if self._lifecycle is not None:
            tree["autoscaling"] = {"target-lifecycle-state": self._lifecycle}
        return tree

    def _interface(self) -> dict[str, Node]:
        i = self.instance
        return {
            "device-number": "0",
            "interface-id": "eni-0123456789abcdef0",
            "local-hostname": i.hostname,
            "local-ipv4s": i.local_ipv4,
            "mac": i.mac,
            "owner-id": i.account_id,
            "subnet-id": "subnet-0123456789abcdef0",
            "vpc-id": "vpc-0123456789abcdef0",
        }

    def _identity(self) -> dict[str, Any]:
        i = self.instance
        return {
            "accountId": i.account_id,
            "architecture": "x86_64",
            "availabilityZone": i.zone,
            "imageId": i.ami_id,
            "instanceId": i.instance_id,
            "instanceType": i.instance_type,
            "pendingTime": format_rfc3339(self._started_at),
            "privateIp": i.local_ipv4,
            "region": i.region,
            "version": "2017-09-30",
        }

    def _control(self, method: str, route: str, body: bytes) -> _Answer:
        routes: dict[tuple[str, str], Callable[[bytes], object]] = {
            ("POST", "notice"): self._http_notice,
            ("DELETE", "notice"): lambda _: self.clear_notice(),
            ("POST", "rebalance"): lambda b: self.set_rebalance(
                _epoch(_object(b).get("notice_time"))
            ),
            ("DELETE", "rebalance"): lambda _: self.clear_rebalance(),
            ("POST", "scheduled"): lambda b: self.set_scheduled(_list(b)),
            ("POST", "lifecycle"): lambda b: self.set_lifecycle(_object(b).get("state")),
            ("POST", "hibernation"): self._http_hibernation,
            ("POST", "user-data"): self.set_user_data,
            ("DELETE", "user-data"): lambda _: self.set_user_data(None),
            ("POST", "fault"): self._http_fault,
            ("DELETE", "fault"): lambda _: self.clear_faults(),
            ("POST", "expire-tokens"): lambda _: self.expire_tokens(),
            ("POST", "clear"): lambda _: self.clear(),
            ("GET", "requests"): lambda _: self.stats(),
        }
        handler = routes.get((method, route))
        if handler is None:
            known = ", ".join(f"{m} {CONTROL_PREFIX}{r}" for m, r in routes)
            return _Answer(404, f"no such control route; known: {known}".encode())
        try:
            result = handler(body)
        except (ValueError, TypeError) as exc:
            return _Answer(400, str(exc).encode())
        reply = result if result is not None else {"ok": True}
        return _Answer(200, json.dumps(reply).encode(), "application/json")

    def _http_notice(self, body: bytes) -> None:
        data = _object(body)
        self.set_notice(
            str(data.get("action", "terminate")),
            _epoch(data.get("time")),
            in_seconds=float(data.get("in_seconds", 120.0)),
            moving=bool(data.get("moving", False)),
        )

    def _http_hibernation(self, body: bytes) -> None:
        configured = _object(body).get("configured")
        if not isinstance(configured, bool):
            raise TypeError('expected {"configured": true|false}')
        self.hibernation_configured = configured

    def _http_fault(self, body: bytes) -> None:
        data = _object(body)
        count, delay = data.get("count"), data.get("delay")
        self.set_fault(
            str(data.get("name")),
            None if count is None else int(count),
            delay=None if delay is None else float(delay),
            path=str(data.get("path", "/")),
        )


class _Server(ThreadingHTTPServer):
    def __init__(self, address: str, port: int, simulator: MetadataSimulator) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.simulator = simulator
        self.stopping = threading.Event()
        super().__init__((address, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    timeout = 10  # idle keep-alive connections end instead of holding a thread forever
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.server.simulator.answer(self.command, self.path, self.headers, body)
        if answer.delay:
            self.server.stopping.wait(answer.delay)
        if answer.drop:
            self.close_connection = True
            return
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting

    do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the agent's logs would drown in access lines."""


def _object(body: bytes) -> dict[str, Any]:
    data = json.loads(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


def _list(body: bytes) -> list[Mapping[str, Any]]:
    data = json.loads(body)
    if not isinstance(data, list):
        raise TypeError("expected a JSON array")
    return data


def _epoch(value: Any) -> float | None:
    """A time given over HTTP: epoch seconds, an RFC 3339 string, or nothing."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_rfc3339(value, "time")
    return float(value)


@contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotguard.simulator", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1", help="'::1' for IPv6")
    parser.add_argument("--port", type=int, default=8169, help="0: any free port")
    parser.add_argument("--user-data", type=Path, help="file served at /latest/user-data")
    defaults = SimulatedInstance()
    parser.add_argument("--instance-id", default=defaults.instance_id)
    parser.add_argument("--instance-type", default=defaults.instance_type)
    parser.add_argument("--region", default=defaults.region)
    parser.add_argument("--life-cycle", default=defaults.life_cycle, choices=("spot", "on-demand"))
    parser.add_argument("--mac", default=defaults.mac, help="the guest NIC's MAC, for cloud-init")
    parser.add_argument("--hibernation-configured", default="true", choices=("true", "false"))
    parser.add_argument("--v1-allowed", action="store_true", help="accept GETs without a token")
    args = parser.parse_args(argv)
    instance = SimulatedInstance(
        instance_id=args.instance_id,
        instance_type=args.instance_type,
        region=args.region,
        life_cycle=args.life_cycle,
        mac=args.mac,
    )
    simulator = MetadataSimulator(
        address=args.address,
        port=args.port,
        instance=instance,
        v1_allowed=args.v1_allowed,
        hibernation_configured=args.hibernation_configured == "true",
        user_data=args.user_data.read_bytes() if args.user_data else None,
    )
    with _until_signalled() as stop, simulator:
        sys.stdout.write(f"{simulator.url}\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
