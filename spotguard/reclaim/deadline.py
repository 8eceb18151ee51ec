"""Every reclaim write has a deadline and can be cancelled.

The kernel stops a reclaim write when the writing thread has a signal pending (the RFC: "memory
reclaim can be interrupted sending a signal to the process that is writing"). The write runs in
a worker thread; on deadline or cancel we pthread_kill it with a signal whose handler does
nothing, so its syscall returns EINTR. We keep signalling until it returns: a signal that lands
just before the syscall starts would otherwise be lost.
"""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from spotguard.reclaim.writer import FileWriter

log = structlog.get_logger()

DEFAULT_SIGNAL = signal.SIGUSR2
_POLL_S = 0.02  # how often cancel is checked and a stuck write re-signalled

TimeLeft = Callable[[], tuple[float, str]]  # (seconds this write may take, reason when it ends)


class WriteInterrupted(Exception):
    """We interrupted the write: `reason` is "cancelled" or the TimeLeft reason that ran out."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"reclaim write interrupted: {reason}")
        self.reason = reason


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The signal's only job is to make the worker's syscall return EINTR."""


def install_interrupt_handler(signum: int = DEFAULT_SIGNAL) -> bool:
    """Install the no-op handler (main thread only). Returns whether writes are interruptible."""
    if threading.current_thread() is threading.main_thread() and not interruptible(signum):
        signal.signal(signum, _ignore)
    return interruptible(signum)


def interruptible(signum: int) -> bool:
    """Only a caught signal interrupts a syscall; the default action of SIGUSR2 kills us."""
    return callable(signal.getsignal(signum))


def can_interrupt(signum: int) -> bool:
    """Writes are, or will be once the engine is built (in the main thread), interruptible."""
    return interruptible(signum) or threading.current_thread() is threading.main_thread()


class BoundedWriter:
    """A FileWriter whose writes end at `time_left()` or when `cancel` is set."""

    def __init__(
        self,
        inner: FileWriter,
        cancel: threading.Event,
        time_left: TimeLeft,
        signum: int = DEFAULT_SIGNAL,
    ) -> None:
        self._inner = inner
        self._cancel = cancel
        self._time_left = time_left
        self._signum = signum

    def write(self, path: Path, data: str) -> None:
        seconds, reason = self._time_left()
        if self._cancel.is_set():
            raise WriteInterrupted("cancelled")
        if seconds <= 0:
            raise WriteInterrupted(reason)
        ends = time.monotonic() + seconds  # real time: this bounds a real syscall
        call = _Call(self._inner, path, data)
        while not call.done.wait(min(_POLL_S, max(ends - time.monotonic(), 0.0))):
            if self._cancel.is_set():
                call.interrupt("cancelled", self._signum)
                return
            if time.monotonic() >= ends:
                call.interrupt(reason, self._signum)
                return
        call.result()


class _Call:
    """One write in its own thread. The lock keeps us from signalling a thread that has exited."""

    def __init__(self, inner: FileWriter, path: Path, data: str) -> None:
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._path = path
        self._thread = threading.Thread(
            target=self._run, args=(inner, path, data), name="spotguard-reclaim-write", daemon=True
        )
        self._thread.start()

    def _run(self, inner: FileWriter, path: Path, data: str) -> None:
        try:
            inner.write(path, data)
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc
        finally:
            with self._lock:
                self.done.set()

    def interrupt(self, reason: str, signum: int) -> None:
        if not interruptible(signum):
            log.warning("reclaim.uninterruptible", path=str(self._path), signal=signum)
            self.done.wait()
            self.result()
            return
        while not self.done.is_set():
            with self._lock:
                if not self.done.is_set() and self._thread.ident is not None:
                    signal.pthread_kill(self._thread.ident, signum)
            self.done.wait(_POLL_S)
        error = self._error
        if isinstance(error, OSError) and error.errno == errno.EINTR:
            raise WriteInterrupted(reason) from error
        self.result()

    def result(self) -> None:
        if self._error is not None:
            raise self._error
