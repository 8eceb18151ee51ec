"""Hypothesis profiles, loaded for every test run (conftest's pytest_plugins).

"ci" (picked when CI=true, as .ci/run sets it): derandomized, so a CI run is reproducible and
never flaky, with bounded example counts so every fuzz test together costs seconds. "dev"
(local runs): random seeds, the same counts, so local runs keep finding new cases.
HYPOTHESIS_PROFILE overrides the choice.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = settings(
    max_examples=80,
    deadline=None,  # the machine is shared: time per example is no verdict
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", _COMMON, derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", _COMMON)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)
