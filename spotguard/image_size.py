"""/sys/power/image_size, lowered to the planned image just before hibernating.

Once reclaim has pushed out what it could, what is left above the kernel's floor is mostly
clean (swap cache, a little page cache). With image_size above it, the kernel copies it all
into the image; with image_size at the planned size, it drops those pages cheaply in the
hibernation window. The old value comes back after the resume (or a refused hibernation).
"""

from __future__ import annotations

import structlog

from spotguard.hostfs import HostFS

IMAGE_SIZE = "/sys/power/image_size"
log = structlog.get_logger()


class ImageSizeControl:
    def __init__(self, fs: HostFS) -> None:
        self._fs = fs
        self._saved: str | None = None

    def lower(self, target_bytes: int) -> None:
        """Never raises: a kernel without the file (or a read-only one) hibernates as it is."""
        path = self._fs.path(IMAGE_SIZE)
        try:
            current = path.read_text(encoding="ascii").strip()
            if int(current) <= target_bytes:
                return
            path.write_text(f"{target_bytes}\n", encoding="ascii")
        except (OSError, ValueError) as exc:
            log.warning("image_size.unchanged", error=str(exc))
            return
        if self._saved is None:
            self._saved = current
        log.info("image_size.lowered", to_bytes=target_bytes, was_bytes=int(current))

    def restore(self) -> None:
        if self._saved is None:
            return
        try:
            self._fs.path(IMAGE_SIZE).write_text(f"{self._saved}\n", encoding="ascii")
        except OSError as exc:
            log.warning("image_size.restore_failed", error=str(exc))
            return
        log.info("image_size.restored", to_bytes=int(self._saved))
        self._saved = None
