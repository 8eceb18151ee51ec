"""The agent as users run it: `spotguard run` in its own process, its JSON log read as it comes,
and what it did to EC2 read back from moto's request recorder."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.fixtures_aws import MotoServer

REPO = Path(__file__).resolve().parent.parent


def stop_calls(moto: MotoServer) -> list[dict[str, list[str]]]:
    """Every StopInstances moto received since recording started, as parsed form bodies."""
    calls = []
    for line in moto.recorded().splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        form = urllib.parse.parse_qs(body)
        if form.get("Action") == ["StopInstances"]:
            calls.append(form)
    return calls


@pytest.fixture
def instance_id(moto_server: MotoServer) -> str:
    """A hibernation-ready instance in moto; recording starts after its launch."""
    answer = moto_server.ec2().run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, HibernationOptions={"Configured": True}
    )
    moto_server.start_recording()
    return answer["Instances"][0]["InstanceId"]


def hook(tmp_path: Path, kind: str, name: str = "record") -> Path:
    """A hook that appends its kind and event to a file: proof it ran, and with what."""
    folder = tmp_path / "hooks" / kind
    folder.mkdir(parents=True, exist_ok=True)
    out = tmp_path / f"{kind}.log"
    script = folder / name
    script.write_text(
        f'#!/bin/sh\necho "$SPOTGUARD_HOOK $SPOTGUARD_EVENT_KIND $SPOTGUARD_ACTION" >> {out}\n'
    )
    script.chmod(0o755)
    return out


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1 that keeps what it got."""

    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.got.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook_url() -> Iterator[str]:
    Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


def agent_env(tmp_path: Path, imds_url: str, host_root: Path, **settings: str) -> dict[str, str]:
    """`spotguard run`'s environment: short polls and timeouts, state and hooks under tmp_path;
    `settings` are more SPOTGUARD_* variables, e.g. AGENT_WEBHOOK_URL="http://..."."""
    env = {
        **os.environ,
        "PYTHONFAULTHANDLER": "1",  # a stop that overruns dumps every thread (AgentProcess.stop)
        "SPOTGUARD_CONFIG": str(tmp_path / "absent.toml"),
        "SPOTGUARD_IMDS_URL": imds_url,
        "SPOTGUARD_IMDS_CONNECT_TIMEOUT": "0.3",
        "SPOTGUARD_IMDS_READ_TIMEOUT": "0.5",
        "SPOTGUARD_ROOT": str(host_root),
        "SPOTGUARD_AGENT_STATE_FILE": str(tmp_path / "state" / "state.json"),
        "SPOTGUARD_AGENT_HOOK_DIR": str(tmp_path / "hooks"),
        "SPOTGUARD_AGENT_POLL_INTERVAL": "0.2",
        "SPOTGUARD_AGENT_SLOW_POLL_INTERVAL": "1s",
        "SPOTGUARD_IDLE_DURATION": "1h",
        "SPOTGUARD_RECLAIM_BACKEND": "v2",
        "SPOTGUARD_HIBERNATE_REGION": "us-east-1",
    }
    env.update({f"SPOTGUARD_{key}": value for key, value in settings.items()})
    return env


class AgentProcess:
    """`spotguard run`, its log lines collected as they come (with the moment each came)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "spotguard", "run"],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self.records: list[tuple[float, dict[str, Any]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            with self._lock:
                self.lines.append(line)  # assert_clean fails on a line that is not JSON;
                if line.startswith("{"):  # the reader outlives it (a full pipe would block us)
                    with contextlib.suppress(ValueError):
                        self.records.append((time.monotonic(), json.loads(line)))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for _, r in self.records if name is None or r.get("event") == name]

    def wait_for(
        self,
        name: str,
        limit_s: float = 20.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> tuple[float, dict[str, Any]]:
        """The first `name` event that matches `where` (and when it came), or fail."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            with self._lock:
                for at, record in self.records:
                    if record.get("event") == name and where(record):
                        return at, record
            assert self._process.poll() is None, "".join(self.lines[-30:])
            time.sleep(0.05)
        raise AssertionError(f"no {name} within {limit_s} s:\n{''.join(self.lines[-30:])}")

    def signal(self, signum: int, *, to_a_thread: bool = False) -> None:
        """To the process (the kernel picks a thread: usually the main one), or straight to one
        of its other threads (tgkill), as the kernel may also choose."""
        if not to_a_thread:
            self._process.send_signal(signum)
            return
        pid = self._process.pid
        tasks = Path(f"/proc/{pid}/task").iterdir()
        others = sorted(int(task.name) for task in tasks if task.name != str(pid))
        assert others, "the agent runs no thread but the main one"
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.tgkill(pid, others[0], signum) != 0:
            raise OSError(ctypes.get_errno(), "tgkill")

    def kill(self) -> None:
        self._process.kill()
        self._process.wait(10)
        self._reader.join(5)

    def stop(self, *, to_a_thread: bool = False) -> float:
        """SIGTERM; the seconds it took to end. It must end cleanly."""
        began = time.monotonic()
        self.signal(signal.SIGTERM, to_a_thread=to_a_thread)
        try:
            code = self._process.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit 15 s after SIGTERM:\n{self._post_mortem()}") from None
        took = time.monotonic() - began
        self._reader.join(5)
        assert code == 0, "".join(self.lines[-30:])
        return took

    def _post_mortem(self) -> str:
        """Where each thread is, in the kernel (/proc) and in Python (faulthandler, on SIGABRT)."""
        tasks = Path(f"/proc/{self._process.pid}/task")
        kernel = []
        for task in sorted(tasks.iterdir()) if tasks.exists() else []:
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text()
                kernel.append(f"{task.name} {comm} {stat} {wchan}")
        self._process.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        if self._process.poll() is None:
            self._process.kill()
        self._reader.join(5)
        return "\n".join(["threads:", *kernel, "log tail:", *self.lines[-60:]])

    def assert_clean(self) -> None:
        """No traceback, no line that is not a JSON event, and a clean stop."""
        text = "".join(self.lines)
        assert "Traceback" not in text, text[-3000:]
        assert not [r for r in self.events() if "exception" in r], text[-3000:]
        assert all(line.startswith("{") for line in self.lines), text[-3000:]
        names = [r["event"] for r in self.events()]
        assert "agent.stopped" in names, text[-3000:]
        after = names[len(names) - names[::-1].index("agent.stopped") :]
        assert set(after) <= {"log.repeated"}, after  # only the counts logs.py keeps to the end
