"""A JSON webhook that tells people what the agent did, retried but never past the deadline.

AWS's own handler gives its webhook one 5 s try; a notice is worth a few retries, yet a
webhook must never delay the hibernation, so every attempt and every wait fits the deadline.

The URL is the user's, but the request leaves a root agent on an EC2 instance: it goes
nowhere link-local or to the metadata service (unless `agent.webhook_allow_link_local`),
checked on the addresses the host name resolves to and again on the address each connection
reaches, so a name that re-resolves elsewhere in between is caught too. Logs name the host
only: a webhook's path or query often is its secret.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.stop import stop_base
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from spotguard.clock import Clock, SystemClock

log = structlog.get_logger()


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Link-local (the metadata service at 169.254.169.254, ECS/EKS credential endpoints) and the
# IPv6 addresses of EC2's own services (the metadata service at fd00:ec2::254, DNS, NTP).
REFUSED_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::/64"),
)
Resolver = Callable[[str, int], Iterable[str]]


class _ServerError(Exception):
    """A 5xx answer: the receiver may be back in a moment."""


class _Refused(Exception):
    """The target is an address a webhook must not reach; never retried."""


_RETRIED = (requests.ConnectionError, requests.Timeout, _ServerError)


def refused_address(address: str, refused: Iterable[IPNetwork]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the zone is no part
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return any(ip in network for network in refused)


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a literal address is its own answer)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def log_host(url: str) -> str:
    """What logs may say of a webhook URL: host and port only (user:password@, the path and
    the query may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    port = _port(url)
    return shown + (f":{port}" if port else "")


def _port(url: str) -> int | None:
    """The URL's explicit port; None when there is none or it is not a port number."""
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _error_text(exc: BaseException) -> str:
    """What went wrong without the URL: requests' and urllib3's messages quote the path."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, _ServerError | _Refused):
        return str(exc)
    return type(exc).__name__


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
        *,
        allow_link_local: bool = False,
        resolver: Resolver = resolve,
        refused: tuple[IPNetwork, ...] = REFUSED_NETWORKS,
    ) -> None:
        self._url = url
        self._attempts = attempts
        self._session = session or requests.Session()
        self._clock = clock or SystemClock()
        self._timeout_s = timeout_s
        parts = urlsplit(url)
        self._hostname = parts.hostname or ""
        self._port = _port(url) or (443 if parts.scheme == "https" else 80)
        self._host = log_host(url)
        self._resolver = resolver
        self._refused = () if allow_link_local else refused
        if self._refused:
            adapter = _PeerCheckingAdapter(self._refused)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)

    def send(self, payload: Mapping[str, Any], deadline: float | None) -> bool:
        """POST `payload` as JSON; True once the receiver accepted it. `deadline`: wall epoch s."""
        end = math.inf if deadline is None else deadline
        if self._clock.wall() >= end:
            log.warning("webhook.expired", host=self._host)
            return False
        refusal = self._refusal()
        if refusal:
            log.warning("webhook.refused", host=self._host, reason=refusal)
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
        except _Refused as exc:
            log.warning("webhook.refused", host=self._host, reason=str(exc))
            return False
        except (requests.RequestException, _ServerError) as exc:
            log.warning("webhook.failed", host=self._host, error=_error_text(exc))
            return False
        log.info("webhook.sent", host=self._host)
        return True

    def _refusal(self) -> str:
        """Why the URL's host must not be reached ("" if it may); a name that does not resolve
        now is left to the attempts, where each connection's address is checked anyway."""
        if not self._refused:
            return ""
        if not self._hostname:
            return "the URL names no host"
        try:
            addresses = list(self._resolver(self._hostname, self._port))
        except (OSError, UnicodeError):
            return ""
        bad = [a for a in addresses if refused_address(a, self._refused)]
        if bad:
            return f"it resolves to {', '.join(bad)}: link-local or the metadata service"
        return ""

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.info(
            "webhook.retry",
            host=self._host,
            attempt=state.attempt_number,
            wait_s=state.upcoming_sleep,
            error=_error_text(error) if error else "",
        )


class _PeerCheck:
    """Checks the address a new connection reached, after DNS and before a byte is sent."""

    refused: tuple[IPNetwork, ...] = ()

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        peer = str(sock.getpeername()[0])
        if refused_address(peer, self.refused):
            sock.close()
            raise _Refused(f"the connection reached {peer}: link-local or the metadata service")
        return sock


class _PeerCheckingAdapter(HTTPAdapter):
    def __init__(self, refused: tuple[IPNetwork, ...]) -> None:
        attrs = {"refused": refused}
        http = type("_CheckedHTTPConnection", (_PeerCheck, HTTPConnection), attrs)
        https = type("_CheckedHTTPSConnection", (_PeerCheck, HTTPSConnection), attrs)
        self._pools = {
            "http": type("_CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("_CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools
