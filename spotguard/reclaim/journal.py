"""The v1 limits we lowered and have not yet put back, on disk, so a restart can put them back.

An agent killed mid-stage must not leave a workload capped: the engine restores whatever is
left here when it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import structlog

log = structlog.get_logger()

JOURNAL_NAME = "reclaim-v1-limits.json"


class LimitJournal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME

    def pending(self) -> dict[str, int]:
        """cgroup host path -> original limit. An unreadable journal is logged and ignored."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("reclaim.journal_unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(raw, dict):
            log.error("reclaim.journal_unreadable", path=str(self.path), error="not an object")
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, int)}

    def record(self, cgroup: str, limit: int) -> None:
        self._save({**self.pending(), cgroup: limit})

    def forget(self, cgroup: str) -> None:
        entries = self.pending()
        if entries.pop(cgroup, None) is not None:
            self._save(entries)

    def _save(self, entries: dict[str, int]) -> None:
        """Write-then-rename, fsynced: the journal is only useful if it survives a crash."""
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(entries, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.path)
