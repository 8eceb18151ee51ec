"""A local EC2 metadata service for tests, benchmarks and qemu guests.

It behaves like the real service where spotguard (and cloud-init's Ec2 datasource) can tell
the difference: IMDSv2 tokens that expire by the injected clock, 404 pages in HTML, directory
listings, version prefixes, the notices spot instances get, and fake (clearly fake) instance
profile credentials. Everything is driven from Python, by this module's command-line flags or,
for another process, over HTTP under ``/simulator/``: POST/DELETE ``notice``, ``rebalance``,
``fault``, ``user-data``; POST ``scheduled``, ``lifecycle``, ``hibernation``, ``quirks``
(``{"names": ["aws-mock"]}``), ``expire-tokens``, ``clear``; GET ``requests``, ``quirks``.

Peers: `Quirks` switches on, one by one, how other metadata services differ from EC2's;
`AWS_MOCK` is amazon-ec2-metadata-mock's with its defaults (moving notice and rebalance times,
tab-indented ``application/json``, its 404 page, a scheduled event that already began, no
``hibernation/configured``, tokens not enforced), `AWS_MOCK_SPOT` its ``spot`` command. A
handler that works only against our EC2 imitation is not done (see reference/imds.md).

Faults (`set_fault`, for the next N matching requests or until cleared, optionally only under
one path): server errors, throttling, a disabled service, garbage, a request held and dropped
(``timeout``; the hop limit on the token PUT: ``token_timeout``) or held until the simulator
stops (``hang``), a body trickled over ``delay`` seconds (``drip``; ``drip_head``: the status
line and headers), 64 MiB bodies (``huge``,
``huge_unsized`` without Content-Length), deeply nested JSON (``nested``), times out of range
(``bad_time``), a corrupt token (``bad_token``: CR/LF by default; see BAD_TOKENS) and a listener
that accepts no connection at all, its backlog full (``never_accept``, for ``delay`` seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
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

GET_PUT = frozenset({"GET", "PUT"})
# Which requests each fault hits: a held GET is a slow service, a held PUT is the hop limit.
FAULTS: Mapping[str, frozenset[str]] = {
    "timeout": frozenset({"GET"}),
    "token_timeout": frozenset({"PUT"}),
    "hang": GET_PUT,
    "error_500": GET_PUT,
    "error_503": GET_PUT,
    "throttled": GET_PUT,
    "garbage": frozenset({"GET"}),
    "slow": GET_PUT,
    "drip": GET_PUT,
    "drip_head": GET_PUT,
    "huge": GET_PUT,
    "huge_unsized": GET_PUT,
    "nested": frozenset({"GET"}),
    "bad_time": frozenset({"GET"}),
    "bad_token": frozenset({"PUT"}),
    "disabled": GET_PUT,
    "not_found": frozenset({"GET"}),
    "never_accept": GET_PUT,  # the listener's, not one request's: see set_fault
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
FAULT_ANSWERS: Mapping[str, tuple[int, bytes]] = {  # status, body (text/plain)
    "error_500": (500, b"Internal Server Error"),
    "error_503": (503, b"Service Unavailable"),
    "throttled": (429, b"Too Many Requests"),
    "garbage": (200, b"\x00\xffnot-json{<<"),
    "disabled": (403, b"Forbidden"),
}
HUGE_SIZE = 64 * 1024 * 1024
NESTING = 5000  # deep enough for a RecursionError in json.loads, small enough (10 KB) to read
BAD_TIME = "9999-12-31T23:59:59-01:00"  # past datetime.max once in UTC
BAD_EVENT_TIME = "31 Dec 9999 23:59:59 GMT"
BAD_TOKENS: Mapping[str, str] = {
    "crlf": "AQAEAbad-token\r\nX-Injected: 1",
    "non_latin1": "AQAEA\u20acbad-token\u2603",
    "huge": "A" * 100_000,
    "empty": "",
}
MOCK_EVENT_ID = "instance-event-1234567890abcdef0"  # the one scheduled event AWS's mock serves


@dataclass(frozen=True, slots=True)
class Quirks:
    """Ways a metadata service differs from EC2's; the defaults are EC2's behaviour.

    Times: `moving_times` makes the spot `time` = request time + the notice's `in_seconds` and
    the rebalance `noticeTime` = request time, on every request, unless set_notice /
    set_rebalance pinned one. `json_answers`: JSON leaves answered as application/json,
    tab-indented. `plain_404`: the 404 page labelled text/plain; charset=utf-8 with nosniff.
    `past_scheduled`: one active scheduled event whose NotBefore is the simulator's start.
    `no_hibernation_path`: hibernation/configured is 404. `tokens_optional`: tokens are not
    enforced (GETs with or without any token are answered). `lax_methods`: a token PUT with
    X-Forwarded-For is accepted, GET on the token path answers 200 empty, POST on a metadata
    path answers like GET. `wall_clock_tokens`: tokens expire by the wall clock in whole
    seconds. `latest_only`: dated version prefixes are 404. `spot_only`: the mock's ``spot``
    command: scheduled events and the Auto Scaling state are 404.
    """

    moving_times: bool = False
    json_answers: bool = False
    plain_404: bool = False
    past_scheduled: bool = False
    no_hibernation_path: bool = False
    tokens_optional: bool = False
    lax_methods: bool = False
    wall_clock_tokens: bool = False
    latest_only: bool = False
    spot_only: bool = False

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Quirks:
        """Quirks by field name; "aws-mock" and "aws-mock-spot" stand for PEERS' presets."""
        known = {f.name for f in dataclasses.fields(cls)}
        chosen: dict[str, bool] = {}
        for name in names:
            if name in PEERS:
                chosen.update(dataclasses.asdict(PEERS[name]))
            elif name.replace("-", "_") in known:
                chosen[name.replace("-", "_")] = True
            else:
                choices = ", ".join([*PEERS, *sorted(known)])
                raise ValueError(f"unknown quirk {name!r} (known: {choices})")
        return cls(**chosen)


# amazon-ec2-metadata-mock run with its defaults (no subcommand: every path), and its `spot`.
AWS_MOCK = Quirks(
    moving_times=True,
    json_answers=True,
    plain_404=True,
    past_scheduled=True,
    no_hibernation_path=True,
    tokens_optional=True,
    lax_methods=True,
    wall_clock_tokens=True,
    latest_only=True,
)
AWS_MOCK_SPOT = dataclasses.replace(AWS_MOCK, past_scheduled=False, spot_only=True)
PEERS: Mapping[str, Quirks] = {"aws-mock": AWS_MOCK, "aws-mock-spot": AWS_MOCK_SPOT}


@dataclass(frozen=True, slots=True)
class _Doc:
    """A JSON leaf: rendered as EC2 does (`indent`) or as the peer's quirks say."""

    value: Any
    indent: int | None = None


Node: TypeAlias = "str | bytes | _Doc | dict[str, Node]"


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
    iam_role: str = "spotguard-simulated-role"  # "": no instance profile

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


def mock_scheduled_event(started_at: float) -> dict[str, str]:
    """The event AWS's mock serves: a system reboot that began when the mock started."""
    event = scheduled_event(
        "system-reboot",
        started_at,
        not_after=started_at + 7 * 86400,
        event_id=MOCK_EVENT_ID,
        description="scheduled reboot",
    )
    return {**event, "NotBeforeDeadline": format_event_time(started_at + 9 * 86400)}


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before answering
    drop: bool = False  # close the connection without answering
    drip: float = 0.0  # spread the body over this many seconds, byte by byte
    drip_head: float = 0.0  # the same for the status line and headers
    padding: int = 0  # this many spaces before the body (valid JSON, just huge)
    sized: bool = True  # send Content-Length; False: the body ends when the connection does


@dataclass(slots=True)
class _Fault:
    name: str
    remaining: int | None  # None: until cleared
    delay: float | None
    path: str  # only requests whose path starts with this
    value: str | None  # bad_time's time text, bad_token's token


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
        drip: float = 10.0,
        hang: float = 3600.0,
        quirks: Quirks | None = None,
    ) -> None:
        """`v2=False` is a service from before IMDSv2 (the token PUT gets 405). `hold` is how
        long the timeout faults keep a request before dropping it, `slow` the slow fault's
        delay, `drip` how long a drip takes, `hang` how long a hang lasts (or until stop).
        """
        self.clock: Clock = clock or SystemClock()
        self.instance = instance or SimulatedInstance()
        self.v1_allowed = v1_allowed
        self.v2 = v2
        self.hibernation_configured = hibernation_configured
        self.quirks = quirks or Quirks()
        self._defaults = {"timeout": hold, "token_timeout": hold, "slow": slow, "drip": drip}
        self._defaults["drip_head"] = drip
        self._defaults["hang"] = hang
        self._lock = threading.Lock()
        self._started_at = self.clock.wall()
        self._tokens: dict[str, float] = {}
        self._user_data = user_data
        self._notice: _Notice | None = None
        self._rebalance: tuple[float | None] | None = None  # (None,): moving, with the quirk
        self._scheduled: list[Mapping[str, Any]] = (
            [mock_scheduled_event(self._started_at)] if self.quirks.past_scheduled else []
        )
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
        self._thread = threading.Thread(target=self._server.serve, name="imds-simulator")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()  # held, hanging and dripping requests give up at once
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._server.close_all()

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
        moving: bool | None = None,
    ) -> None:
        """Announce a spot interruption at `time` (epoch), default `in_seconds` from now.

        The time is pinned; `moving=True` recomputes it on every request, as AWS's mock does
        (`moving=None`: pinned unless `quirks.moving_times` and no `time` was given).
        """
        if moving is None:
            moving = time is None and self.quirks.moving_times
        if time is None and not moving:
            time = self.clock.wall() + in_seconds
        with self._lock:
            self._notice = _Notice(action, None if moving else time, in_seconds)
            self._forget_served("spot/")

    def clear_notice(self) -> None:
        with self._lock:
            self._notice = None
            self._forget_served("spot/")

    def set_rebalance(self, notice_time: float | None = None) -> None:
        """Recommend a rebalance noticed at `notice_time` (default now; with
        `quirks.moving_times`, the time of each request)."""
        if notice_time is None and not self.quirks.moving_times:
            notice_time = self.clock.wall()
        with self._lock:
            self._rebalance = (notice_time,)
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

    def set_quirks(self, quirks: Quirks) -> None:
        """Behave like another peer from now on (notices already set keep their times)."""
        with self._lock:
            self.quirks = quirks

    def set_fault(
        self,
        name: str,
        count: int | None = None,
        *,
        delay: float | None = None,
        path: str = "/",
        value: str | None = None,
    ) -> None:
        """Misbehave on the next `count` requests the fault applies to (None: until cleared).

        `delay` overrides how long `timeout`/`token_timeout`/`hang` hold, `slow` waits and
        `drip` trickles; `path` limits the fault to requests under it (e.g. only
        spot/instance-action); `value` is bad_time's time text or bad_token's token.
        ``never_accept`` is the listener's: for `delay` real seconds (None: until cleared) no
        connection is accepted, open ones are cut and the backlog is full, so connects time
        out; it takes no count or path.
        """
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        if count is not None and count < 1:
            raise ValueError(f"fault count must be >= 1 or None, got {count}")
        if name == "never_accept":
            if count is not None or path != "/":
                raise ValueError(
                    "never_accept holds the whole listener: give a delay, not count/path"
                )
            self._server.refuse_connections(delay)
            return
        with self._lock:
            self._faults.append(_Fault(name, count, delay, path, value))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self._server.refuse_connections(0.0)

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
        if fault is not None and fault.name in ("timeout", "token_timeout", "hang"):
            return _Answer(0, delay=self._delay(fault), drop=True)
        if fault is not None and fault.name in FAULT_ANSWERS:
            return _Answer(*FAULT_ANSWERS[fault.name])
        if fault is not None and fault.name == "not_found":
            return self._not_found()
        if fault is not None and fault.name == "nested":
            return _Answer(200, b"[" * NESTING + b"]" * NESTING, "application/json")
        answer = self._honest(method, path, headers, fault)
        if fault is None or answer.status != 200:
            return answer
        if fault.name == "slow":
            return dataclasses.replace(answer, delay=self._delay(fault))
        if fault.name == "drip":
            return dataclasses.replace(answer, drip=self._delay(fault))
        if fault.name == "drip_head":
            return dataclasses.replace(answer, drip_head=self._delay(fault))
        if fault.name in ("huge", "huge_unsized"):
            size = HUGE_SIZE - len(answer.body)
            return dataclasses.replace(answer, padding=size, sized=fault.name == "huge")
        return answer

    def _delay(self, fault: _Fault) -> float:
        return fault.delay if fault.delay is not None else self._defaults[fault.name]

    def _honest(self, method: str, path: str, headers: Message, fault: _Fault | None) -> _Answer:
        """The answer as the service (with its quirks) gives it; bad_token and bad_time
        corrupt it here, where the token and the times are made."""
        lax = self.quirks.lax_methods
        if path == TOKEN_PATH and method == "PUT":
            if fault is not None and fault.name == "bad_token":
                token = fault.value if fault.value is not None else BAD_TOKENS["crlf"]
                return _Answer(200, token.encode(), "text/plain; charset=utf-8")
            return self._token(headers)
        if path == TOKEN_PATH and method == "GET" and lax:
            return _Answer(200)
        if method != "GET" and not (method == "POST" and lax):
            return _Answer(405, b"Method Not Allowed")
        if not self._authorized(headers.get(TOKEN_HEADER)):
            return _Answer(401, b"Unauthorized")
        bad_time = None
        if fault is not None and fault.name == "bad_time":
            bad_time = fault.value or ""
        return self._read(path, bad_time)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if method in FAULTS[fault.name] and path.startswith(fault.path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _token(self, headers: Message) -> _Answer:
        if not self.v2:
            return _Answer(405, b"Method Not Allowed")
        if headers.get("X-Forwarded-For") is not None and not self.quirks.lax_methods:
            return _Answer(403, b"Forbidden")
        text = (headers.get(TTL_HEADER) or "").strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_TOKEN_TTL:
            return _Answer(400, b"Bad Request")
        now = self._token_now()
        self._tokens = {t: end for t, end in self._tokens.items() if end > now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + int(text)
        return _Answer(200, token.encode(), headers={TTL_HEADER: text})

    def _token_now(self) -> float:
        if self.quirks.wall_clock_tokens:
            return float(int(self.clock.wall()))
        return self.clock.monotonic()

    def _authorized(self, token: str | None) -> bool:
        if self.quirks.tokens_optional:
            return True
        if token is None:
            return self.v1_allowed or not self.v2
        return self._tokens.get(token, 0.0) > self._token_now()

    def _not_found(self) -> _Answer:
        if self.quirks.plain_404:
            nosniff = {"X-Content-Type-Options": "nosniff"}
            return _Answer(404, NOT_FOUND, "text/plain; charset=utf-8", nosniff)
        return _Answer(404, NOT_FOUND, "text/html")

    def _read(self, path: str, bad_time: str | None) -> _Answer:
        """The leaf or listing at `path`; `bad_time` (not None) replaces the notices' times
        ("" for the defaults BAD_TIME / BAD_EVENT_TIME)."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return _Answer(200, "\n".join(VERSIONS).encode())
        if parts[0] not in VERSIONS or (self.quirks.latest_only and parts[0] != "latest"):
            return self._not_found()
        node: Node = self._tree(bad_time)
        for part in parts[1:]:
            if not isinstance(node, dict) or part not in node:
                return self._not_found()
            node = node[part]
        if isinstance(node, dict):
            listing = [f"{k}/" if isinstance(v, dict) else k for k, v in sorted(node.items())]
            return _Answer(200, "\n".join(listing).encode())
        if parts[1:2] == ["meta-data"]:
            self._served_at.setdefault("/".join(parts[2:]), self.clock.wall())
        if isinstance(node, _Doc):
            if self.quirks.json_answers:
                return _Answer(
                    200, json.dumps(node.value, indent="\t").encode(), "application/json"
                )
            return _Answer(200, json.dumps(node.value, indent=node.indent).encode())
        return _Answer(200, node if isinstance(node, bytes) else node.encode())

    def _forget_served(self, prefix: str) -> None:
        self._served_at = {p: t for p, t in self._served_at.items() if not p.startswith(prefix)}

    def _tree(self, bad_time: str | None) -> dict[str, Node]:
        """One version's tree as it stands now; leaves are the exact bodies served."""
        tree: dict[str, Node] = {
            "meta-data": self._meta_data(bad_time),
            "dynamic": {"instance-identity": {"document": _Doc(self._identity(), 2)}},
        }
        if self._user_data is not None:
            tree["user-data"] = self._user_data
        return tree

    def _meta_data(self, bad_time: str | None) -> dict[str, Node]:
        i = self.instance
        now = self.clock.wall()
        scheduled = self._scheduled
        if bad_time is not None:
            when = bad_time or BAD_EVENT_TIME
            scheduled = [{**e, "NotBefore": when} for e in scheduled] or [
                {**scheduled_event("instance-stop", now), "NotBefore": when}
            ]
        events: dict[str, Node] = {}
        if not self.quirks.spot_only:
            events["maintenance"] = {"scheduled": _Doc(scheduled, 2)}
        if self._rebalance is not None or bad_time is not None:
            noticed = self._rebalance[0] if self._rebalance is not None else None
            text = format_rfc3339(noticed or now) if bad_time is None else bad_time or BAD_TIME
            events["recommendations"] = {"rebalance": _Doc({"noticeTime": text})}
        tree: dict[str, Node] = {
            "ami-id": i.ami_id,
            "ami-launch-index": "0",
            "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "events": events,
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
        if not self.quirks.no_hibernation_path:
            tree["hibernation"] = {"configured": "true" if self.hibernation_configured else "false"}
        if self._notice is not None or bad_time is not None:
            n = self._notice or _Notice("stop", now + 120.0, 120.0)
            when = format_rfc3339(n.time if n.time is not None else now + n.in_seconds)
            if bad_time is not None:
                when = bad_time or BAD_TIME
            action = _Doc({"action": n.action, "time": when})
            tree["spot"] = {"instance-action": action, "termination-time": when}
        if self._lifecycle is not None and not self.quirks.spot_only:
            tree["autoscaling"] = {"target-lifecycle-state": self._lifecycle}
        if i.iam_role:
            tree["iam"] = self._iam(now)
        return tree

    def _iam(self, now: float) -> dict[str, Node]:
        """An instance profile with credentials no AWS service would ever accept."""
        i = self.instance
        info = {
            "Code": "Success",
            "LastUpdated": format_rfc3339(self._started_at),
            "InstanceProfileArn": f"arn:aws:iam::{i.account_id}:instance-profile/{i.iam_role}",
            "InstanceProfileId": "AIPAFAKESIMULATOR000",
        }
        credentials = {
            "Code": "Success",
            "LastUpdated": format_rfc3339(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIAFAKESIMULATOR000",
            "SecretAccessKey": "fake-secret-from-the-spotguard-metadata-simulator",
            "Token": "fake-session-token-from-the-spotguard-metadata-simulator",
            "Expiration": format_rfc3339(now + 6 * 3600),
        }
        return {
            "info": _Doc(info, 2),
            "security-credentials": {i.iam_role: _Doc(credentials, 2)},
        }

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
        """``/simulator/<route>``: every control above, for another process."""
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
            ("POST", "quirks"): self._http_quirks,
            ("GET", "quirks"): lambda _: dataclasses.asdict(self.quirks),
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
        moving = data.get("moving")
        self.set_notice(
            str(data.get("action", "terminate")),
            _epoch(data.get("time")),
            in_seconds=float(data.get("in_seconds", 120.0)),
            moving=None if moving is None else bool(moving),
        )

    def _http_hibernation(self, body: bytes) -> None:
        configured = _object(body).get("configured")
        if not isinstance(configured, bool):
            raise TypeError('expected {"configured": true|false}')
        self.hibernation_configured = configured

    def _http_fault(self, body: bytes) -> None:
        data = _object(body)
        count, delay, value = data.get("count"), data.get("delay"), data.get("value")
        self.set_fault(
            str(data.get("name")),
            None if count is None else int(count),
            delay=None if delay is None else float(delay),
            path=str(data.get("path", "/")),
            value=None if value is None else str(value),
        )

    def _http_quirks(self, body: bytes) -> None:
        """``{"names": ["aws-mock"]}`` or ``{"names": ["moving_times", ...]}``; [] for EC2."""
        names = _object(body).get("names", [])
        if not isinstance(names, list):
            raise TypeError('expected {"names": [...]}')
        self.set_quirks(Quirks.from_names([str(n) for n in names]))


class _Server(ThreadingHTTPServer):
    """The listener; it can stop accepting (never_accept) and cuts every connection on stop."""

    request_queue_size = 4

    def __init__(self, address: str, port: int, simulator: MetadataSimulator) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.simulator = simulator
        self.stopping = threading.Event()
        self.timeout = 0.05  # handle_request's wait, so the loop sees stop and refusals
        self._guard = threading.Lock()
        self._accepting = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refuse_until = 0.0  # time.monotonic(): the listener's time is real time
        self._fillers: list[socket.socket] = []
        super().__init__((address, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that reset the connection (it gave up on a fault) is no error of ours."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def serve(self) -> None:
        while not self.stopping.is_set():
            with self._accepting:  # a refusal starts between two accepts, never during one
                refusing = self._refusing()
                if not refusing:
                    self.handle_request()
            if refusing:
                self.stopping.wait(self.timeout)

    def refuse_connections(self, seconds: float | None) -> None:
        """Accept nothing for `seconds` (None: until called with 0): the backlog is filled
        with idle connections of our own so a new connect gets no answer, and the open
        keep-alive connections are cut so clients must connect anew."""
        with self._accepting, self._guard:
            until = float("inf") if seconds is None else time.monotonic() + seconds
            if until <= time.monotonic():
                self._accept_again()
                return
            self._refuse_until = until
            if self._fillers:
                return
            for _ in range(self.request_queue_size * 2 + 2):  # the accept queue and then some
                filler = socket.socket(self.address_family, socket.SOCK_STREAM)
                filler.setblocking(False)
                filler.connect_ex(self.server_address[:2])
                self._fillers.append(filler)
            for conn in self._open:
                _cut(conn)

    def _refusing(self) -> bool:
        with self._guard:
            if time.monotonic() < self._refuse_until:
                return True
            if self._fillers:
                self._accept_again()
            return False

    def _accept_again(self) -> None:
        """End a refusal at once: drop what waits in the accept queue (our fillers, and any
        connect that got in before the queue filled) so the next connect is answered."""
        self._refuse_until = 0.0
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        self.socket.setblocking(False)
        try:
            while True:
                conn, _ = self.socket.accept()
                conn.close()
        except OSError:
            pass  # BlockingIOError: the queue is empty
        finally:
            self.socket.setblocking(True)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._guard:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._guard:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Cut open connections (idle keep-alives would hold their threads), then close."""
        with self._guard:
            for conn in self._open:
                _cut(conn)
            for filler in self._fillers:
                filler.close()
            self._fillers.clear()
        self.server_close()


def _cut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    timeout = 10  # idle keep-alive connections end instead of holding a thread forever
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server
    _headers_buffer: list[bytes]  # the base class's, filled by send_header

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
            self._write(answer)
        except OSError:  # the client gave up waiting (reset, broken pipe, send timeout)
            self.close_connection = True

    do_PUT = do_POST = do_DELETE = do_GET

    def _write(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        if answer.sized:
            self.send_header("Content-Length", str(answer.padding + len(answer.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.drip_head:
            head = b"".join(self._headers_buffer) + b"\r\n"  # what end_headers would send
            self._headers_buffer = []
            if not self._trickle(head, answer.drip_head):
                return
        else:
            self.end_headers()
        chunk = b" " * 65536
        for start in range(0, answer.padding, len(chunk)):
            self.wfile.write(chunk[: answer.padding - start])
        if not answer.drip or not answer.body:
            self.wfile.write(answer.body)
            return
        self._trickle(answer.body, answer.drip)

    def _trickle(self, data: bytes, seconds: float) -> bool:
        """`data` byte by byte over `seconds`; False when the simulator stopped meanwhile."""
        pause = seconds / len(data)
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            if self.server.stopping.wait(pause):
                self.close_connection = True
                return False
        return True

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


def _fault_spec(text: str) -> dict[str, Any]:
    """``--fault name[,count=N][,delay=S][,path=P][,value=V]`` as set_fault's arguments."""
    name, *options = text.split(",")
    spec: dict[str, Any] = {"name": name}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("count", "delay", "path", "value"):
            raise argparse.ArgumentTypeError(f"bad fault option {option!r} in {text!r}")
        spec[key] = int(value) if key == "count" else float(value) if key == "delay" else value
    return spec


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
    parser = argparse.ArgumentParser(
        prog="python -m spotguard.simulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default="127.0.0.1", help="'::1' for IPv6")
    parser.add_argument("--port", type=int, default=8169, help="0: any free port")
    parser.add_argument("--user-data", type=Path, help="file served at /latest/user-data")
    defaults = SimulatedInstance()
    parser.add_argument("--instance-id", default=defaults.instance_id)
    parser.add_argument("--instance-type", default=defaults.instance_type)
    parser.add_argument("--region", default=defaults.region)
    parser.add_argument("--life-cycle", default=defaults.life_cycle, choices=("spot", "on-demand"))
    parser.add_argument("--mac", default=defaults.mac, help="the guest NIC's MAC, for cloud-init")
    parser.add_argument("--iam-role", default=defaults.iam_role, help="'': no instance profile")
    parser.add_argument("--hibernation-configured", default="true", choices=("true", "false"))
    parser.add_argument("--v1-allowed", action="store_true", help="accept GETs without a token")
    parser.add_argument(
        "--aws-mock", action="store_true", help="behave like amazon-ec2-metadata-mock"
    )
    quirk_names = ", ".join([*PEERS, *dataclasses.asdict(Quirks())])
    parser.add_argument(
        "--quirk",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a peer or one of its behaviours (repeatable): {quirk_names}",
    )
    parser.add_argument(
        "--notice",
        metavar="ACTION",
        choices=("terminate", "stop", "hibernate"),
        help="serve a spot notice from the start (its time 2 min ahead; moving with --aws-mock)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_spec,
        metavar="NAME[,count=N][,delay=S][,path=P][,value=V]",
        help=f"switch a fault on (repeatable): {', '.join(FAULTS)}",
    )
    args = parser.parse_args(argv)
    instance = SimulatedInstance(
        instance_id=args.instance_id,
        instance_type=args.instance_type,
        region=args.region,
        life_cycle=args.life_cycle,
        mac=args.mac,
        iam_role=args.iam_role,
    )
    try:
        quirks = Quirks.from_names(args.quirk + (["aws-mock"] if args.aws_mock else []))
    except ValueError as exc:
        parser.error(str(exc))
    simulator = MetadataSimulator(
        address=args.address,
        port=args.port,
        instance=instance,
        v1_allowed=args.v1_allowed,
        hibernation_configured=args.hibernation_configured == "true",
        user_data=args.user_data.read_bytes() if args.user_data else None,
        quirks=quirks,
    )
    if args.notice:
        simulator.set_notice(args.notice)
    for spec in args.fault:
        try:
            simulator.set_fault(**spec)
        except ValueError as exc:
            parser.error(str(exc))
    with _until_signalled() as stop, simulator:
        sys.stdout.write(f"{simulator.url}\n")
        sys.stdout.flush()
        while not stop.wait(0.1):  # in slices: a signal landing on a server thread waits for us
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
