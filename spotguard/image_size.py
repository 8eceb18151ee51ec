"""/sys/power/image_size, set to the planned image just before hibernating.

Lowered: once reclaim has pushed out what it could, what is left above the kernel's floor is
mostly clean (swap cache, a little page cache). With image_size above it, the kernel copies it
all into the image; with image_size at the planned size, it drops those pages cheaply in the
hibernation window. Raised: below saveable (image_size=0 above all) the kernel allocates all of
memory but its target inside the window to shrink the image, which costs more than writing a
small image whole (planner._raised_image). The old value comes back after the resume (or a
refused hibernation), and, from the journal in the state dir, at the next start if the agent
died in between.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from spotguard.hostfs import HostFS
from spotguard.reclaim.journal import OriginalsJournal

IMAGE_SIZE = "/sys/power/image_size"
JOURNAL_NAME = "image-size.json"
log = structlog.get_logger()


class ImageSizeControl:
    """`state_dir` None keeps the original in memory only (tests of other parts); `procs` is
    where the journal looks its owners up (the real /proc unless a test says otherwise)."""

    def __init__(
        self, fs: HostFS, state_dir: Path | None = None, procs: HostFS | None = None
    ) -> None:
        self._fs = fs
        self._journal = (
            None if state_dir is None else OriginalsJournal(state_dir / JOURNAL_NAME, procs)
        )
        self._saved: int | None = None

    def set_to(self, target_bytes: int) -> None:
        """Never raises: a kernel without the file (or a read-only one) hibernates as it is."""
        path = self._fs.path(IMAGE_SIZE)
        try:
            current = self._read()
            if current == target_bytes:
                return
            if self._saved is None:  # the first change's original is the one to restore
                self._saved = self._claim()
            path.write_text(f"{target_bytes}\n", encoding="ascii")
        except (OSError, ValueError) as exc:
            log.warning("image_size.unchanged", error=str(exc))
            return
        event = "image_size.lowered" if target_bytes < current else "image_size.raised"
        log.info(event, to_bytes=target_bytes, was_bytes=current)

    def restore(self) -> None:
        if self._saved is None:
            return
        if not self._write(self._saved):
            return  # kept, and in the journal: the next restore or start tries again
        log.info("image_size.restored", to_bytes=self._saved)
        self._saved = None
        if self._journal is not None:
            try:
                self._journal.release(IMAGE_SIZE)
            except OSError as exc:  # the value is back; the next start drops the entry
                log.warning("image_size.journal_failed", error=str(exc))

    def recover(self) -> None:
        """At start: put back a value a dead agent left changed (never one a live one holds)."""
        if self._journal is None:
            return

        def put_back(key: str, original: int) -> bool:
            if not self._write(original):
                return False
            log.info("image_size.restored", to_bytes=original, left_by="a previous run")
            return True

        self._journal.recover(put_back)

    def _claim(self) -> int:
        """The value to put back: the journal's, if a dead agent left it changed meanwhile."""
        if self._journal is None:
            return self._read()
        return self._journal.claim(IMAGE_SIZE, self._read)

    def _read(self) -> int:
        return int(self._fs.path(IMAGE_SIZE).read_text(encoding="ascii").strip())

    def _write(self, value: int) -> bool:
        try:
            self._fs.path(IMAGE_SIZE).write_text(f"{value}\n", encoding="ascii")
        except OSError as exc:
            log.warning("image_size.restore_failed", error=str(exc))
            return False
        return True
