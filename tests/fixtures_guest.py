"""The testbed's Debian guest image, built once per pytest session for tests marked `guest`.

It skips, saying why, only when the host tools (`bash .ci/guest-deps.sh`) are missing or the
Debian mirror cannot be reached; any other build failure fails the test that asked for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from testbed.image import CACHE_DIR, MIRROR, SUITE, BaseImage, BuildError, build_base

HOST_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "mkswap")


def mirror_reachable(mirror: str = MIRROR) -> bool:
    try:
        answer = requests.head(f"{mirror}/dists/{SUITE}/Release", timeout=15)
    except requests.RequestException:
        return False
    return answer.ok


@pytest.fixture(scope="session")
def guest_image() -> BaseImage:
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"guest tests need {', '.join(missing)}: run `bash .ci/guest-deps.sh`")
    try:
        return build_base(Path(os.environ.get("TESTBED_CACHE", CACHE_DIR)))
    except BuildError as exc:
        if not mirror_reachable():
            pytest.skip(f"the Debian mirror {MIRROR} cannot be reached: {exc}")
        raise
