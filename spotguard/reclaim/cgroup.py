"""One memory cgroup and its files, v1 or v2, as senpai wraps them: read usage, write reclaim.

Paths are host paths joined onto a HostFS root. Every write goes through the injected
FileWriter, so a deadline (BoundedWriter) or a test double sits between us and the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from spotguard.hostfs import HostFileError, HostFS, read_kernel_text
from spotguard.kernelnum import counter
from spotguard.reclaim.writer import FileWriter
from spotguard.signals.psi import PsiFile

PAGE = os.sysconf("SC_PAGE_SIZE")
_VANISHED = (errno.ENOENT, errno.ENODEV, errno.ESTALE)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class CgroupError(Exception):
    """A cgroup could not be used; ends its stage, never the run."""


class CgroupVanished(CgroupError):
    """The cgroup was removed under us (its workload exited): the stage ends cleanly."""


class CgroupPermissionError(CgroupError):
    """We may not write the cgroup's files: the agent needs root (or a delegated subtree)."""


class CgroupPathError(ValueError):
    """A cgroup name that would leave the configured root (``..``, a symlink, another mount)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Charged bytes and the LRU split reclaim can act on (shmem counts as anon, as in the LRU)."""

    total: int
    file: int
    anon: int


def resolve(fs: HostFS, root: str, name: str) -> str:
    """The host path of cgroup `name` (relative to `root`, or absolute under it), checked."""
    root = root.rstrip("/") or "/"
    relative = name
    if name.startswith("/"):
        if not (name == root or name.startswith(root.rstrip("/") + "/")):
            raise CgroupPathError(f"cgroup {name!r} is not under {root}")
        relative = name[len(root) :]
    parts = PurePosixPath(relative.strip("/")).parts
    if ".." in parts:
        raise CgroupPathError(f"cgroup {name!r} must not contain '..'")
    base = os.path.realpath(fs.path(root))
    real = os.path.realpath(os.path.join(base, *parts))
    if real != base and not real.startswith(base + os.sep):
        raise CgroupPathError(f"cgroup {name!r} resolves outside {root} (symlink?)")
    return str(PurePosixPath(root, *parts))


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except HostFileError as exc:  # a directory or a huge file where a cgroup file should be
        raise CgroupError(str(exc)) from exc
    except OSError as exc:
        if exc.errno in _VANISHED:
            raise CgroupVanished(f"{path.parent} is gone") from exc
        if exc.errno in _DENIED:
            raise CgroupPermissionError(
                f"cannot use {path}: {exc.strerror} (run as root or delegate the cgroup)"
            ) from exc
        raise


@dataclass(frozen=True, slots=True)
class Cgroup:
    fs: HostFS
    path: str  # host path, e.g. /sys/fs/cgroup/memory/batch.slice
    writer: FileWriter
    name: str = ""  # relative to the memory root, for people

    @classmethod
    def under(cls, fs: HostFS, root: str, name: str, writer: FileWriter) -> Cgroup:
        path = resolve(fs, root, name)
        return cls(fs, path, writer, path[len(root.rstrip("/")) :].strip("/") or "/")

    def with_writer(self, writer: FileWriter) -> Cgroup:
        return replace(self, writer=writer)

    def file(self, name: str) -> Path:
        return self.fs.path(self.path) / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def exists(self) -> bool:
        return self.fs.path(self.path).is_dir()

    def children(self) -> list[str]:
        """Child cgroup names (not following symlinks), sorted for a stable plan."""
        with _errors(self.file("cgroup.procs")), os.scandir(self.fs.path(self.path)) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))

    # -- reads ----------------------------------------------------------------------------

    def _read(self, name: str) -> str:
        path = self.file(name)
        with _errors(path):
            return read_kernel_text(path)

    def _read_int(self, name: str) -> int:
        text = self._read(name).strip()
        try:
            return counter(text)
        except ValueError:
            raise CgroupError(f"{self.file(name)}: expected a number, got {text[:40]!r}") from None

    def current(self) -> int:
        """memory.current (v2) or memory.usage_in_bytes (v1): hierarchical charged bytes."""
        return self._read_int(
            "memory.current" if self.has("memory.current") else "memory.usage_in_bytes"
        )

    def stat(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for line in self._read("memory.stat").splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                found[key] = counter(value)
        return found

    def usage(self) -> Usage:
        stat = self.stat()
        # v1 keeps hierarchical counters as total_*; v2's plain keys already are hierarchical.
        prefix = "total_" if "total_inactive_file" in stat else ""

        def lru(kind: str) -> int:
            keys = (f"{prefix}inactive_{kind}", f"{prefix}active_{kind}")
            if not any(k in stat for k in keys):  # a minimal memory.stat: the v2 totals
                return stat.get(kind, 0)
            return sum(stat.get(k, 0) for k in keys)

        return Usage(self.current(), lru("file"), lru("anon"))

    def pressure(self) -> float | None:
        """memory.pressure "some" avg10 (v2 only; None elsewhere)."""
        return PsiFile(self.file("memory.pressure")).read().some

    def limit(self) -> int:
        return self._read_int("memory.limit_in_bytes")

    def swap_reclaimed(self) -> int:
        """Bytes the last memory.swap.reclaim write reclaimed (the RFC's read side)."""
        return self._read_int("memory.swap.reclaim")

    # -- writes ---------------------------------------------------------------------------

    def _write(self, name: str, data: str) -> None:
        path = self.file(name)
        with _errors(path):
            self.writer.write(path, data)

    def reclaim(self, nbytes: int, swappiness: int | None = None) -> None:
        """cgroup v2 memory.reclaim; EAGAIN when less than asked could be reclaimed."""
        key = "" if swappiness is None else f" swappiness={swappiness}"
        self._write("memory.reclaim", f"{nbytes}{key}")

    def swap_reclaim(self, nbytes: int) -> None:
        """The RFC's memory.swap.reclaim (it also takes ``max``; we always stage)."""
        self._write("memory.swap.reclaim", str(nbytes))

    def set_limit(self, value: int) -> None:
        """cgroup v1 memory.limit_in_bytes; lowering it reclaims down to it (EBUSY if it can't)."""
        self._write("memory.limit_in_bytes", str(value))

    def force_empty(self) -> None:
        """cgroup v1: reclaim everything the kernel can from this cgroup, in one write."""
        self._write("memory.force_empty", "0")
