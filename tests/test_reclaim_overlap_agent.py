"""The real `spotguard run` process and a `spotguard reclaim` process on one real v1 cgroup,
sharing the state dir, then a stop notice: the issue's row, end to end.

The host tree is a root prefix: /proc/meminfo, PSI and /sys/power come from a simulated host
(swap enough for the image, quiet PSI), the memory cgroups are the real v1 hierarchy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spotguard.hostlock import HostLock
from spotguard.reclaim.journal import LimitJournal
from spotguard.simhost import SimHost
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from tests.fixtures_aws import MotoServer
from tests.test_reclaim_support import V1_MEMORY, Sandbox, sandbox_or_skip
from tests.test_trigger import launch, recorded_stops

pytestmark = pytest.mark.cgroup
ORIGINAL = 8 << 30
REPO = Path(__file__).resolve().parent.parent
SPOTGUARD = (sys.executable, "-m", "spotguard")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandbox_or_skip(tmp_path) as box:
        box.group("work")
        (box.root / "work" / "memory.limit_in_bytes").write_text(str(ORIGINAL))
        yield box


class Log:
    """The agent's JSON log lines (stderr), collected as they come."""

    def __init__(self, stream: Iterator[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait_for(self, matches: Callable[[dict[str, object]], bool], limit_s: float = 30) -> None:
        end = time.monotonic() + limit_s
        while not any(matches(e) for e in self.events()):
            assert time.monotonic() < end, "".join(self.lines[-20:])
            time.sleep(0.05)


def write_config(path: Path, host: Path, state: Path, imds_url: str, cgroup_root: str) -> None:
    path.write_text(
        f"""
[imds]
url = "{imds_url}"
connect_timeout = 0.3
read_timeout = 0.5
attempts = 1
[agent]
root = "{host}"
state_file = "{state / "state.json"}"
hook_dir = "{state / "hooks"}"
poll_interval = 0.2
[idle]
duration = "1h"
[reclaim]
backend = "v1"
cgroup_root = "{cgroup_root}"
idle_psi = 100.0
emergency_psi = 100.0
step = "8M"
[hibernate]
mode = "ec2"
region = "us-east-1"
""",
        encoding="utf-8",
    )


def test_agent_and_spotguard_reclaim_share_the_host_then_one_hibernation(
    sandbox: Sandbox, tmp_path: Path, moto_server: MotoServer
) -> None:
    host = SimHost(tmp_path / "host", cgroups={})
    (host.root / "sys/fs/cgroup/memory").symlink_to(V1_MEMORY)
    state = tmp_path / "state"
    instance_id = launch(moto_server.ec2(), HibernationOptions={"Configured": True})
    moto_server.start_recording()
    sandbox.workload("work", file_mib=64)
    with MetadataSimulator(instance=SimulatedInstance(instance_id=instance_id)) as imds:
        config = tmp_path / "spotguard.toml"
        cgroup_root = f"/sys/fs/cgroup/memory/{sandbox.root.name}"
        write_config(config, host.root, state, imds.url, cgroup_root)
        env = {**os.environ, "SPOTGUARD_CONFIG": str(config)}
        agent = subprocess.Popen(
            [*SPOTGUARD, "run"],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert agent.stderr is not None
        log = Log(agent.stderr)
        try:
            log.wait_for(lambda e: e["event"] == "agent.armed")
            # a third party holds the host, so the agent and the CLI both queue for it
            hold = HostLock(state)
            assert hold.try_acquire("test-hold", time.time())
            cli = subprocess.Popen(
                [*SPOTGUARD, "reclaim", "--wait", "--cgroup", f"{cgroup_root}/work"],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert cli.stderr is not None
            assert "waiting: another reclaim holds" in cli.stderr.readline()
            imds.set_rebalance()
            log.wait_for(lambda e: e["event"] == "reclaim.lock_busy")
            hold.release()  # now the agent's deep reclaim and the CLI race for the host
            log.wait_for(lambda e: e["event"] == "reclaim.run" and e["intensity"] == "deep")
            _, err = cli.communicate(timeout=60)
            assert cli.returncode == 0, err
            assert int((sandbox.root / "work" / "memory.limit_in_bytes").read_text()) == ORIGINAL
            assert LimitJournal(state).pending() == {}
            imds.set_notice("stop", in_seconds=120)
            log.wait_for(lambda e: e["event"] == "hibernate.issued")
            time.sleep(1.0)  # more polls of the same notice must not issue again
        finally:
            agent.terminate()
            agent.wait(15)
    events = log.events()
    assert agent.returncode == 0, "".join(log.lines[-20:])
    assert not any("Traceback" in line for line in log.lines)
    assert [e["policy"] for e in events if e["event"] == "reclaim.lock_busy"] == ["wait"]
    deep = [e for e in events if e["event"] == "reclaim.run" and e["intensity"] == "deep"]
    assert [e["stop_reason"] for e in deep] == ["complete"]
    stops = recorded_stops(moto_server)
    assert [(s["InstanceId.1"], s.get("DryRun")) for s in stops] == [([instance_id], ["false"])]
    assert int((sandbox.root / "work" / "memory.limit_in_bytes").read_text()) == ORIGINAL
    assert LimitJournal(state).pending() == {}
