"""User hooks: executables in ``<hook_dir>/<kind>/``, run in name order with the event in env.

A hook is the user's code on the critical path to a deadline, so each one gets a timeout
(bounded by what is left of the caller's budget) and is killed with its whole process group
when it overstays. A failing hook is reported, never raised: the next step must still happen.

Hooks run as root, so a hook runs only when nobody but root can have put it there: the file
it resolves to and every folder from it up to the hook root are owned by root and writable
by nobody else, and it resolves inside the hook root (a symlink cannot lead elsewhere).
Anything else is skipped with the reason, as OpenSSH's StrictModes does for its key files.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from spotguard.clock import Clock, SystemClock

log = structlog.get_logger()

KINDS = ("pre-reclaim", "pre-hibernate", "post-resume", "on-notice", "graceful")
_OUTPUT_TAIL = 2000  # characters of a hook's output kept for the log
_ROOT_UID = 0
_GROUP_OR_OTHER_WRITE = 0o022


@dataclass(frozen=True, slots=True)
class HookResult:
    hook: str  # file name inside the kind's folder
    returncode: int | None  # None: it did not finish (timed out, could not start, no time left)
    timed_out: bool = False
    output: str = ""  # the tail of stdout and stderr together
    error: str = ""  # why it did not run to the end

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class HookRunner:
    def __init__(self, hook_dir: Path, timeout_s: float, clock: Clock | None = None) -> None:
        self._hook_dir = hook_dir
        self._timeout_s = timeout_s
        self._clock = clock or SystemClock()

    def run(
        self, kind: str, event_env: Mapping[str, str], budget_s: float | None = None
    ) -> list[HookResult]:
        """Run every hook of `kind` in turn, all together within `budget_s` (None: no bound)."""
        if kind not in KINDS:
            raise ValueError(f"unknown hook kind {kind!r} (known: {', '.join(KINDS)})")
        end = self._clock.monotonic() + (math.inf if budget_s is None else budget_s)
        env = {**os.environ, **event_env, "SPOTGUARD_HOOK": kind}
        results = []
        for path, unsafe in self.checked(kind):
            if unsafe:
                log.warning("hook.skipped", kind=kind, hook=path.name, reason=unsafe)
                results.append(HookResult(path.name, None, error=f"skipped: {unsafe}"))
                continue
            left = min(self._timeout_s, end - self._clock.monotonic())
            if left <= 0:
                log.warning("hook.skipped", kind=kind, hook=path.name, reason="budget spent")
                results.append(HookResult(path.name, None, error="skipped: the budget was spent"))
                continue
            results.append(_run_one(kind, path.name, path.resolve(), env, left))
        return results

    def checked(self, kind: str) -> list[tuple[Path, str]]:
        """The executables of `kind` in run order, each with why it must not run ("": it may)."""
        return [(path, unsafe_reason(self._hook_dir, path)) for path in self._hooks(kind)]

    def _hooks(self, kind: str) -> list[Path]:
        folder = self._hook_dir / kind
        try:
            entries = sorted(folder.iterdir())
        except OSError:  # a missing folder is the usual case: no hooks of this kind
            return []
        hooks = []
        for path in entries:
            if path.is_file() and os.access(path, os.X_OK):
                hooks.append(path)
            else:
                log.info("hook.not_executable", kind=kind, hook=path.name, path=str(path))
        return hooks


def unsafe_reason(hook_root: Path, hook: Path) -> str:
    """Why `hook` must not run as root ("" when it may): where it resolves to, and who could
    have written it or any folder on the way, the folder holding a symlink included."""
    try:
        root = hook_root.resolve(strict=True)
        target = hook.resolve(strict=True)
        holder = hook.parent.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # gone meanwhile, or a symlink loop
        return f"it cannot be resolved: {exc}"
    for place in (holder, target):
        if not place.is_relative_to(root):
            return f"{hook} resolves outside the hook folder {root}, to {place}"
    checked = [target, *_folders(holder, root), *_folders(target.parent, root)]
    for item in dict.fromkeys(checked):  # each once, the file first
        try:
            info = item.stat()
        except OSError as exc:
            return f"{item} cannot be checked: {exc}"
        if info.st_uid != _ROOT_UID:
            return f"{item} is owned by uid {info.st_uid}, not root"
        if info.st_mode & _GROUP_OR_OTHER_WRITE:
            mode = stat.S_IMODE(info.st_mode)
            return f"{item} is writable by its group or others (mode {mode:04o})"
    return ""


def _folders(folder: Path, root: Path) -> list[Path]:
    """`folder` and each one above it up to and including `root` (which holds them all)."""
    return [folder, *(p for p in folder.parents if p.is_relative_to(root))]


def _run_one(
    kind: str, name: str, path: Path, env: Mapping[str, str], timeout_s: float
) -> HookResult:
    """Run the checked file `path` (symlinks resolved: what was checked is what runs)."""
    # Output goes to a file, not a pipe: a grandchild that keeps the pipe open cannot hang us.
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                [str(path)],
                cwd=path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("hook.failed", kind=kind, hook=name, error=str(exc))
            return HookResult(name, None, error=f"could not start: {exc}")
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            returncode = None
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")[-_OUTPUT_TAIL:]
    if returncode is None:
        log.error("hook.timeout", kind=kind, hook=name, timeout_s=timeout_s, output=text)
        error = f"killed after {timeout_s:.1f} s"
        return HookResult(name, None, timed_out=True, output=text, error=error)
    if returncode != 0:
        log.error("hook.failed", kind=kind, hook=name, returncode=returncode, output=text)
        return HookResult(name, returncode, output=text, error=f"exited {returncode}")
    log.info("hook.ran", kind=kind, hook=name)
    return HookResult(name, returncode, output=text)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended between the timeout and the kill
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
