"""What the in-guest programs share: kernel command-line parameters and console markers."""

from __future__ import annotations

import os
import time
from pathlib import Path

CONSOLE = Path(os.environ.get("TESTBED_CONSOLE", "/dev/ttyS0"))
RUN_DIR = Path(os.environ.get("TESTBED_RUN_DIR", "/run/testbed"))
CMDLINE = Path("/proc/cmdline")
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOAD_CGROUP = "load.slice"
AGENT_ARMS = ("spotguard", "spotguard-hibernate")  # the arms that install spotguard


def params(cmdline: Path = CMDLINE) -> dict[str, str]:
    """``testbed.key=value`` words of the kernel command line, without the prefix."""
    words = cmdline.read_text().split()
    return {
        key.removeprefix("testbed."): value
        for key, _, value in (w.partition("=") for w in words)
        if key.startswith("testbed.")
    }


def say(event: str, **fields: object) -> None:
    """One marker line on the serial console, written in one call so lines don't interleave."""
    words = " ".join(f"{k}={v}" for k, v in fields.items())
    line = f"TESTBED {event} t={time.monotonic():.3f} {words}".rstrip() + "\n"
    with CONSOLE.open("a") as console:
        console.write(line)


def record(name: str, value: str) -> None:
    """A small fact other in-guest programs read (pids, times), under the run folder."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / name).write_text(value)


def recall(name: str) -> str | None:
    try:
        return (RUN_DIR / name).read_text()
    except FileNotFoundError:
        return None


def signal_program(name: str, signum: int) -> None:
    """Signal the program that recorded ``NAME.pid``; a program that is gone is skipped."""
    pid = recall(f"{name}.pid")
    if pid is None:
        return
    try:
        os.kill(int(pid), signum)
    except (ProcessLookupError, ValueError):
        say("signal-missed", program=name)


def write_sysfs(path: Path, text: str) -> None:
    """One unbuffered write, so a failing kernel knob (ENOMEM from /sys/power/state) is one
    attempt that raises, not a retry when Python flushes its buffer again at close."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        number, *unit = rest.split()
        values[key] = int(number) * (1024 if unit else 1)
    return values


def reserved_bytes(zoneinfo: Path = Path("/proc/zoneinfo")) -> int:
    """Pages present in memory but never handed to the page allocator (kernel image, memmap,
    early allocations), summed over zones: MemTotal leaves them out, yet the kernel saves them
    in every image, so they belong to its floor."""
    pages = 0
    for line in zoneinfo.read_text().splitlines():
        key, *value = line.split()
        if key == "present" and value:
            pages += int(value[0])
        elif key == "managed" and value:
            pages -= int(value[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    """``python3 -m testbed.inguest.common EVENT``: a marker from a unit file."""
    import sys

    say(sys.argv[1], **params())


if __name__ == "__main__":
    main()
