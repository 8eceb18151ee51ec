"""Shared fixtures live in tests/fixtures_*.py, one module per real part they start."""

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

pytest_plugins = [
    "tests.fixtures_aws",
    "tests.fixtures_imds",
    "tests.fixtures_guest",
    "tests.hypothesis_profiles",
    "tests.fixtures_agent",
    "tests.fixtures_fleet",
]


@pytest.fixture(autouse=True)
def _structlog_back() -> Iterator[None]:
    """`cli.main` points structlog at the running test's captured stderr: the next test must
    not log into a closed stream, whatever the order the tests run in."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to 127.0.0.1 and ::1 only: something answers at 169.254.169.254 on these
    machines, so a refusal that regressed must fail the test, not reach it."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]).split("%")[0]
            if not ipaddress.ip_address(host).is_loopback:
                raise AssertionError(f"a test tried to connect to {address!r}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
