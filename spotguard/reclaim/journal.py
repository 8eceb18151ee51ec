"""Original values we lowered and have not yet put back, on disk, with who lowered them.

An agent killed mid-stage must not leave a workload capped (or /sys/power/image_size low):
the next start puts back whatever is left here. Two rules keep that safe when reclaims overlap:
the original is recorded once, by the first process that lowers it, and never overwritten by
a later reader that saw the lowered value; and an entry is put back only when every process
that holds it is gone (pid, start time and boot id: a reused pid does not count).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from spotguard.hostfs import HostFS
from spotguard.process import ProcessId

log = structlog.get_logger()

JOURNAL_NAME = "reclaim-v1-limits.json"
FORMAT = 2


@dataclass(frozen=True, slots=True)
class Entry:
    original: int
    owners: tuple[ProcessId, ...] = ()  # (): written by a version that did not say

    def orphaned(self, fs: HostFS) -> bool:
        return not any(owner.alive(fs) for owner in self.owners)

    def from_older_boot(self, fs: HostFS) -> bool:
        """The boot reset the value itself; writing the old one back would undo a new set-up."""
        return bool(self.owners) and not any(owner.this_boot(fs) for owner in self.owners)


class OriginalsJournal:
    """One JSON file of key -> Entry; every change is made under an flock of its own.

    Owners are looked up in `procs`, the real /proc by default: the journal lives in the real
    state dir and its owners are real processes, even when the host tree under control is a
    fake one behind a root prefix (simulate, tests).
    """

    def __init__(self, path: Path, procs: HostFS | None = None) -> None:
        self.path = path
        self._lock_path = path.with_suffix(".lock")
        self._procs = procs or HostFS()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Short read-modify-write sections only: the host-wide reclaim lock is elsewhere."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def pending(self) -> dict[str, Entry]:
        """Key -> entry. An unreadable journal is logged and ignored."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            log.error("reclaim.journal_unreadable", path=str(self.path), error=str(exc))
            return {}
        if isinstance(raw, dict) and raw.get("version") == FORMAT:
            raw = raw.get("entries")
        if not isinstance(raw, dict):
            log.error("reclaim.journal_unreadable", path=str(self.path), error="not an object")
            return {}
        entries = {k: _entry(v) for k, v in raw.items() if isinstance(k, str)}
        return {k: v for k, v in entries.items() if v is not None}

    def claim(self, key: str, current: Callable[[], int]) -> int:
        """The original to restore `key` to: the one recorded, else `current()`, now recorded.
        This process joins the entry's owners, so nobody restores it while we work on it.
        `current` is read under the lock: a value read before it could be one another process
        lowered and has since put back and forgotten."""
        owner = ProcessId.current(self._procs)
        with self.locked():
            entries = self.pending()
            found = entries.get(key)
            original = current() if found is None else found.original
            owners = () if found is None else found.owners
            if owner not in owners:
                entries[key] = Entry(original, (*owners, owner))
                self._save(entries)
            return original

    def release(self, key: str) -> None:
        """We put `key` back to its original: drop us from its owners, and any dead ones (what
        they left lowered is back too), and the entry when no owner is left."""
        owner = ProcessId.current(self._procs)
        with self.locked():
            entries = self.pending()
            found = entries.get(key)
            if found is None:
                return
            owners = tuple(o for o in found.owners if o != owner and o.alive(self._procs))
            if owners:
                entries[key] = Entry(found.original, owners)
            else:
                del entries[key]
            self._save(entries)

    def recover(self, restore: Callable[[str, int], bool]) -> None:
        """Put back every entry no live process holds; `restore` says whether it worked (an
        entry that failed stays for next time). Under the lock, so no one claims meanwhile.
        Never raises: a start must not fail on its state dir (reclaim then records nothing,
        so it lowers nothing either)."""
        if not self.path.exists():  # nothing to do, and no reason to create the state dir
            return
        try:
            self._recover(restore)
        except OSError as exc:
            log.error("reclaim.journal_unusable", path=str(self.path), error=str(exc))

    def _recover(self, restore: Callable[[str, int], bool]) -> None:
        with self.locked():
            entries = self.pending()
            left = dict(entries)
            for key, entry in entries.items():
                if not entry.orphaned(self._procs):
                    log.info("reclaim.journal_entry_live", key=key, owners=_pids(entry))
                    continue
                if entry.from_older_boot(self._procs):
                    log.info("reclaim.journal_entry_stale", key=key, owners=_pids(entry))
                    del left[key]
                elif restore(key, entry.original):
                    del left[key]
            if left != entries:
                self._save(left)

    def _save(self, entries: dict[str, Entry]) -> None:
        """Write-then-rename, fsynced: the journal is only useful if it survives a crash."""
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        data = {
            "version": FORMAT,
            "entries": {
                key: {"original": e.original, "owners": [o.to_dict() for o in e.owners]}
                for key, e in entries.items()
            },
        }
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(data, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.path)


class LimitJournal(OriginalsJournal):
    """cgroup v1 host path -> its memory.limit_in_bytes before we lowered it."""

    def __init__(self, state_dir: Path, procs: HostFS | None = None) -> None:
        super().__init__(state_dir / JOURNAL_NAME, procs)


def _entry(raw: object) -> Entry | None:
    if isinstance(raw, int) and not isinstance(raw, bool):  # the first format: key -> limit
        return Entry(raw)
    if not isinstance(raw, dict):
        return None
    original, owners = raw.get("original"), raw.get("owners")
    if not isinstance(original, int) or isinstance(original, bool) or not isinstance(owners, list):
        return None
    found = tuple(o for o in map(ProcessId.from_dict, owners) if o is not None)
    return Entry(original, found)


def _pids(entry: Entry) -> list[int]:
    return [o.pid for o in entry.owners]
