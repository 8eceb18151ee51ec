"""Client for the EC2 instance metadata service: IMDSv2 tokens, timeouts, retries, clear errors.

Every failure becomes an `ImdsError` subclass that names the path, so the agent can log it,
count it and keep polling. "No such data" (404) is not a failure: the getters return None.
The wire formats the service uses (token headers, time formats) live here too, so the
simulator speaks exactly what the client expects.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import requests
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
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

log = structlog.get_logger()


class ImdsError(Exception):
    """The metadata service could not give an answer."""


class ImdsDisabledError(ImdsError):
    """403: the metadata service is disabled for this instance."""


class ImdsUnavailableError(ImdsError):
    """Timeouts, refused connections or 5xx answers, still failing after every attempt."""


class ImdsTokenTimeoutError(ImdsUnavailableError):
    """The token PUT got no answer: usually the hop limit (HttpPutResponseHopLimit)."""


class ImdsMalformedError(ImdsError):
    """An answer that is not what the path promises (bad JSON, missing fields)."""


def parse_rfc3339(text: str, path: str) -> float:
    """'2026-12-01T08:22:00Z' as epoch seconds (no zone means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ImdsMalformedError(f"{path}: bad time {text[:SNIPPET]!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def format_rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(RFC3339)


def parse_event_time(text: str, path: str) -> float:
    try:
        return datetime.strptime(text.strip(), EVENT_TIME).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ImdsMalformedError(f"{path}: bad time {text[:SNIPPET]!r}") from None


def format_event_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment.day} {moment:%b %Y %H:%M:%S} GMT"  # AWS does not pad the day


class ImdsClient:
    """Reads paths from the metadata service; meant for one thread (the agent's loop).

    The token is kept and refreshed shortly before it expires, by the monotonic clock. That
    clock stops during a hibernation while the token's lifetime does not, so a token can
    still come back 401 after a resume: then one new token is fetched and the GET repeated.
    """

    def __init__(
        self,
        config: ImdsConfig,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        *,
        backoff_max: float = 1.0,
    ) -> None:
        """Waits between attempts are random (full jitter) up to backoff_max/4, /2, then
        backoff_max, slept on `clock`; `session` defaults to one that ignores proxy settings."""
        self._base = config.url.rstrip("/")
        self._config = config
        self._clock = clock or SystemClock()
        if session is None:
            session = requests.Session()
            session.trust_env = False  # never send metadata requests through a proxy
        self._session = session
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._token: str | None = None
        self._refresh_at = 0.0
        self._v1 = False  # set once a service without tokens was found and v1 is allowed
        self._retrying = Retrying(
            stop=stop_after_attempt(config.attempts),
            wait=wait_random_exponential(multiplier=backoff_max / 8, max=backoff_max),
            retry=retry_if_exception_type(ImdsUnavailableError),
            sleep=self._clock.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )

    def get_text(self, path: str) -> str | None:
        body = self.get_bytes(path)
        return None if body is None else body.decode("utf-8", errors="replace")

    def get_json(self, path: str) -> Any | None:
        """The parsed body, whatever content type the service claims (AWS's mock sends JSON)."""
        body = self.get_bytes(path)
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError:
            snippet = body[:SNIPPET].decode("utf-8", errors="replace")
            raise ImdsMalformedError(f"{path}: not JSON: {snippet!r}") from None

    def get_bytes(self, path: str) -> bytes | None:
        return self._retrying(self._get_once, path)

    def _get_once(self, path: str) -> bytes | None:
        response = self._send("GET", path, self._auth_headers())
        if response.status_code == 401:
            log.info("imds.token.rejected", path=path)
            self._token, self._v1 = None, False
            response = self._send("GET", path, self._auth_headers())
        if response.status_code == 200:
            return response.content
        if response.status_code == 404:
            return None
        raise _failure(response, f"GET {path}")

    def _auth_headers(self) -> dict[str, str]:
        if self._v1:
            return {}
        if self._token is None or self._clock.monotonic() >= self._refresh_at:
            self._fetch_token()
        return {} if self._token is None else {TOKEN_HEADER: self._token}

    def _fetch_token(self) -> None:
        ttl = int(self._config.token_ttl)
        try:
            response = self._send("PUT", TOKEN_PATH, {TTL_HEADER: str(ttl)})
        except ImdsTokenTimeoutError:
            if not self._config.allow_v1:
                raise
            response = None
        if response is None or response.status_code in (404, 405):
            self._use_v1(response)
            return
        if response.status_code != 200:
            raise _failure(response, f"PUT {TOKEN_PATH}")
        self._token = response.text.strip()
        self._refresh_at = self._clock.monotonic() + ttl - min(REFRESH_MARGIN, ttl / 10)
        log.info("imds.token.refreshed", ttl=ttl)

    def _use_v1(self, response: requests.Response | None) -> None:
        """Fall back to tokenless GETs: a service without IMDSv2, or a PUT lost to the hop limit."""
        why = "timed out" if response is None else f"HTTP {response.status_code}"
        if not self._config.allow_v1:
            raise ImdsError(
                f"PUT {TOKEN_PATH}: {why}: no IMDSv2 here; set imds.allow_v1 to use IMDSv1"
            )
        log.warning("imds.v1.fallback", reason=why)
        self._token, self._v1 = None, True

    def _send(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        url = f"{self._base}/{path.lstrip('/')}"
        try:
            return self._session.request(method, url, headers=headers, timeout=self._timeout)
        except requests.ConnectTimeout as exc:  # nothing there: not the hop limit
            raise ImdsUnavailableError(f"{method} {path}: connect timed out ({exc})") from exc
        except requests.Timeout as exc:
            if method == "PUT":
                raise ImdsTokenTimeoutError(
                    f"PUT {path}: no answer in {self._config.read_timeout} s "
                    "(hop limit? HttpPutResponseHopLimit too low for this network path)"
                ) from exc
            raise ImdsUnavailableError(f"{method} {path}: timed out ({exc})") from exc
        except requests.RequestException as exc:
            raise ImdsUnavailableError(f"{method} {path}: {exc}") from exc


def _failure(response: requests.Response, what: str) -> ImdsError:
    """The error for a non-200 answer; only the retryable ones are ImdsUnavailableError."""
    status = response.status_code
    if status == 401:
        return ImdsError(f"{what}: token rejected twice (HTTP 401)")
    if status == 403:
        return ImdsDisabledError(
            f"{what}: metadata service disabled for this instance (HTTP 403; "
            "or the request came through a proxy)"
        )
    snippet = response.text[:SNIPPET]
    if status >= 500 or status == 429:
        return ImdsUnavailableError(f"{what}: HTTP {status} {snippet!r}")
    return ImdsError(f"{what}: unexpected HTTP {status} {snippet!r}")


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("imds.retry", attempt=state.attempt_number, wait=round(wait, 3), error=str(error))
