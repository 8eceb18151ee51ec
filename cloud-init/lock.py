"""Write the hash-pinned lock file that spotguard-install installs from, for a wheelhouse.

A release is a folder of wheels: spotguard's own and every dependency's, for the target's
Python and platform (``pip wheel .`` or ``pip download --only-binary=:all: spotguard==X``).
The lock names each of them with its exact version and the sha256 of that very file, so
``pip install --require-hashes -r LOCK`` installs exactly those bytes, from the folder or
from an index, and refuses anything else, a dependency's new release included. The lock
goes into the user-data (the variable ``spotguard_lock``): its hashes reach the instance by
the same channel as the rest of its configuration, not from the package source they guard.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# PEP 427: {distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl
WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


class LockError(ValueError):
    """The folder does not make a lock: no wheels, two of one package, or no spotguard."""


def lock_text(wheels: Path, package: str = "spotguard") -> str:
    """One ``name==version --hash=sha256:...`` line per wheel, sorted by name."""
    pins: dict[str, tuple[str, str]] = {}
    for path in sorted(wheels.glob("*.whl")):
        match = WHEEL.match(path.name)
        if match is None:
            raise LockError(f"{path.name} is not a wheel file name")
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()  # PEP 503 normalised
        if name in pins:
            raise LockError(f"two wheels of {name} in {wheels}: keep one version")
        pins[name] = (match["version"], hashlib.sha256(path.read_bytes()).hexdigest())
    if package not in pins:
        raise LockError(f"no {package} wheel in {wheels}")
    return "".join(
        f"{name}=={version} --hash=sha256:{digest}\n"
        for name, (version, digest) in sorted(pins.items())
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the hash-pinned lock of a wheelhouse.")
    parser.add_argument("wheels", type=Path, help="a folder of .whl files")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(lock_text(args.wheels))
    except (LockError, OSError) as exc:
        print(f"lock.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
