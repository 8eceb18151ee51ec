"""A JSON webhook that tells people what the agent did, retried but never past the deadline.

AWS's own handler gives its webhook one 5 s try; a notice is worth a few retries, yet a
webhook must never delay the hibernation, so every attempt and every wait fits the deadline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.stop import stop_base

from spotguard.clock import Clock, SystemClock

log = structlog.get_logger()


class _ServerError(Exception):
    """A 5xx answer: the receiver may be back in a moment."""


_RETRIED = (requests.ConnectionError, requests.Timeout, _ServerError)


class _StopBefore(stop_base):
    """Give up when the next wait would end at or past the deadline."""

    def __init__(self, end: float, clock: Clock) -> None:
        self._end = end
        self._clock = clock

    def __call__(self, state: RetryCallState) -> bool:
        return self._clock.wall() + state.upcoming_sleep >= self._end


class Webhook:
    def __init__(
        self,
        url: str,
        attempts: int,
        session: requests.Session | None = None,
        clock: Clock | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._attempts = attempts
        self._session = session or requests.Session()
        self._clock = clock or SystemClock()
        self._timeout_s = timeout_s
        self._host = urlsplit(url).netloc  # the path may hold a secret token: log the host only

    def send(self, payload: Mapping[str, Any], deadline: float | None) -> bool:
        """POST `payload` as JSON; True once the receiver accepted it. `deadline`: wall epoch s."""
        end = math.inf if deadline is None else deadline
        if self._clock.wall() >= end:
            log.warning("webhook.expired", host=self._host)
            return False
        body = json.dumps(dict(payload), default=str)

        def attempt() -> None:
            timeout = min(self._timeout_s, end - self._clock.wall())
            if timeout <= 0:  # a sleep overshot the deadline
                raise requests.Timeout("the deadline has passed")
            answer = self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
            if answer.status_code >= 500:
                raise _ServerError(f"HTTP {answer.status_code}")
            answer.raise_for_status()

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts) | _StopBefore(end, self._clock),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type(_RETRIED),
            sleep=self._clock.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            retrying(attempt)
        except (requests.RequestException, _ServerError) as exc:
            log.warning("webhook.failed", host=self._host, error=str(exc))
            return False
        log.info("webhook.sent", host=self._host)
        return True

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.info(
            "webhook.retry",
            host=self._host,
            attempt=state.attempt_number,
            wait_s=state.upcoming_sleep,
            error=str(error),
        )
