"""A real metadata simulator on 127.0.0.1: the only metadata service any test talks to.

The simulator and the client share one FakeClock, so a test expires tokens or moves notice
times by advancing it, and the client's backoff sleeps cost no real time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from spotguard.clock import FakeClock
from spotguard.config import ImdsConfig, Seconds
from spotguard.imds import ImdsClient
from spotguard.simulator import AWS_MOCK, MetadataSimulator

# Short enough to keep the suite fast, long enough for a loaded CI machine's loopback.
CONNECT_TIMEOUT = Seconds(0.3)
READ_TIMEOUT = Seconds(0.5)
BACKOFF_MAX = 0.05


def fast_config(url: str, **overrides: Any) -> ImdsConfig:
    base = ImdsConfig(url=url, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def sim_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(sim_clock: FakeClock) -> Iterator[MetadataSimulator]:
    """A fresh simulator per test; held (timeout) requests are released when it stops."""
    with MetadataSimulator(clock=sim_clock, hold=3.0) as sim:
        yield sim


@pytest.fixture
def aws_mock(sim_clock: FakeClock) -> Iterator[MetadataSimulator]:
    """AWS's amazon-ec2-metadata-mock as users run it: moving times, its pages, no tokens."""
    with MetadataSimulator(clock=sim_clock, hold=3.0, quirks=AWS_MOCK) as sim:
        yield sim


@pytest.fixture
def imds_client(simulator: MetadataSimulator, sim_clock: FakeClock) -> ImdsClient:
    return ImdsClient(fast_config(simulator.url), clock=sim_clock, backoff_max=BACKOFF_MAX)
