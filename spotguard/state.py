"""The state file: what the agent knows, for `spotguard status`, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._last: str = ""

    def write(self, state: dict[str, Any]) -> None:
        """Replace the file in one rename, so a reader never sees half a state."""
        text = json.dumps(state, indent=2, sort_keys=True, default=str)
        if text == self._last:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._last = text

    def read(self) -> dict[str, Any] | None:
        """None when there is no state yet; a broken file is an error worth showing."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"{self.path}: not a state object")
        return loaded
