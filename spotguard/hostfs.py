"""Every /proc and /sys path goes through a root prefix, so tests can run on a fake tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HostFS:
    """The host's filesystem seen from `root` (``/`` in production, a temp dir in tests)."""

    root: Path = Path("/")

    @classmethod
    def from_env(cls, default: str | os.PathLike[str] = "/") -> HostFS:
        return cls(Path(os.environ.get("SPOTGUARD_ROOT", default)))

    def path(self, absolute: str | os.PathLike[str]) -> Path:
        """Join an absolute host path (``/proc/stat``) onto the root."""
        return self.root / os.fspath(absolute).lstrip("/")

    def read_text(self, absolute: str | os.PathLike[str]) -> str:
        return self.path(absolute).read_text(encoding="ascii", errors="replace")

    def exists(self, absolute: str | os.PathLike[str]) -> bool:
        return self.path(absolute).exists()
