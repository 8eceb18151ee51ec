"""Repeated identical warnings: once, then a count every so often, then a final count."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from spotguard import logs
from spotguard.clock import FakeClock
from spotguard.config import ImdsConfig, Seconds
from spotguard.imds import TOKEN_PATH, ImdsClient, ImdsError
from spotguard.logs import MAX_TRACKED, RepeatFilter
from spotguard.simhost import SimCgroup, SimHost

EVERY = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def out(clock: Clock) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(stream=stream, repeat_every=EVERY, clock=clock)
    yield stream
    unconfigure()


def unconfigure() -> None:
    """Back to structlog's defaults, without this test's counts reported at exit."""
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, RepeatFilter):
            atexit.unregister(processor.flush)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_identical_warnings_once_then_counted_every_period(out: io.StringIO, clock: Clock) -> None:
    log = structlog.get_logger()
    for second in range(130):
        clock.now = float(second)
        log.warning("imds.error", source="spot", error="GET x: Connection refused")
    shown = lines(out)
    assert [(e["event"], e.get("repeated")) for e in shown] == [
        ("imds.error", None),
        ("imds.error", 59),
        ("imds.error", 59),
    ]
    assert shown[0]["source"] == "spot"


def test_the_end_of_a_burst_is_summarised(out: io.StringIO, clock: Clock) -> None:
    log = structlog.get_logger()
    for second in range(40):  # "connection refused for 40 s"
        clock.now = float(second)
        log.warning("imds.error", source="spot", error="refused")
    clock.now = 39 + EVERY
    log.info("notice.received", id="n1")
    shown = lines(out)
    assert [e["event"] for e in shown] == ["imds.error", "log.repeated", "notice.received"]
    assert shown[1] == {
        "event": "log.repeated",
        "of": "imds.error",
        "count": 39,
        "source": "spot",
        "error": "refused",
        "level": "info",
        "timestamp": shown[1]["timestamp"],
    }


def test_distinct_warnings_and_other_levels_pass(out: io.StringIO, clock: Clock) -> None:
    log = structlog.get_logger()
    for _ in range(3):
        log.warning("imds.error", source="spot", error="refused")
        log.warning("imds.error", source="rebalance", error="refused")
        log.warning("imds.error", source="spot", error="HTTP 503")
        log.info("agent.tick")
        log.error("state.write_failed", path="/x")
    shown = [(e["event"], e.get("source"), e.get("error")) for e in lines(out)]
    assert shown.count(("agent.tick", None, None)) == 3
    assert shown.count(("state.write_failed", None, None)) == 1
    assert len([s for s in shown if s[0] == "imds.error"]) == 3


def test_identity_can_name_the_fields_that_matter(clock: Clock) -> None:
    emitted: list[tuple[str, dict[str, Any]]] = []
    repeats = RepeatFilter(
        clock, every=EVERY, emit=lambda e, f: emitted.append((e, f)), identity={"slow": ["path"]}
    )
    passed = 0
    for tick in range(5):
        try:
            repeats(None, "warning", {"event": "slow", "level": "warning", "path": "/a", "s": tick})
            passed += 1
        except structlog.DropEvent:
            pass
    assert passed == 1
    clock.now = 2 * EVERY
    repeats(None, "info", {"event": "other", "level": "info"})
    assert emitted == [("log.repeated", {"of": "slow", "count": 4, "path": "/a"})]


def test_flush_reports_what_is_pending(clock: Clock) -> None:
    emitted: list[tuple[str, dict[str, Any]]] = []
    repeats = RepeatFilter(clock, every=EVERY, emit=lambda e, f: emitted.append((e, f)))
    for _ in range(4):
        with contextlib.suppress(structlog.DropEvent):
            repeats(None, "warning", {"event": "w", "level": "warning", "a": 1})
    with contextlib.suppress(structlog.DropEvent):
        repeats(None, "warning", {"event": "once", "level": "warning"})
    repeats.flush()
    assert emitted == [("log.repeated", {"of": "w", "count": 3, "a": 1})]
    repeats.flush()
    assert len(emitted) == 1


def test_every_dropped_warning_is_counted_once_whatever_the_threads_do(clock: Clock) -> None:
    """The monitors, the reclaim and the control loop all log: with threads switching every
    few microseconds, no warning's count is lost, doubled, or crashes the logger."""
    emitted: list[int] = []
    lock = threading.Lock()
    repeats = RepeatFilter(clock, every=5.0, emit=lambda e, f: emitted.append(f["count"]))
    passed: list[int] = []  # the `repeated` each warning let through carried
    calls = 0

    def log(worker: int) -> None:
        nonlocal calls
        for n in range(3000):
            clock.now = n / 100  # periods end while others are mid-call
            event: dict[str, Any] = {
                "event": "w",
                "level": "warning",
                "source": (n * 7 + worker) % 40,
            }
            try:
                repeats(None, "warning", event)
                with lock:
                    passed.append(int(event.get("repeated", 0)))
            except structlog.DropEvent:
                pass
            with lock:
                calls += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=log, args=(w,)) for w in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    repeats.flush()
    assert len(passed) + sum(passed) + sum(emitted) == calls == 6 * 3000


def test_memory_stays_bounded(clock: Clock) -> None:
    repeats = RepeatFilter(clock, every=EVERY, emit=lambda e, f: None)
    for n in range(3 * MAX_TRACKED):
        repeats(None, "warning", {"event": "w", "level": "warning", "n": n})
    assert len(repeats._seen) <= MAX_TRACKED  # the bound is the point


def test_off_when_every_is_zero(clock: Clock) -> None:
    stream = io.StringIO()
    logs.configure(stream=stream, repeat_every=0, clock=clock)
    try:
        for _ in range(3):
            structlog.get_logger().warning("w", a=1)
    finally:
        unconfigure()
    assert len(lines(stream)) == 3


def test_real_client_errors_repeat_identically(out: io.StringIO, clock: Clock) -> None:
    """The client's messages carry no object addresses or ports that change per call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ImdsConfig(
        url=f"http://127.0.0.1:{port}", connect_timeout=Seconds(0.3), read_timeout=Seconds(0.5)
    )
    client = ImdsClient(config, clock=FakeClock())
    log = structlog.get_logger()
    for second in range(40):
        clock.now = float(second)
        try:
            client.get_text("/latest/meta-data/spot/instance-action")
        except ImdsError as exc:
            log.warning("imds.error", source="spot", error=str(exc))
    shown = [e for e in lines(out) if e["level"] == "warning"]
    assert [e["error"] for e in shown] == ["PUT /latest/api/token: Connection refused"]


def test_agent_against_a_refusing_service_warns_once_per_cause(tmp_path: Path) -> None:
    """The issue's row "connection refused for 40 s: 7.7 warnings a second", shortened: the
    real `spotguard run` against a port nobody listens on, 5 s at a 0.1 s poll."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = SimHost(tmp_path / "host", cgroups={"batch.slice": SimCgroup(1 << 26, 1 << 26)})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPOTGUARD_")},
        "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml"),
        "SPOTGUARD_IMDS_URL": f"http://127.0.0.1:{port}",
        "SPOTGUARD_ROOT": str(host.root),
        "SPOTGUARD_AGENT_STATE_FILE": str(tmp_path / "state.json"),
        "SPOTGUARD_AGENT_HOOK_DIR": str(tmp_path / "hooks"),
        "SPOTGUARD_AGENT_POLL_INTERVAL": "0.1",
        "SPOTGUARD_AGENT_SLOW_POLL_INTERVAL": "0.1",
        "SPOTGUARD_RECLAIM_BACKEND": "v2",
        "SPOTGUARD_HIBERNATE_MODE": "none",
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "spotguard", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(5.0)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, errors = agent.communicate(timeout=30)
    events = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    assert any(e["event"] == "agent.stopped" for e in events), errors[-2000:]
    polls = [e for e in events if e["event"] == "imds.error"]
    causes = {(e["source"], e["error"]) for e in polls}
    assert polls, "the agent never reported the refused connections"
    assert len(polls) == len(causes)  # each cause once, however many polls failed
    assert all("Connection refused" in error for _, error in causes)
    counted = {
        (e.get("source"), e["error"]): e["count"] for e in events if e["event"] == "log.repeated"
    }
    assert counted.get(("spot-interruption", f"PUT {TOKEN_PATH}: Connection refused"), 0) >= 5
    assert "Traceback" not in errors
