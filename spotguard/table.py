"""Two-column tables for people: `status`, `check`, `estimate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO


def print_table(rows: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        out.write(f"{key.ljust(width)}  {value}\n")
