"""Every /proc and /sys path goes through a root prefix, so tests can run on a fake tree.

Reads are bounded and checked here, once, for every reader: a kernel file is a regular file of
a few kilobytes, so a directory, a FIFO, a device or a multi-megabyte file where one is expected
is a HostFileError (an OSError, so each reader's "cannot read" fallback applies) that names the
file, never a hang, an out-of-memory or a UnicodeDecodeError.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MAX_READ = 1 << 20  # /proc/stat of a 448-CPU host is ~100 KiB; nothing we read comes close
_CHUNK = 64 << 10  # most kernel files are one chunk: no 1 MiB buffer per read


class HostFileError(OSError):
    """A file that is there but is not what a kernel file is: a directory, too big, not regular."""


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_READ) -> bytes:
    """At most `limit` bytes of a regular file; HostFileError when it is not one or is bigger.

    O_NONBLOCK: opening a FIFO planted where a file should be must not wait for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise HostFileError(errno.EISDIR, "a directory where a file should be", str(path))
        if not stat.S_ISREG(mode):
            raise HostFileError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise HostFileError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return b"".join(chunks)


def read_kernel_text(path: str | os.PathLike[str], limit: int = MAX_READ) -> str:
    """A kernel text file: ASCII, anything else replaced (parsers then reject the line)."""
    return read_bounded(path, limit).decode("ascii", errors="replace")


@dataclass(frozen=True, slots=True)
class HostFS:
    """The host's filesystem seen from `root` (``/`` in production, a temp dir in tests)."""

    root: Path = Path("/")

    @classmethod
    def from_env(cls, default: str | os.PathLike[str] = "/") -> HostFS:
        return cls(Path(os.environ.get("SPOTGUARD_ROOT", default)))

    def path(self, absolute: str | os.PathLike[str]) -> Path:
        """Join an absolute host path (``/proc/stat``) onto the root."""
        return _joined(self.root, os.fspath(absolute))

    def read_text(self, absolute: str | os.PathLike[str]) -> str:
        return read_kernel_text(self.path(absolute))

    def exists(self, absolute: str | os.PathLike[str]) -> bool:
        return self.path(absolute).exists()


@lru_cache(maxsize=1024)
def _joined(root: Path, absolute: str) -> Path:
    """Memoised: pathlib interns every part of a path it parses, and the interpreter drops a
    part from its intern table when the last path holding it goes. The agent joins the same few
    dozen paths on every poll, and that churn grew the table's storage by 0.5 MiB of RSS after
    half a minute (issue 9's soak); a kept Path keeps its parts alive. Bounded: a host has a
    fixed set of files we read, plus cgroups that come and go."""
    return root / absolute.lstrip("/")
