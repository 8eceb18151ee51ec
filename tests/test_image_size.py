"""/sys/power/image_size on a fake tree: lowered only downwards, always put back once."""

from __future__ import annotations

from pathlib import Path

from spotguard.hostfs import HostFS
from spotguard.image_size import IMAGE_SIZE, ImageSizeControl


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
