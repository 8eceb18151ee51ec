"""The whole agent against real parts: the metadata simulator and a moto server on 127.0.0.1,
and a simulated host tree whose 'kernel' reclaims when the engine writes memory.reclaim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from spotguard import agent as agent_module
from spotguard.agent import Agent, ReclaimWorker
from spotguard.assemble import build_agent
from spotguard.clock import Clock, FakeClock, SystemClock
from spotguard.config import Config, from_mapping
from spotguard.hostfs import HostFS
from spotguard.metrics import MetricsServer
from spotguard.planner import Phase, Resumed
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult
from spotguard.simhost import GIB, SimCgroup, SimHost
from spotguard.simulator import MetadataSimulator, SimulatedInstance
from tests.fixtures_agent import REPO, Receiver, hook, stop_calls
from tests.fixtures_aws import MotoServer


def agent_config(tmp_path: Path, imds_url: str, **sections: dict[str, object]) -> Config:
    raw: dict[str, dict[str, object]] = {
        "imds": {"url": imds_url, "connect_timeout": 0.3, "read_timeout": 0.5, "attempts": 1},
        "agent": {
            "state_file": str(tmp_path / "state" / "state.json"),
            "hook_dir": str(tmp_path / "hooks"),
            "poll_interval": 0.2,
            "unhealthy_after": 3,
        },
        "idle": {"duration": "1h"},
        "reclaim": {"backend": "v2", "background": ["batch.slice"]},
        "hibernate": {"mode": "ec2", "region": "us-east-1"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return from_mapping(raw, env={})


def until(condition: Callable[[], bool], agent: Agent, limit_s: float = 20.0) -> None:
    """Tick the agent until `condition` holds; the reclaim worker is a real thread."""
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, f"gave up waiting; phase {agent.state.phase}"
        agent.tick()
        time.sleep(0.05)


@pytest.fixture
def busy_host(tmp_path: Path) -> Iterator[SimHost]:
    """The RFC's VM: 85 % in use, so the image is big until reclaim shrinks it."""
    host = SimHost(tmp_path / "host")
    yield host.start()
    host.stop()


@pytest.fixture
def quiet_host(tmp_path: Path) -> Iterator[SimHost]:
    """A host with little in memory: its image is small from the start."""
    small = {"batch.slice": SimCgroup(64 << 20, 64 << 20)}
    host = SimHost(tmp_path / "host", cgroups=small)
    yield host.start()
    host.stop()


def make_agent(
    tmp_path: Path,
    imds: MetadataSimulator,
    host: SimHost,
    clock: Clock | None = None,
    **sections: Any,
) -> Agent:
    config = agent_config(tmp_path, imds.url, **sections)
    return build_agent(config, clock or SystemClock(), fs=HostFS(host.root), kernel=host)


def served(instance_id: str, **options: Any) -> MetadataSimulator:
    return MetadataSimulator(instance=SimulatedInstance(instance_id=instance_id), **options)


class TestStopNotice:
    def test_one_hibernating_stop_after_reclaim(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, busy_host: SimHost
    ) -> None:
        notice_hooks = hook(tmp_path, "on-notice")
        pre_hibernate = hook(tmp_path, "pre-hibernate")
        with served(instance_id) as imds:
            agent = make_agent(tmp_path, imds, busy_host)
            until(lambda: agent.facts is not None and agent.estimate is not None, agent)
            assert agent.facts is not None
            assert agent.facts.instance_id == instance_id
            assert agent.estimate is not None
            big = agent.estimate.expected_bytes
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            for _ in range(5):
                agent.tick()
            agent.shutdown()
        calls = stop_calls(moto_server)
        assert len(calls) == 1
        assert calls[0]["InstanceId.1"] == [instance_id]
        assert calls[0]["Hibernate"] == ["true"]
        assert agent.last_reclaim is not None
        assert agent.last_reclaim.reclaimed_bytes > 0
        assert agent.estimate is not None
        assert agent.estimate.expected_bytes < big
        assert "stop" in notice_hooks.read_text()
        assert pre_hibernate.read_text().split() == ["pre-hibernate", "spot-interruption", "stop"]
        state = json.loads(Path(agent.parts.state_file.path).read_text())
        assert state["phase"] == "hibernating"
        assert state["issued_for"] == agent.state.notice_id
        assert state["issue"] == "issued"
        assert state["handled_notices"] == []

    def test_no_stop_when_hibernation_is_not_configured(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        graceful = hook(tmp_path, "graceful")
        with served(instance_id, hibernation_configured=False) as imds:
            agent = make_agent(tmp_path, imds, quiet_host)
            imds.set_notice("terminate", in_seconds=120)
            until(lambda: agent.state.phase is Phase.GRACEFUL, agent)
            agent.shutdown()
        assert stop_calls(moto_server) == []
        assert "not configured" in agent.state.reason
        assert graceful.read_text().split() == ["graceful", "spot-interruption", "terminate"]

    def test_refused_stop_ends_graceful(
        self, tmp_path: Path, moto_server: MotoServer, quiet_host: SimHost
    ) -> None:
        with served("i-00000000000000000") as imds:  # moto knows no such instance
            agent = make_agent(tmp_path, imds, quiet_host)
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.GRACEFUL, agent)
            agent.shutdown()
        assert "refused" in agent.state.reason

    def test_hibernate_notice_issues_nothing(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        pre_hibernate = hook(tmp_path, "pre-hibernate")
        with served(instance_id) as imds:
            agent = make_agent(tmp_path, imds, quiet_host)
            imds.set_notice("hibernate", in_seconds=0)
            until(lambda: agent.state.phase is Phase.EC2_HIBERNATING, agent)
            agent.shutdown()
        assert stop_calls(moto_server) == []
        assert "hibernate" in pre_hibernate.read_text()


class TestResume:
    def test_resume_runs_hooks_and_arms_again(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        clock = FakeClock(wall=time.time(), monotonic=time.monotonic())
        post_resume = hook(tmp_path, "post-resume")
        with served(instance_id, clock=clock) as imds:
            agent = make_agent(tmp_path, imds, quiet_host, clock=clock)
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            image_size = quiet_host.root / "sys/power/image_size"
            imds.clear_notice()  # EC2 clears it once the instance is back
            clock.hibernate(3600)
            decisions = agent.tick()
            assert any(isinstance(d, Resumed) for d in decisions)
            assert agent.state.phase is Phase.ARMED
            state = json.loads(Path(agent.parts.state_file.path).read_text())
            assert len(state["handled_notices"]) == 1
            assert state["issued_for"] is None
            assert int(image_size.read_text()) == quiet_host.ram * 2 // 5  # as before, or put back
            imds.set_notice("stop", in_seconds=120)  # armed again: a second notice counts
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            agent.shutdown()
        assert len(stop_calls(moto_server)) == 2
        assert post_resume.read_text().startswith("post-resume")

    def test_slow_ticks_and_a_bare_sigusr1_are_not_a_resume(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        clock = FakeClock(wall=time.time(), monotonic=time.monotonic())
        with served(instance_id, clock=clock) as imds:
            agent = make_agent(tmp_path, imds, quiet_host, clock=clock)
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            clock.advance(12.6)  # a tick held up 12.6 s: both clocks moved, nothing slept
            assert not any(isinstance(d, Resumed) for d in agent.tick())
            agent.resume_flag.set()  # the sleep hook's signal, with no sleep behind it
            assert not any(isinstance(d, Resumed) for d in agent.tick())
            assert agent.state.phase is Phase.HIBERNATING
            agent.shutdown()
        assert len(stop_calls(moto_server)) == 1


class _Failing:
    """A hook runner, webhook and state file that fail every time they are used."""

    path = Path("/nonexistent/state.json")

    def run(self, kind: str, event_env: object, budget_s: float | None = None) -> list[object]:
        raise RuntimeError(f"hook runner broke on {kind}")

    def send(self, payload: object, deadline: float | None) -> bool:
        raise RuntimeError("webhook broke")

    def write(self, state: object) -> None:
        raise OSError(28, "No space left on device")

    def read(self) -> None:
        return None


class TestDecisionsSurviveTheirActions:
    def test_broken_hooks_webhook_and_state_file_lose_no_hibernation(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        with served(instance_id) as imds:
            agent = make_agent(tmp_path, imds, quiet_host)
            broken = _Failing()
            agent.parts.hooks = broken
            agent.parts.webhook = broken
            agent.parts.state_file = broken  # type: ignore[assignment]
            until(lambda: agent.facts is not None, agent)
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            for _ in range(5):
                agent.tick()
            agent.shutdown()
        assert len(stop_calls(moto_server)) == 1

    def test_times_past_what_datetime_holds_are_still_reported(self) -> None:
        year_10000 = 253402304399.0  # 9999-12-31T23:59:59-01:00
        assert agent_module._iso(year_10000) == "@253402304399"
        assert agent_module._iso(float("inf")) == "@inf"
        assert agent_module._iso(1_800_000_000.0) == "2027-01-15T08:00:00Z"


class TestFaults:
    def test_metadata_outage_is_unhealthy_but_survived(
        self, tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
    ) -> None:
        with served(instance_id) as imds:
            agent = make_agent(tmp_path, imds, quiet_host)
            server = MetricsServer(agent.parts.metrics, agent.healthy, "127.0.0.1", 0).start()
            health = f"http://127.0.0.1:{server.port}/healthz"
            try:
                until(lambda: agent.facts is not None, agent)
                assert requests.get(health, timeout=2).status_code == 200
                imds.set_fault("error_503")
                until(lambda: not agent.healthy()[0], agent)
                answer = requests.get(health, timeout=2)
                assert answer.status_code == 503
                assert "503" in answer.text or "unavailable" in answer.text.lower()
                imds.set_fault("garbage", count=4)
                agent.tick()  # malformed answers are logged, not fatal
                imds.clear_faults()
                until(lambda: agent.healthy()[0], agent)
                assert requests.get(health, timeout=2).status_code == 200
                metrics = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2).text
                assert 'spotguard_phase{phase="armed"} 1.0' in metrics
                imds.set_notice("stop", in_seconds=120)
                until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            finally:
                server.stop()
                agent.shutdown()
        assert len(stop_calls(moto_server)) == 1


def test_webhook_hears_notice_and_hibernation(
    tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
) -> None:
    Receiver.got = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with served(instance_id) as imds:
            agent = make_agent(tmp_path, imds, quiet_host, agent={"webhook_url": url})
            until(lambda: agent.facts is not None, agent)
            imds.set_notice("stop", in_seconds=120)
            until(lambda: agent.state.phase is Phase.HIBERNATING, agent)
            agent.shutdown()  # waits for the background sends
    finally:
        receiver.shutdown()
    assert [m["what"] for m in Receiver.got] == ["notice", "hibernating"]  # one lane, in order
    assert {m["instance_id"] for m in Receiver.got} == {instance_id}
    assert Receiver.got[1]["event"]["action"] == "stop"


def test_an_agent_without_a_webhook_never_loads_requests(tmp_path: Path) -> None:
    """requests is about 4.5 MiB of an idle agent's RSS (goal <= 40 MB): loaded only for a
    webhook. A fresh interpreter, since this one has it loaded already."""
    code = (
        "import sys\n"
        "from spotguard.assemble import build_agent\n"
        "from spotguard.config import from_mapping\n"
        "for dry in (False, True):\n"
        f"    settings = {{'agent': {{'state_file': '{tmp_path}/s.json'}},"
        " 'imds': {'url': 'http://127.0.0.1:9'}}\n"
        "    build_agent(from_mapping(settings, {}), dry_run=dry)\n"
        "print('requests' in sys.modules)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.splitlines()[-1] == "False"  # after the agent's own log lines


def test_spotguard_run_daemon(tmp_path: Path, moto_server: MotoServer, instance_id: str) -> None:
    """`spotguard run` as a process: one StopInstances, a readable status, a clean SIGTERM."""
    host = SimHost(tmp_path / "host", cgroups={"batch.slice": SimCgroup(GIB // 8, GIB // 8)})
    with served(instance_id) as imds:
        env = {
            **os.environ,
            "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml"),
            "SPOTGUARD_IMDS_URL": imds.url,
            "SPOTGUARD_ROOT": str(host.root),
            "SPOTGUARD_AGENT_STATE_FILE": str(tmp_path / "state.json"),
            "SPOTGUARD_AGENT_HOOK_DIR": str(tmp_path / "hooks"),
            "SPOTGUARD_AGENT_POLL_INTERVAL": "0.2",
            "SPOTGUARD_RECLAIM_BACKEND": "v2",
            "SPOTGUARD_HIBERNATE_REGION": "us-east-1",
        }
        agent = subprocess.Popen(
            [sys.executable, "-m", "spotguard", "run"],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            imds.set_notice("stop", in_seconds=120)
            end = time.monotonic() + 30
            while not stop_calls(moto_server):
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                assert time.monotonic() < end, "no StopInstances within 30 s"
                time.sleep(0.2)
            time.sleep(1.0)  # more polls of the same notice must not issue again
            status = subprocess.run(
                [sys.executable, "-m", "spotguard", "status", "--json"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            state = json.loads(status.stdout)
            assert state["phase"] == "hibernating", state["reason"]
        finally:
            agent.send_signal(signal.SIGTERM)
            _, errors = agent.communicate(timeout=15)
    assert agent.returncode == 0, errors
    events = [json.loads(line)["event"] for line in errors.splitlines() if line.startswith("{")]
    assert "notice.received" in events
    assert "hibernate.issued" in events
    assert events[-1] == "agent.stopped"
    assert len(stop_calls(moto_server)) == 1


class _Gated:
    """A Reclaimer that finishes when told to, so a test can look at both sides of its end."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def reclaim(
        self, request: ReclaimRequest, cancel: threading.Event, progress: object = None
    ) -> ReclaimResult:
        self.release.wait(10)
        return ReclaimResult(request.intensity, 1 << 20, 0.1, "complete")


def test_the_worker_reports_running_and_finished_in_one_reading() -> None:
    """Read apart, a reclaim ending between the two reads looked neither running nor done,
    and the planner started the same emergency reclaim again (seen on CI's dry run)."""
    gated = _Gated()
    worker = ReclaimWorker(gated)
    assert worker.start(ReclaimRequest(Intensity.EMERGENCY, 5.0), lambda _: None)
    assert worker.take() == (Intensity.EMERGENCY, None)
    gated.release.set()
    deadline = time.monotonic() + 10
    while (reading := worker.take()) == (Intensity.EMERGENCY, None):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running, finished = reading
    assert running is None
    assert finished is not None
    assert finished.stop_reason == "complete"
    assert worker.take() == (None, None)  # reported once


def test_a_reclaim_slow_to_stop_is_cancelling_until_it_ends() -> None:
    """The planner asks for the cancel at every tick until the reclaim ends; the agent logs
    reclaim.cancelled for the first ask only (it logged one per tick, for seconds)."""
    gated = _Gated()
    worker = ReclaimWorker(gated)
    assert worker.start(ReclaimRequest(Intensity.EMERGENCY, 5.0), lambda _: None)
    assert not worker.cancelling
    worker.cancel(wait_s=0.01)
    assert worker.cancelling  # the write has not noticed yet
    gated.release.set()
    deadline = time.monotonic() + 10
    while worker.running is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not worker.cancelling


def test_a_calm_agent_ticks_slowly_yet_acts_on_a_notice_at_once(
    tmp_path: Path, moto_server: MotoServer, instance_id: str, quiet_host: SimHost
) -> None:
    """While calm the spot poll's empty answers wait for the next slow tick (most of an idle
    agent's CPU was a tick per poll); a notice wakes the loop, not the slow tick."""
    with served(instance_id) as imds:
        agent = make_agent(tmp_path, imds, quiet_host, agent={"slow_poll_interval": 30.0})
        ticks: list[float] = []
        tick = agent.tick

        def counted() -> list[Any]:
            ticks.append(time.monotonic())
            return tick()

        agent.tick = counted  # type: ignore[method-assign]
        stop = threading.Event()
        loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        loop.start()
        try:
            end = time.monotonic() + 20
            while agent.facts is None:  # the facts wake the loop too
                assert time.monotonic() < end, "no facts"
                time.sleep(0.05)
            time.sleep(1.0)  # five polls of the notice, all empty
            calm = len(ticks)
            assert calm <= 3
            imds.set_notice("stop", in_seconds=120)
            while not stop_calls(moto_server):
                assert time.monotonic() < end, "no StopInstances: the notice did not wake it"
                time.sleep(0.05)
        finally:
            stop.set()
            loop.join(15)
    assert len(stop_calls(moto_server)) == 1
