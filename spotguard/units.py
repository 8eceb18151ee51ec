"""Sizes and durations as people write them: ``512M``, ``2G``, ``max``, ``30s``, ``2m``.

Both parsers refuse what would only blow up later: NaN and infinity (a NaN compares false with
every limit, so it would silently switch a rule off), negatives, and numbers too long to mean
anything (a 5,000-digit integer overflows a float).
"""

from __future__ import annotations

import math
import re
import reprlib

MAX_BYTES = (1 << 63) - 1  # the kernel's own "unlimited" for a cgroup v1 limit
MAX_SECONDS = 10 * 365 * 86400.0
_MAX_DIGITS = 24  # more than any byte count or duration we take, short of float trouble
# A number as people and `config show` write it: 4096, 1.5, 1e-05.
_NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]?\d{1,3})?)"
_SIZE = re.compile(rf"^\s*{_NUMBER}\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(rf"^\s*{_NUMBER}\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 40, 40, 40


def parse_bytes(text: str | int) -> int:
    """Bytes from ``4096``, ``256M`` or ``1.5G`` (powers of 1024, as the kernel reads them)."""
    if isinstance(text, int):
        return _checked_bytes(text)
    match = _SIZE.match(text) if len(text) <= 2 * _MAX_DIGITS else None
    if not match or len(match.group(1)) > _MAX_DIGITS:
        raise ValueError(f"not a size: {short(text)} (try 4096, 256M, 2G)")
    number, unit = match.groups()
    shift = _SIZE_SHIFT[unit.upper()]
    if number.isdigit():  # exact: a float would round 2**53 + 1
        return _checked_bytes(int(number) << shift)
    scaled = float(number) * (1 << shift)
    if not scaled <= MAX_BYTES:  # also 1e999 (inf), before int() of it overflows
        raise ValueError(f"size must be 0..{MAX_BYTES} bytes, got {short(text)}")
    return int(scaled)


def parse_duration(text: str | float) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``."""
    if isinstance(text, int | float):
        return _checked_seconds(text)
    match = _DURATION.match(text) if len(text) <= 2 * _MAX_DIGITS else None
    if not match or len(match.group(1)) > _MAX_DIGITS:
        raise ValueError(f"not a duration: {short(text)} (try 30s, 500ms, 2m)")
    number, unit = match.groups()
    return _checked_seconds(float(number) * _DURATION_SCALE[(unit or "s").lower()])


def _checked_bytes(value: int) -> int:
    if not 0 <= value <= MAX_BYTES:
        raise ValueError(f"size must be 0..{MAX_BYTES} bytes, got {short(value)}")
    return value


def _checked_seconds(value: float) -> float:
    # int first: float() of a 5,000-digit int raises OverflowError.
    if isinstance(value, int) and not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"duration must be 0..{MAX_SECONDS:.0f} s, got {short(value)}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be a finite number of seconds, got {short(value)}")
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"duration must be 0..{MAX_SECONDS:.0f} s, got {short(value)}")
    return seconds


def short(value: object) -> str:
    """A value for an error message: bounded in length and depth (a 5,000-digit integer, a
    5,000-deep list), and never raising (``str`` of a huge integer does)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return _REPR.repr(value)


def human_bytes(count: float) -> str:
    """``1.5 GiB`` style, for people reading the CLI."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
