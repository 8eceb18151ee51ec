"""The RFC's workload: 60 % of memory anonymous, 25 % page cache, then wait out hibernation.

Every 1 MiB chunk is filled from a random pool at a chunk-specific offset and stamped with its
index, so the data is incompressible (the image is LZO-compressed in 128 KiB blocks) and every
page differs. The CRC of each chunk is kept; after resume the same pass re-touches the working
set and proves nothing was lost.
"""

from __future__ import annotations

import mmap
import os
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from testbed.inguest.common import meminfo, params, record, say

CHUNK = 1 << 20
POOL = 16 << 20
CACHE_FILE = Path("/var/tmp/testbed-cache.bin")


@dataclass(frozen=True, slots=True)
class Touch:
    seconds: float
    bad_chunks: int


class Data:
    """The random pool and the rule, shared by fill and check, for chunk N's bytes: an 8-byte
    index, then the pool from an offset that depends on N (one copy per chunk, no more)."""

    def __init__(self) -> None:
        self.pool = memoryview(os.urandom(POOL))

    def parts(self, index: int) -> tuple[bytes, memoryview]:
        start = (index * 7919 * 61) % (POOL - CHUNK)
        return index.to_bytes(8, "little"), self.pool[start + 8 : start + CHUNK]

    def crc(self, index: int) -> int:
        head, body = self.parts(index)
        return zlib.crc32(body, zlib.crc32(head))


def fill_anon(region: mmap.mmap, data: Data) -> list[int]:
    for index in range(len(region) // CHUNK):
        head, body = data.parts(index)
        region[index * CHUNK : index * CHUNK + 8] = head
        region[index * CHUNK + 8 : (index + 1) * CHUNK] = body
    return [data.crc(i) for i in range(len(region) // CHUNK)]


def fill_cache(path: Path, size: int, data: Data) -> list[int]:
    first = 1 << 30  # other chunk indices than the anonymous region's
    indices = range(first, first + size // CHUNK)
    with path.open("wb", buffering=0) as out:
        for index in indices:
            out.write(b"".join(data.parts(index)))
        os.fsync(out.fileno())
    return [data.crc(i) for i in indices]


def touch_anon(region: mmap.mmap, crcs: list[int]) -> Touch:
    start = time.monotonic()
    view = memoryview(region)
    bad = sum(zlib.crc32(view[i * CHUNK : (i + 1) * CHUNK]) != crc for i, crc in enumerate(crcs))
    view.release()
    return Touch(time.monotonic() - start, bad)


def touch_cache(path: Path, crcs: list[int]) -> Touch:
    start = time.monotonic()
    buffer = bytearray(CHUNK)
    bad = 0
    with path.open("rb", buffering=0) as source:
        for crc in crcs:
            got = source.readinto(buffer)
            bad += got != CHUNK or zlib.crc32(buffer) != crc
    return Touch(time.monotonic() - start, bad)


def report(event: str, anon: Touch, cache: Touch) -> None:
    say(
        event,
        seconds=f"{anon.seconds + cache.seconds:.3f}",
        anon_seconds=f"{anon.seconds:.3f}",
        cache_seconds=f"{cache.seconds:.3f}",
        anon_bad=anon.bad_chunks,
        cache_bad=cache.bad_chunks,
        ok=int(anon.bad_chunks == cache.bad_chunks == 0),
    )


def main() -> None:
    knobs = params()
    total = meminfo()["MemTotal"]
    anon_size = int(total * float(knobs.get("anon", "60")) / 100) // CHUNK * CHUNK
    cache_size = int(total * float(knobs.get("cache", "25")) / 100) // CHUNK * CHUNK
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    record("workload.pid", str(os.getpid()))
    start = time.monotonic()
    data = Data()
    region = mmap.mmap(
        -1, anon_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    )
    anon_crcs = fill_anon(region, data)
    cache_crcs = fill_cache(CACHE_FILE, cache_size, data)
    say("loaded", anon=anon_size, cache=cache_size, seconds=f"{time.monotonic() - start:.3f}")
    report("warm", touch_anon(region, anon_crcs), touch_cache(CACHE_FILE, cache_crcs))
    record("loaded", f"{time.monotonic():.3f}")
    signal.sigwait({signal.SIGUSR1})
    say("back")
    report("retouch", touch_anon(region, anon_crcs), touch_cache(CACHE_FILE, cache_crcs))
    say("done")


if __name__ == "__main__":
    main()
