"""Hibernate this guest now; returns after resume. The agent's ``local_command`` and the
controller's trigger, so every arm enters hibernation the same way.

Refuses to run unless the kernel was booted by the testbed (``testbed.arm=`` on its command
line): the host's kernel never is, so this can never hibernate the host.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from testbed.inguest.common import meminfo, params, record, say, signal_program

POWER = Path("/sys/power")


def main() -> int:
    if "arm" not in params():
        print("hibernate-now: not a testbed guest (no testbed.arm= on the kernel command line)")
        return 2
    (POWER / "disk").write_text("shutdown")
    record("trigger", f"{time.monotonic():.3f}")
    signal_program("monitor", signal.SIGUSR1)
    mem = meminfo()
    say(
        "trigger",
        image_size=(POWER / "image_size").read_text().strip(),
        saveable=mem["MemTotal"] - mem["MemFree"],
        swap_used=mem["SwapTotal"] - mem["SwapFree"],
    )
    status = 0
    try:
        (POWER / "state").write_text("disk")
    except OSError as exc:
        say("hibernate-failed", errno=exc.errno)
        status = 1
    else:
        say("resumed-kernel")
    signal_program("workload", signal.SIGUSR1)
    return status


if __name__ == "__main__":
    sys.exit(main())
