"""Hibernate this guest now; returns after resume. The agent's ``local_command`` and the
controller's trigger, so every arm enters hibernation the same way.

``--detach`` returns at once and hibernates from a child process, as ``systemctl hibernate``
does: the agent's command timeout then never spans the kernel's freeze-and-snapshot time.

Refuses to run unless the kernel was booted by the testbed (``testbed.arm=`` on its command
line): the host's kernel never is, so this can never hibernate the host.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.inguest.common import (
    AGENT_ARMS,
    meminfo,
    params,
    record,
    reserved_bytes,
    say,
    signal_program,
    write_sysfs,
)

POWER = Path("/sys/power")
SLEEP_HOOKS = Path("/usr/lib/systemd/system-sleep")
# What the kernel can shrink at hibernation; the rest of the saveable pages (reserved pages
# present in memory included) is its floor.
SHRINKABLE = ("SReclaimable", "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)")


def main(argv: list[str]) -> int:
    if "arm" not in params():
        print("hibernate-now: not a testbed guest (no testbed.arm= on the kernel command line)")
        return 2
    if "--detach" in argv:
        subprocess.Popen(
            [sys.executable, "-m", "testbed.inguest.hibernate_now"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return 0
    write_sysfs(POWER / "disk", "shutdown")
    record("trigger", f"{time.monotonic():.3f}")
    signal_program("monitor", signal.SIGUSR1)
    mem = meminfo()
    reserved = reserved_bytes()
    saveable = mem["MemTotal"] - mem["MemFree"] + reserved
    shrinkable = sum(mem[k] for k in SHRINKABLE)
    say(
        "trigger",
        image_size=(POWER / "image_size").read_text().strip(),
        saveable=saveable,
        floor=saveable - shrinkable,
        reserved=reserved,
        swap_cached=mem["SwapCached"],
        swap_used=mem["SwapTotal"] - mem["SwapFree"],
    )
    status = 0
    try:
        write_sysfs(POWER / "state", "disk")
    except OSError as exc:
        say("hibernate-failed", errno=exc.errno)
        status = 1
    else:
        say("resumed-kernel")
    signal_program("workload", signal.SIGUSR1)
    if status == 0 and params()["arm"] in AGENT_ARMS:
        run_sleep_hooks()
    return status


def run_sleep_hooks() -> None:
    """What systemd-sleep runs after a resume (spotguard's hook: the readahead, SIGUSR1),
    which the kernel path taken here skips. After the workload's wake-up, as on a machine,
    where processes thaw before systemd-sleep gets to its hooks."""
    for hook in sorted(SLEEP_HOOKS.glob("*")):
        try:
            done = subprocess.run(
                [str(hook), "post", "hibernate"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            say("sleep-hook", hook=hook.name, error=str(exc))
        else:
            say("sleep-hook", hook=hook.name, status=done.returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
