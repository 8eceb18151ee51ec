"""The kernel's key/value files the reclaim engine and the image estimator read."""

from __future__ import annotations

import contextlib

from spotguard.hostfs import HostFS
from spotguard.kernelnum import counter

# A value above its total is not a kernel that is odd but a file that is wrong; the estimate
# built on it would call an image small that is not.
_AT_MOST = (("MemFree", "MemTotal"), ("MemAvailable", "MemTotal"), ("SwapFree", "SwapTotal"))


class ProcFormatError(ValueError):
    """A /proc file we need could not be read or parsed; the message names file and line."""


def read_meminfo(fs: HostFS) -> dict[str, int]:
    """/proc/meminfo in bytes (``kB`` lines scaled; unitless lines such as HugePages_* as is)."""
    path = "/proc/meminfo"
    try:
        text = fs.read_text(path)
    except OSError as exc:
        raise ProcFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not line.strip():
            continue
        try:
            if not sep or not 1 <= len(fields) <= 2:
                raise ValueError(line)
            value = counter(fields[0])
        except ValueError:
            raise ProcFormatError(f"{path} line {number}: cannot parse {line[:80]!r}") from None
        found[key.strip()] = value * (1024 if fields[1:] == ["kB"] else 1)
    for part, whole in _AT_MOST:
        if part in found and whole in found and found[part] > found[whole]:
            raise ProcFormatError(f"{path}: {part} {found[part]} exceeds {whole} {found[whole]}")
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
        with contextlib.suppress(ValueError):
            found[key] = counter(value)
    return found
