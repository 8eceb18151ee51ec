"""A kernel text file read tolerantly: missing means "no signal", bad lines are logged once."""

from __future__ import annotations

from pathlib import Path

import structlog

from spotguard.hostfs import read_kernel_text

log = structlog.get_logger()


class ProcFile:
    """One /proc or /sys file. Kernels differ, so absence and odd lines are normal, not errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._complained = False

    def read(self) -> str | None:
        """The text, or None when the file cannot serve as one (missing, a directory, too big:
        the reason is logged once, like a bad line)."""
        try:
            return read_kernel_text(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.malformed(f"unreadable: {exc.strerror or exc}")
            return None

    def malformed(self, line: str) -> None:
        """Note a line we could not parse; only the first one, so a bad file cannot flood logs."""
        if not self._complained:
            self._complained = True
            log.warning("signals.malformed", path=str(self.path), line=line[:200])
