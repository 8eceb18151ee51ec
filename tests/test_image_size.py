"""/sys/power/image_size on a fake tree: lowered only downwards, always put back once,
the original journalled so a crash cannot leave it lowered."""

from __future__ import annotations

import os
from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.image_size import IMAGE_SIZE, JOURNAL_NAME, ImageSizeControl
from spotguard.reclaim.journal import OriginalsJournal
from tests.test_owner import pretend_running


def tree(tmp_path: Path, value: str | None) -> HostFS:
    fs = HostFS(tmp_path)
    if value is not None:
        fs.path(IMAGE_SIZE).parent.mkdir(parents=True)
        fs.path(IMAGE_SIZE).write_text(value)
    return fs


def test_lower_then_restore(tmp_path: Path) -> None:
    fs = tree(tmp_path, "858993459\n")
    control = ImageSizeControl(fs)
    control.lower(300 << 20)
    assert fs.read_text(IMAGE_SIZE) == f"{300 << 20}\n"
    control.lower(200 << 20)  # a second lowering keeps the first original
    control.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    control.restore()  # nothing saved any more: no write
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"


def test_never_raised(tmp_path: Path) -> None:
    fs = tree(tmp_path, "100\n")
    ImageSizeControl(fs).lower(300 << 20)
    assert fs.read_text(IMAGE_SIZE) == "100\n"


def test_missing_or_garbled_file_is_left_alone(tmp_path: Path) -> None:
    ImageSizeControl(tree(tmp_path / "none", None)).lower(1 << 20)
    assert not (tmp_path / "none" / "sys").exists()
    fs = tree(tmp_path / "odd", "lots\n")
    control = ImageSizeControl(fs)
    control.lower(1 << 20)
    control.restore()
    assert fs.read_text(IMAGE_SIZE) == "lots\n"


def test_the_original_survives_a_crash_and_a_later_lowering(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", "858993459\n")
    state = tmp_path / "state"
    crashed = ImageSizeControl(fs, state)
    crashed.lower(300 << 20)  # then the agent dies before the resume
    assert OriginalsJournal(state / JOURNAL_NAME).pending()[IMAGE_SIZE].original == 858993459
    # in this fake tree no /proc says the owner runs: the next start puts the value back
    ImageSizeControl(fs, state).recover()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    assert OriginalsJournal(state / JOURNAL_NAME).pending() == {}
    # a journalled original wins over a value some other process lowered meanwhile
    ImageSizeControl(fs, state).lower(300 << 20)
    fs.path(IMAGE_SIZE).write_text(f"{400 << 20}\n")
    second = ImageSizeControl(fs, state)
    second.lower(200 << 20)
    second.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"


def test_a_live_owners_value_is_left_alone_and_restore_clears_the_journal(
    tmp_path: Path,
) -> None:
    fs = tree(tmp_path / "root", "858993459\n")
    pretend_running(fs, os.getpid(), start=4321, boot="")
    state = tmp_path / "state"
    running = ImageSizeControl(fs, state)
    running.lower(300 << 20)
    ImageSizeControl(fs, state).recover()  # e.g. `spotguard hibernate` while the agent runs
    assert fs.read_text(IMAGE_SIZE) == f"{300 << 20}\n"
    running.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    assert not (state / JOURNAL_NAME).exists()


def test_an_unwritable_state_dir_means_no_lowering(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", "858993459\n")
    (tmp_path / "file").write_text("")
    ImageSizeControl(fs, tmp_path / "file" / "state").lower(300 << 20)
    assert fs.read_text(IMAGE_SIZE) == "858993459\n"
