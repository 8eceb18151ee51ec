"""How bytes reach a cgroup file: one write(2), with EINTR handed back to the caller.

CPython retries a write that fails with EINTR (PEP 475) unless a signal handler raises, and
handlers only run in the main thread; a write in a worker thread would restart the reclaim it
was meant to stop. So the syscall goes through libc directly, where EINTR is just an errno.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Protocol


class FileWriter(Protocol):
    """Writes `data` to `path` in one syscall; raises OSError carrying the kernel's errno."""

    def write(self, path: Path, data: str) -> None: ...


class LibcWriter:
    """The real writer: open, one libc write(2), close. EINTR, EAGAIN, EINVAL surface as OSError."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._write = libc.write
        self._write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        self._write.restype = ctypes.c_ssize_t

    def write(self, path: Path, data: str) -> None:
        raw = data.encode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            written = int(self._write(fd, raw, len(raw)))
            if written < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(path))
        finally:
            os.close(fd)
