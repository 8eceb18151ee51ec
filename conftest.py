"""Shared fixtures live in tests/fixtures_*.py, one module per real part they start."""

pytest_plugins = [
    "tests.fixtures_aws",
    "tests.fixtures_imds",
    "tests.fixtures_guest",
    "tests.hypothesis_profiles",
    "tests.fixtures_agent",
    "tests.fixtures_fleet",
]
