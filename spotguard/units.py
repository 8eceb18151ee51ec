"""Sizes and durations as people write them: ``512M``, ``2G``, ``max``, ``30s``, ``2m``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bytes(text: str | int) -> int:
    """Bytes from ``4096``, ``256M`` or ``1.5G`` (powers of 1024, as the kernel reads them)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4096, 256M, 2G)")
    number, unit = match.groups()
    return int(float(number) * (1 << _SIZE_SHIFT[unit.upper()]))


def parse_duration(text: str | float) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``."""
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 30s, 500ms, 2m)")
    number, unit = match.groups()
    return float(number) * _DURATION_SCALE[(unit or "s").lower()]


def human_bytes(count: float) -> str:
    """``1.5 GiB`` style, for people reading the CLI."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
