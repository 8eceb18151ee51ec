"""Client for the EC2 instance metadata service: IMDSv2 tokens, deadlines, limits, clear errors.

Every failure becomes an `ImdsError` subclass that names the path, so the agent can log it,
count it and keep polling. "No such data" (404) is not a failure: the getters return None.
The wire formats the service uses (token headers, time formats) live here too, so the
simulator speaks exactly what the client expects.

A metadata service can misbehave in ways that would stall or crash a naive client: answer
byte by byte, send 64 MiB, nest JSON thousands deep, hand out a token with CR/LF in it, or
announce a time no datetime can hold. So every call has one total deadline (connect and every
read, by the real clock), bodies are capped and streamed, JSON depth is checked before parsing,
times must fall in a sane range and tokens must be printable ASCII of sane length.

Requests go over one kept-alive `http.client` connection: the agent sends one or two a second
for as long as it runs, and a pool's per-request machinery (requests', or urllib3's alone)
costs twice the CPU of the exchange itself while adding nothing a metadata GET uses
(issue 11's idle profile). What a pool gave, this file does: a dropped connection is
replaced before use, one that failed mid-answer is never reused, and no proxy is consulted.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from spotguard.clock import Clock, SystemClock
from spotguard.config import ImdsConfig

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a secret
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TOKEN_TTL = 21600
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
EVENT_TIME = "%d %b %Y %H:%M:%S GMT"  # scheduled events: "21 Jan 2019 09:00:43 GMT"
# Refresh this long before the token expires, at most 10 % of its lifetime.
REFRESH_MARGIN = 60.0
SNIPPET = 80
# The largest answer read: user-data (16 KiB on EC2) is the biggest thing anyone reads here.
MAX_BODY = 32 * 1024
MAX_JSON_DEPTH = 16  # IMDS documents nest 3 deep
TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,1024}")  # real tokens: ~56 base64 characters
# Times outside this range are garbage (or break datetime on the way back out).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
MAX_OFFSET = timedelta(hours=14)  # UTC-12 .. UTC+14 are the zones that exist
MIN_WAIT = 0.01  # less time than this left for a request: do not send it

log = structlog.get_logger()


class ImdsError(Exception):
    """The metadata service could not give an answer."""


class ImdsDisabledError(ImdsError):
    """403: the metadata service is disabled for this instance."""


class ImdsUnavailableError(ImdsError):
    """Timeouts, refused connections or 5xx answers, still failing after every attempt."""


class ImdsServerError(ImdsUnavailableError):
    """5xx or 429: the service answered "try again"; the only failure retried within a call."""


class ImdsTokenTimeoutError(ImdsUnavailableError):
    """The token PUT got no answer: usually the hop limit (HttpPutResponseHopLimit)."""


class ImdsMalformedError(ImdsError):
    """An answer that is not what the path promises (bad JSON, missing fields, too big)."""


def parse_rfc3339(text: str, path: str) -> float:
    """'2026-12-01T08:22:00Z' as epoch seconds (no zone means UTC), within EARLIEST..LATEST."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ImdsMalformedError(f"{path}: bad time {text[:SNIPPET]!r}") from None
    offset = moment.utcoffset()
    if offset is not None and (abs(offset) > MAX_OFFSET or offset % timedelta(minutes=1)):
        raise ImdsMalformedError(f"{path}: impossible UTC offset in {text[:SNIPPET]!r}")
    return _in_range(
        (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp(), text, path
    )


def format_rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(RFC3339)


def parse_event_time(text: str, path: str) -> float:
    """'21 Jan 2019 09:00:43 GMT' as epoch seconds, within EARLIEST..LATEST."""
    try:
        moment = datetime.strptime(text.strip(), EVENT_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise ImdsMalformedError(f"{path}: bad time {text[:SNIPPET]!r}") from None
    return _in_range(moment.timestamp(), text, path)


def format_event_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment.day} {moment:%b %Y %H:%M:%S} GMT"  # AWS does not pad the day


def _in_range(epoch: float, text: str, path: str) -> float:
    if not EARLIEST <= epoch < LATEST:
        raise ImdsMalformedError(f"{path}: time out of range (2000..2100): {text[:SNIPPET]!r}")
    return epoch


def json_depth_ok(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests at most `limit` deep (brackets outside strings), checked before
    json.loads would recurse into it: no RecursionError, linear in the (capped) size."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one request got: the status and the whole (capped) body."""

    status: int
    body: bytes

    @property
    def snippet(self) -> str:
        return self.body[:SNIPPET].decode("utf-8", errors="replace")


class ImdsClient:
    """Reads paths from the metadata service; meant for one thread (the agent's loop).

    The token is kept and refreshed shortly before it expires, by the monotonic clock. That
    clock stops during a hibernation while the token's lifetime does not, so a token can
    still come back 401 after a resume: then one new token is fetched and the GET repeated.

    Every request (the token PUT, each GET) ends within `deadline` seconds of real time,
    connect and all reads together, and a whole call within two (`budget`: room for a token
    PUT and its GET, or a 401 and the second try). A timeout or a refused connection ends the
    call, so a dead or hanging service costs one deadline per call, not attempts x timeouts:
    the next poll is the retry. Only answers that say "try again" (5xx, 429) are retried
    within a call, with backoff, while the budget lasts.
    """

    def __init__(
        self,
        config: ImdsConfig,
        clock: Clock | None = None,
        *,
        backoff_max: float = 1.0,
        deadline: float | None = None,
        max_body: int = MAX_BODY,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """Waits between attempts are random (full jitter) up to backoff_max/4, /2, then
        backoff_max, slept on `clock`. `deadline` (default: the larger of the connect and
        read timeouts) is measured on `timer`, real time: the network does not run on a test's
        fake clock. Bodies over `max_body` bytes are refused unread. No request goes through a
        proxy: http.client reads no proxy settings."""
        self._base = config.url.rstrip("/")
        self._config = config
        self._clock = clock or SystemClock()
        self._conn: http.client.HTTPConnection | None = None  # kept alive between calls
        self._deadline = deadline or max(config.connect_timeout, config.read_timeout)
        self._max_body = max_body
        self._timer = timer
        self._call_ends = float("inf")  # set by each call
        self._token: str | None = None
        self._refresh_at = 0.0
        self._v1 = False  # set once a service without tokens was found and v1 is allowed
        self._retrying = Retrying(
            # a retry only with half a deadline still left for it after the backoff
            stop=stop_after_attempt(config.attempts)
            | stop_before_delay(self.budget - self._deadline / 2),
            wait=wait_random_exponential(multiplier=backoff_max / 8, max=backoff_max),
            retry=retry_if_exception_type(ImdsServerError),
            sleep=self._clock.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )

    @property
    def deadline(self) -> float:
        """The most one call may take, in seconds."""
        return self._deadline

    @property
    def budget(self) -> float:
        """The most one call (token PUT, retries and all) may take, in seconds."""
        return 2 * self._deadline

    def get_text(self, path: str) -> str | None:
        body = self.get_bytes(path)
        return None if body is None else body.decode("utf-8", errors="replace")

    def get_json(self, path: str, expect: type | tuple[type, ...] | None = None) -> Any | None:
        """The parsed body, whatever content type the service claims (AWS's mock sends JSON);
        `expect` (e.g. dict) is the type the path promises."""
        body = self.get_bytes(path)
        if body is None:
            return None
        if not json_depth_ok(body):
            raise ImdsMalformedError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH}")
        try:
            data = json.loads(body)
        except ValueError:
            snippet = body[:SNIPPET].decode("utf-8", errors="replace")
            raise ImdsMalformedError(f"{path}: not JSON: {snippet!r}") from None
        if expect is not None and not isinstance(data, expect):
            raise ImdsMalformedError(
                f"{path}: expected {_type_names(expect)}, got {type(data).__name__}"
            )
        return data

    def get_bytes(self, path: str) -> bytes | None:
        self._call_ends = self._timer() + self.budget
        return self._retrying(self._get_once, path)

    def _get_once(self, path: str) -> bytes | None:
        reply = self._send("GET", path, self._auth_headers())
        if reply.status == 401:
            log.info("imds.token.rejected", path=path)
            self._token, self._v1 = None, False
            reply = self._send("GET", path, self._auth_headers())
        if reply.status == 200:
            return reply.body
        if reply.status == 404:
            return None
        raise _failure(reply, f"GET {path}")

    def _auth_headers(self) -> dict[str, str]:
        if self._v1:
            return {}
        if self._token is None or self._clock.monotonic() >= self._refresh_at:
            try:
                self._fetch_token()
            except ImdsMalformedError as exc:  # discarded; one more try in this call's time
                log.warning("imds.token.malformed", error=str(exc))
                self._fetch_token()
        return {} if self._token is None else {TOKEN_HEADER: self._token}

    def _fetch_token(self) -> None:
        ttl = int(self._config.token_ttl)
        self._token = None
        reply: _Reply | None
        try:
            reply = self._send("PUT", TOKEN_PATH, {TTL_HEADER: str(ttl)})
        except ImdsTokenTimeoutError:
            if not self._config.allow_v1:
                raise
            reply = None
        if reply is None or reply.status in (404, 405):
            self._use_v1(reply)
            return
        if reply.status != 200:
            raise _failure(reply, f"PUT {TOKEN_PATH}")
        self._token = _valid_token(reply.body)
        self._refresh_at = self._clock.monotonic() + ttl - min(REFRESH_MARGIN, ttl / 10)
        log.info("imds.token.refreshed", ttl=ttl)

    def _use_v1(self, reply: _Reply | None) -> None:
        """Fall back to tokenless GETs: a service without IMDSv2, or a PUT lost to the hop limit."""
        why = "timed out" if reply is None else f"HTTP {reply.status}"
        if not self._config.allow_v1:
            raise ImdsError(
                f"PUT {TOKEN_PATH}: {why}: no IMDSv2 here; set imds.allow_v1 to use IMDSv1"
            )
        log.warning("imds.v1.fallback", reason=why)
        self._token, self._v1 = None, True

    def _send(self, method: str, path: str, headers: dict[str, str]) -> _Reply:
        """One request, all done within the deadline: connect, headers, the streamed body."""
        what = f"{method} {path}"
        now = self._timer()
        ends = min(now + self._deadline, self._call_ends)
        if ends - now < MIN_WAIT:
            raise ImdsUnavailableError(
                f"{what}: not sent, the call's {self.budget:.3g} s are spent"
            )
        read = min(self._config.read_timeout, ends - now)
        conn = self._connection(what, min(self._config.connect_timeout, ends - now))
        sock = conn.sock
        try:
            sock.settimeout(read)
            if isinstance(sock, _BoundedSocket):
                sock.bound(ends, self._config.read_timeout, self._timer)
            conn.request(method, self._target(path), headers=headers)
            response = conn.getresponse()
            body = self._read_body(response, what)
            response.close()  # read whole: the connection may carry the next request
        except BaseException as exc:
            conn.close()  # half used: the next request connects afresh
            self._conn = None
            if isinstance(exc, TimeoutError) and method == "PUT":
                raise ImdsTokenTimeoutError(
                    f"{what}: no answer in {read:.3g} s "
                    "(hop limit? HttpPutResponseHopLimit too low for this network path)"
                ) from exc
            if isinstance(exc, TimeoutError):
                raise ImdsUnavailableError(f"{what}: timed out, no answer in {read:.3g} s") from exc
            if isinstance(exc, (http.client.HTTPException, OSError)):
                raise ImdsUnavailableError(f"{what}: {_reason(exc)}") from exc
            raise
        if response.will_close:  # the service said so, or HTTP/1.0
            conn.close()
            self._conn = None
        return _Reply(response.status, body)

    def _target(self, path: str) -> str:
        """The URL's own path (if any) before the request's."""
        return f"{urlsplit(self._base).path}/{path.lstrip('/')}"

    def _connection(self, what: str, timeout: float) -> http.client.HTTPConnection:
        """The kept-alive connection, or a new one when there is none or the service closed
        it while we waited (readable while idle means EOF). A URL that cannot be connected to
        fails each call as unavailable, like a dead service, not the agent's start."""
        if self._conn is not None and not _readable(self._conn.sock):
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            url = urlsplit(self._base)
            kind = (
                http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            )
            conn = kind(url.hostname or "", url.port, timeout=timeout)
            conn.connect()
            if url.scheme == "http":  # TLS reads bypass a Python socket's recv_into
                conn.sock = _BoundedSocket(fileno=conn.sock.detach())
        except TimeoutError as exc:  # nothing accepting: not the hop limit
            raise ImdsUnavailableError(
                f"{what}: connect timed out after {timeout:.3g} s (nothing accepting?)"
            ) from exc
        except (ValueError, OSError) as exc:  # refused, unreachable, a bad port: no wait
            raise ImdsUnavailableError(f"{what}: {_reason(exc)}") from exc
        self._conn = conn
        return conn

    def _read_body(self, raw: http.client.HTTPResponse, what: str) -> bytes:
        """The body, read as it comes, stopped at the cap (and at the deadline: the socket)."""
        declared = raw.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise ImdsMalformedError(
                f"{what}: a {declared} byte answer, over the {self._max_body} byte cap"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = raw.read1(self._max_body + 1 - size)
            except TimeoutError as exc:
                raise ImdsUnavailableError(
                    f"{what}: answer not complete within the {self._deadline} s deadline "
                    f"({size} bytes so far)"
                ) from exc
            except (http.client.HTTPException, OSError) as exc:
                raise ImdsUnavailableError(f"{what}: reading the answer: {_reason(exc)}") from exc
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body:
                raise ImdsMalformedError(f"{what}: answer over the {self._max_body} byte cap")
            chunks.append(chunk)


class _BoundedSocket(socket.socket):
    """A socket whose every receive ends by the request's deadline: a service that drips its
    status line and headers byte by byte ends the request in time, as a dripped body does
    (a per-read timeout alone would wait for each byte anew)."""

    _ends = float("inf")
    _per_read = 1.0
    _timer: Callable[[], float] = time.monotonic

    def bound(self, ends: float, per_read: float, timer: Callable[[], float]) -> None:
        """Receives from now on end by `ends` on `timer`, each waiting `per_read` at most."""
        self._ends, self._per_read, self._timer = ends, per_read, timer

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        left = self._ends - self._timer()
        if left <= 0:
            raise TimeoutError("timed out")
        self.settimeout(max(min(left, self._per_read), MIN_WAIT))
        return super().recv_into(buffer, nbytes, flags)


def _readable(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket has something to read: the peer's EOF (or bytes
    nobody asked for), so it must not carry the next request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _reason(exc: BaseException) -> str:
    """The root cause in words that are the same every time (so repeats can be counted as
    one): some messages carry object addresses."""
    root = exc
    while (nested := root.__cause__ or root.__context__) is not None and nested is not root:
        root = nested
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    return ADDRESS.sub("", str(root)) or type(root).__name__


def _valid_token(body: bytes) -> str:
    """The token if it can go into a header as it is: printable ASCII, no spaces, sane length."""
    token = body.strip()
    if TOKEN_SHAPE.fullmatch(token.decode("latin-1")) is None:
        why = f"{len(token)} bytes" if len(token) > SNIPPET else repr(token)
        raise ImdsMalformedError(
            f"PUT {TOKEN_PATH}: token discarded: not 1..1024 printable ASCII characters ({why})"
        )
    return token.decode("ascii")


def _type_names(expect: type | tuple[type, ...]) -> str:
    kinds = expect if isinstance(expect, tuple) else (expect,)
    names: dict[type, str] = {dict: "a JSON object", list: "a JSON array", str: "a JSON string"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _failure(reply: _Reply, what: str) -> ImdsError:
    """The error for a non-200 answer; only the retryable ones are ImdsServerError."""
    status = reply.status
    if status == 401:
        return ImdsError(f"{what}: token rejected twice (HTTP 401)")
    if status == 403:
        return ImdsDisabledError(
            f"{what}: metadata service disabled for this instance (HTTP 403; "
            "or the request came through a proxy)"
        )
    if status >= 500 or status == 429:
        return ImdsServerError(f"{what}: HTTP {status} {reply.snippet!r}")
    return ImdsError(f"{what}: unexpected HTTP {status} {reply.snippet!r}")


def _log_retry(state: RetryCallState) -> None:
    """Debug only: the call's final failure is what the agent reports (once, see logs.py)."""
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.debug("imds.retry", attempt=state.attempt_number, wait=round(wait, 3), error=str(error))
