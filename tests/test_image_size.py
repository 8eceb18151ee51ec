"""/sys/power/image_size on a fake tree: set (lowered or raised) for one hibernation, always
put back once, the original journalled so a crash cannot leave it changed."""

from __future__ import annotations

import os
from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.image_size import IMAGE_SIZE, JOURNAL_NAME, ImageSizeControl
from spotguard.reclaim.journal import OriginalsJournal
from tests.test_owner import dead_owner
from tests.test_reclaim_journal import leave


def tree(tmp_path: Path, value: str | None) -> HostFS:
    fs = HostFS(tmp_path)
    if value is not None:
        fs.path(IMAGE_SIZE).parent.mkdir(parents=True)
        fs.path(IMAGE_SIZE).write_text(value)
    return fs


def test_lower_then_restore(tmp_path: Path) -> None:
    fs = tree(tmp_path, "858993459\n")
    control = ImageSizeControl(fs)
    control.set_to(300 << 20)
    assert fs.read_text(IMAGE_SIZE) == f"{300 << 20}\n"
    control.set_to(200 << 20)  # a second lowering keeps the first original
    control.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    control.restore()  # nothing saved any more: no write
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"


def test_raised_then_restored(tmp_path: Path) -> None:
    fs = tree(tmp_path, "0\n")  # an operator's "smallest image"
    control = ImageSizeControl(fs)
    control.set_to(600 << 20)
    assert fs.read_text(IMAGE_SIZE) == f"{600 << 20}\n"
    control.restore()
    assert fs.read_text(IMAGE_SIZE) == "0\n"


def test_the_value_already_there_is_not_written(tmp_path: Path) -> None:
    fs = tree(tmp_path, "100\n")
    control = ImageSizeControl(fs)
    control.set_to(100)
    control.restore()  # nothing was saved: nothing to put back
    assert fs.read_text(IMAGE_SIZE) == "100\n"


def test_missing_or_garbled_file_is_left_alone(tmp_path: Path) -> None:
    ImageSizeControl(tree(tmp_path / "none", None)).set_to(1 << 20)
    assert not (tmp_path / "none" / "sys").exists()
    fs = tree(tmp_path / "odd", "lots\n")
    control = ImageSizeControl(fs)
    control.set_to(1 << 20)
    control.restore()
    assert fs.read_text(IMAGE_SIZE) == "lots\n"


def test_a_value_a_dead_agent_left_lowered_goes_back_at_the_next_start(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", f"{300 << 20}\n")
    state = tmp_path / "state"
    leave(state / JOURNAL_NAME, {IMAGE_SIZE: (858993459, [dead_owner()])})
    ImageSizeControl(fs, state).recover()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    assert OriginalsJournal(state / JOURNAL_NAME).pending() == {}


def test_a_journalled_original_wins_over_the_live_lowered_value(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", f"{400 << 20}\n")
    state = tmp_path / "state"
    leave(state / JOURNAL_NAME, {IMAGE_SIZE: (858993459, [dead_owner()])})
    control = ImageSizeControl(fs, state)
    control.set_to(200 << 20)  # before any recover: the 400 MiB seen is someone's lowering
    assert OriginalsJournal(state / JOURNAL_NAME).pending()[IMAGE_SIZE].original == 858993459
    control.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    assert not (state / JOURNAL_NAME).exists()


def test_a_live_owners_value_is_left_alone(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", "858993459\n")
    state = tmp_path / "state"
    running = ImageSizeControl(fs, state)
    running.set_to(300 << 20)
    entry = OriginalsJournal(state / JOURNAL_NAME).pending()[IMAGE_SIZE]
    assert [o.pid for o in entry.owners] == [os.getpid()]
    ImageSizeControl(fs, state).recover()  # e.g. `spotguard hibernate` while the agent runs
    assert fs.read_text(IMAGE_SIZE) == f"{300 << 20}\n"
    running.restore()
    assert fs.read_text(IMAGE_SIZE).strip() == "858993459"
    assert not (state / JOURNAL_NAME).exists()


def test_an_unwritable_state_dir_means_no_lowering(tmp_path: Path) -> None:
    fs = tree(tmp_path / "root", "858993459\n")
    (tmp_path / "file").write_text("")
    ImageSizeControl(fs, tmp_path / "file" / "state").set_to(300 << 20)
    assert fs.read_text(IMAGE_SIZE) == "858993459\n"
