"""Shared fixtures live in tests/fixtures_*.py, one module per real part they start."""

from collections.abc import Iterator

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
