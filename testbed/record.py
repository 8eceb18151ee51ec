"""One arm run's outcome, kept beside its console logs and read back from them.

An 8 GiB run takes many minutes; with the host's times of each run (``observed.json``) next
to its two timed console logs, a report can be rebuilt and the runs of several invocations
combined (``python -m testbed.run --add`` / ``--report-only``) without booting anything again.
`archive` keeps those small files, the consoles gzipped, beside the report (``OUT/runs``), so
that the runs behind a committed table outlive the scratch folder and the machine.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.guest import Line
from testbed.measure import MeasureError, Measurement, Observed, measure

OBSERVED = "observed.json"
CONSOLES = ("hibernate", "resume")  # the two boots' names: NAME.console in the run folder


@dataclass(frozen=True, slots=True)
class RunInfo:
    """How a run came about: the exact command, when, and the plan's facts (accel, sizes)."""

    command: str = ""
    started_utc: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    # The host's 1-minute load average at the run's start and end: the machine is shared, and
    # a ratio between runs at load 8 and load 3 says as much about the host as about the arms.
    host_load: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ArmRun:
    observed: Observed
    measurement: Measurement | None
    error: str = ""
    info: RunInfo = field(default_factory=RunInfo)
    # The guest run itself failed (not only reading its figures): the consoles cannot be
    # measured again, so only this error is kept; a parser's error goes once the parser is fixed.
    run_failed: bool = False


def outcome(seen: Observed, info: RunInfo, error: str = "") -> ArmRun:
    """The run's figures, or why they could not be had."""
    if error:
        return ArmRun(seen, None, error, info, run_failed=True)
    try:
        return ArmRun(seen, measure(seen), "", info)
    except MeasureError as exc:
        return ArmRun(seen, None, str(exc), info)
    except (KeyError, ValueError) as exc:  # a garbled marker: the run is kept, not the figures
        return ArmRun(seen, None, f"unreadable marker field: {exc!r}", info)


def save(folder: Path, run: ArmRun) -> None:
    seen = run.observed
    facts = {
        "arm": seen.arm,
        "image_size": seen.image_size,
        "first_started": seen.first_started,
        "first_exited": seen.first_exited,
        "second_started": seen.second_started,
        "disk_bps": seen.disk_bps,
        "notice_at": seen.notice_at,
        "notice_s": seen.notice_s,
        "prediction_overhead_s": seen.prediction_overhead_s,
        "command": run.info.command,
        "started_utc": run.info.started_utc,
        "facts": run.info.facts,
        "host_load": list(run.info.host_load),
        "error": run.error if run.run_failed else "",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OBSERVED).write_text(json.dumps(facts, indent=2) + "\n")


def load(folder: Path) -> ArmRun:
    """Raises ValueError (naming the folder) when its facts file is unreadable or incomplete."""
    try:
        facts = json.loads((folder / OBSERVED).read_text())
        seen = Observed(
            arm=str(facts["arm"]),
            image_size=str(facts["image_size"]),
            first=read_console(folder / f"{CONSOLES[0]}.console"),
            first_started=float(facts["first_started"]),
            first_exited=float(facts["first_exited"]),
            second=read_console(folder / f"{CONSOLES[1]}.console"),
            second_started=float(facts["second_started"]),
            disk_bps=int(facts["disk_bps"]),
            notice_at=_optional(facts.get("notice_at")),
            notice_s=_optional(facts.get("notice_s")),
            prediction_overhead_s=float(facts.get("prediction_overhead_s", 0.0)),
        )
        info = RunInfo(
            str(facts["command"]),
            str(facts["started_utc"]),
            dict(facts["facts"]),
            tuple(float(x) for x in facts.get("host_load", ())),
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder}: not a recorded run ({exc})") from None
    return outcome(seen, info, str(facts.get("error") or ""))


def archive(scratch: Path, kept: Path) -> list[Path]:
    """Copy each recorded run under `scratch` that `kept` lacks: its facts and its consoles,
    gzipped (~30 KiB a run), never its disks. Returns the folders written."""
    written = []
    for folder in sorted(scratch.glob("*")):
        target = kept / folder.name
        if not (folder / OBSERVED).exists() or (target / OBSERVED).exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in CONSOLES:
            console = folder / f"{name}.console"
            if console.exists():
                with (
                    console.open("rb") as raw,
                    gzip.open(f"{target / name}.console.gz", "wb") as gz,
                ):
                    shutil.copyfileobj(raw, gz)
        shutil.copyfile(folder / OBSERVED, target / OBSERVED)  # last: it marks the run whole
        written.append(target)
    return written


def read_console(path: Path) -> list[Line]:
    """A console log as `testbed.guest.Console` writes it: ``<host time> <text>`` per line;
    ``NAME.console.gz`` beside it when only the archived copy is there."""
    packed = path.with_name(path.name + ".gz")
    if not path.exists() and not packed.exists():
        return []
    lines: list[Line] = []
    opener = open if path.exists() else gzip.open
    # "\n" only, untranslated: a console line may hold a "\r" in its text.
    with opener(path if path.exists() else packed, "rt", encoding="utf-8", newline="") as log:
        content = log.read()
    for raw in content.split("\n")[:-1]:
        stamp, _, text = raw.partition(" ")
        lines.append(Line(float(stamp), text, len(lines)))
    return lines


def recorded(folders: Sequence[Path], memory_mib: int | None = None) -> list[ArmRun]:
    """Every recorded run in `folders` (run folders or their parents), oldest first; with
    `memory_mib`, only the runs of that guest size. A run found twice under one name (scratch
    and archive) counts once, from the first folder."""
    found = []
    names: set[str] = set()
    for folder in folders:
        candidates = [folder] if (folder / OBSERVED).exists() else sorted(folder.glob("*"))
        fresh = [c for c in candidates if (c / OBSERVED).exists() and c.name not in names]
        names.update(c.name for c in fresh)
        found += [load(c) for c in fresh]
    if memory_mib is not None:
        found = [r for r in found if r.info.facts.get("memory_mib") == memory_mib]
    return sorted(found, key=lambda r: r.info.started_utc)


def _optional(value: object) -> float | None:
    return None if value is None else float(str(value))
