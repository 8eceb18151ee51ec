"""Numbers as the kernel prints them, checked before anyone compares with them.

A counter is an unsigned 64-bit decimal; an average is a finite, non-negative decimal. Anything
else (``nan``, ``inf``, a 5,000-digit run, ``+5``, ``1_000``, a non-ASCII digit) is a ValueError
for the caller's "malformed" path: a NaN pressure compares false with every threshold, so it
would switch the pressure rule off without a word.
"""

from __future__ import annotations

import re

_COUNTER = re.compile(r"[0-9]{1,20}")
_AVERAGE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
MAX_COUNTER = (1 << 64) - 1


def counter(text: str) -> int:
    """An unsigned 64-bit decimal, surrounding whitespace allowed."""
    stripped = text.strip()
    if not _COUNTER.fullmatch(stripped) or (value := int(stripped)) > MAX_COUNTER:
        raise ValueError(f"not a kernel counter: {stripped[:40]!r}")
    return value


def average(text: str) -> float:
    """A finite, non-negative decimal such as PSI's ``avg10=1.23`` or the load ``0.57``."""
    stripped = text.strip()
    if not _AVERAGE.fullmatch(stripped):
        raise ValueError(f"not a kernel average: {stripped[:40]!r}")
    return float(stripped)  # at most 20 + 20 digits: always finite
