"""Interrupting a write for real: a worker thread blocked in write(2), pthread_kill, EINTR."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotguard.reclaim.deadline import (
    DEFAULT_SIGNAL,
    BoundedWriter,
    WriteInterrupted,
    install_interrupt_handler,
    interruptible,
)
from spotguard.reclaim.writer import LibcWriter


@pytest.fixture(autouse=True)
def handler() -> Iterator[None]:
    previous = signal.getsignal(DEFAULT_SIGNAL)
    assert install_interrupt_handler()
    yield
    signal.signal(DEFAULT_SIGNAL, previous)


@pytest.fixture
def full_fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO whose buffer is full: the next write(2) to it blocks in the kernel until a signal."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"x" * 65536)
    except BlockingIOError:
        pass
    yield path
    os.close(filler)
    os.close(reader)


def forever() -> tuple[float, str]:
    return 3600.0, "timeout"


def test_deadline_interrupts_a_write_blocked_in_the_kernel(full_fifo: Path) -> None:
    writer = BoundedWriter(LibcWriter(), threading.Event(), lambda: (0.1, "budget"))
    with pytest.raises(WriteInterrupted) as caught:
        writer.write(full_fifo, "1")
    assert caught.value.reason == "budget"
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EINTR


def test_cancel_from_another_thread_interrupts_the_write(full_fifo: Path) -> None:
    cancel = threading.Event()
    writer = BoundedWriter(LibcWriter(), cancel, forever)
    threading.Timer(0.1, cancel.set).start()
    with pytest.raises(WriteInterrupted) as caught:
        writer.write(full_fifo, "1")
    assert caught.value.reason == "cancelled"


def test_already_cancelled_or_out_of_time_never_starts(tmp_path: Path) -> None:
    target = tmp_path / "memory.reclaim"
    target.write_text("")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WriteInterrupted, match="cancelled"):
        BoundedWriter(LibcWriter(), cancel, forever).write(target, "1")
    with pytest.raises(WriteInterrupted, match="budget"):
        BoundedWriter(LibcWriter(), threading.Event(), lambda: (0.0, "budget")).write(target, "1")
    assert target.read_text() == ""


def test_a_write_that_finishes_in_time_is_written(tmp_path: Path) -> None:
    target = tmp_path / "memory.limit_in_bytes"
    target.write_text("9223372036854771712\n")
    BoundedWriter(LibcWriter(), threading.Event(), forever).write(target, "4096")
    assert target.read_text() == "4096"


def test_kernel_errors_reach_the_caller_with_their_errno(tmp_path: Path) -> None:
    writer = BoundedWriter(LibcWriter(), threading.Event(), forever)
    with pytest.raises(FileNotFoundError):
        writer.write(tmp_path / "gone" / "memory.reclaim", "1")
    read_only = tmp_path / "dir"
    read_only.mkdir()
    with pytest.raises(IsADirectoryError):
        writer.write(read_only, "1")


def test_without_a_handler_the_signal_is_never_sent(full_fifo: Path) -> None:
    """SIGUSR2's default action kills the process: with no handler we wait instead."""
    signal.signal(DEFAULT_SIGNAL, signal.SIG_DFL)
    assert not interruptible(DEFAULT_SIGNAL)
    drain = threading.Timer(0.2, lambda: _drain(full_fifo))
    drain.start()
    BoundedWriter(LibcWriter(), threading.Event(), lambda: (0.05, "budget")).write(full_fifo, "1")
    drain.join()


def _drain(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
