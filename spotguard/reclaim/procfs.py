"""The kernel's key/value files the reclaim engine and the image estimator read."""

from __future__ import annotations

from spotguard.hostfs import HostFS


class ProcFormatError(ValueError):
    """A /proc file we need could not be read or parsed; the message names file and line."""


def read_meminfo(fs: HostFS) -> dict[str, int]:
    """/proc/meminfo in bytes (``kB`` lines scaled; unitless lines such as HugePages_* as is)."""
    path = "/proc/meminfo"
    try:
        text = fs.read_text(path)
    except OSError as exc:
        raise ProcFormatError(f"cannot read {path}: {exc.strerror}") from None
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not line.strip():
            continue
        if not sep or not 1 <= len(fields) <= 2 or not fields[0].isdigit():
            raise ProcFormatError(f"{path} line {number}: cannot parse {line[:80]!r}")
        scale = 1024 if fields[1:] == ["kB"] else 1
        found[key.strip()] = int(fields[0]) * scale
    return found


def read_vmstat(fs: HostFS) -> dict[str, int]:
    """/proc/vmstat counters (pages or events); empty when missing, odd lines skipped."""
    try:
        text = fs.read_text("/proc/vmstat")
    except OSError:
        return {}
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found
