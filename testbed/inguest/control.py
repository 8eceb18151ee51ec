"""Drives one arm inside the guest: idle time, then the arm's preparation and the trigger.

vanilla: idle, hibernate. oneshot: the RFC's daemon, one write of the load cgroup's whole
usage to ``memory.reclaim`` once idle, then hibernate. spotguard: start the real agent and
leave the rest to it; the host sends the spot notice through the metadata simulator.
spotguard-hibernate: the agent runs, but the notice's action is ``hibernate``: EC2 starts the
hibernation at the notice with no lead time, so this program hibernates at the moment the host
posts it, and only what the agent reclaimed before counts.
"""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

from testbed.inguest import hibernate_now
from testbed.inguest.common import (
    AGENT_ARMS,
    CGROUP_ROOT,
    LOAD_CGROUP,
    RUN_DIR,
    params,
    recall,
    say,
    write_sysfs,
)

AGENT_UNIT = "testbed-agent.service"


def start_agent(knobs: dict[str, str]) -> None:
    """The agent reads its idle time from the environment, so one image serves every run."""
    env = (
        f"SPOTGUARD_IDLE_DURATION={knobs.get('agent_idle', '10s')}\n"
        f"SPOTGUARD_IDLE_CPU_IDLE_PERCENT={knobs.get('agent_cpu_idle', '95')}\n"
    )
    (RUN_DIR / "agent.env").write_text(env)
    subprocess.run(["systemctl", "start", "--no-block", AGENT_UNIT], check=True)


def wait_loaded() -> None:
    while recall("loaded") is None:
        time.sleep(0.5)


def reclaim_once() -> None:
    cgroup = CGROUP_ROOT / LOAD_CGROUP
    before = int((cgroup / "memory.current").read_text())
    say("reclaim-start", before=before)
    start = time.monotonic()
    status = 0
    try:
        write_sysfs(cgroup / "memory.reclaim", str(before))
    except OSError as exc:  # EAGAIN: less than asked was reclaimed, the usual outcome
        status = exc.errno or errno.EIO
    after = int((cgroup / "memory.current").read_text())
    say("reclaim-done", seconds=f"{time.monotonic() - start:.3f}", after=after, errno=status)


def main() -> int:
    knobs = params()
    arm = knobs.get("arm", "")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if knobs.get("image_size") == "0":
        write_sysfs(Path("/sys/power/image_size"), "0")
    if arm in AGENT_ARMS:
        start_agent(knobs)
    wait_loaded()
    idle = float(knobs.get("idle", "60"))
    say("idle-start", arm=arm, idle=idle)
    if arm == "spotguard":
        return 0
    deadline = time.monotonic() + idle
    if arm == "oneshot":
        time.sleep(float(knobs.get("oneshot_after", str(min(30.0, idle / 2)))))
        reclaim_once()
    time.sleep(max(0.0, deadline - time.monotonic()))
    return hibernate_now.main([])


if __name__ == "__main__":
    raise SystemExit(main())
