"""`spotguard run --dry-run` as a process: a spot notice from the simulator on 127.0.0.1, a
simulated host tree under a root prefix, real hooks and a real webhook receiver. Afterwards
every file of the tree is byte for byte what it was, no hook ran, nothing was sent, and the
log holds the plan: each cgroup with its bytes, the hooks, the hibernation it would issue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from spotguard.config import ReclaimConfig
from spotguard.dry_run import DryHookRunner, DryReclaimer
from spotguard.hooks import HookRunner
from spotguard.hostfs import HostFS
from spotguard.reclaim.api import Intensity, ReclaimRequest, ReclaimResult
from spotguard.simhost import SimHost
from spotguard.simulator import MetadataSimulator

WAIT_S = 60.0  # for the dry hibernation; the notice leaves 90 s


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def posts() -> Iterator[tuple[str, list[str]]]:
    """A webhook receiver on 127.0.0.1 that keeps the paths it was posted to."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret", seen
    finally:
        server.shutdown()
        server.server_close()


def write_hooks(hook_dir: Path, mark: Path) -> None:
    for kind in ("on-notice", "pre-reclaim", "pre-hibernate", "graceful"):
        path = hook_dir / kind / "10-mark"
        path.parent.mkdir(parents=True)
        path.write_text(f"#!/bin/sh\necho {kind} >> {mark}\n")
        path.chmod(0o755)


def agent_env() -> dict[str, str]:
    """No SPOTGUARD_* from outside; boto3 could not reach anything even if it were asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTGUARD_", "AWS_"))}
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard: a call would fail, not leave
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    return env


def run_until(argv: list[str], env: dict[str, str], event: str) -> list[dict[str, Any]]:
    """Run the agent until it logs `event` (or WAIT_S pass), stop it, return its JSON lines."""
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            record = json.loads(line)
            lines.append(record)
            if record.get("event") == event:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(WAIT_S), f"no {event} in {WAIT_S} s: {lines[-5:]}"
        time.sleep(0.5)  # what it does right after (the hooks, the webhook) is logged too
    finally:
        process.terminate()
        process.wait(timeout=15)
        reader.join(timeout=5)
    return lines


def test_dry_run_changes_nothing_and_logs_what_it_would_do(
    tmp_path: Path, posts: tuple[str, list[str]]
) -> None:
    webhook_url, posted = posts
    host = SimHost(tmp_path / "host")  # not started: nothing but the agent could change it
    before = tree(host.root)
    mark = tmp_path / "hooks-ran"
    write_hooks(tmp_path / "hooks", mark)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[agent]
root = "{host.root}"
state_file = "{tmp_path / "state" / "state.json"}"
hook_dir = "{tmp_path / "hooks"}"
poll_interval = 0.2
slow_poll_interval = 0.2
webhook_url = "{webhook_url}"

[reclaim]
background = ["batch.slice"]
protected = ["app.slice"]

[hibernate]
mode = "ec2"
region = "us-east-1"
tune_image_size = true
"""
    )
    with MetadataSimulator() as sim:
        # Long enough that the honest prediction for this 8 GiB host (shrink + write at
        # 100 MiB/s) leaves room for an emergency reclaim first.
        sim.set_notice("stop", in_seconds=300)
        env = {**agent_env(), "SPOTGUARD_IMDS_URL": sim.url}
        argv = [sys.executable, "-m", "spotguard", "--config", str(config), "run", "--dry-run"]
        logs = run_until(argv, env, "hibernate.issued")

    assert tree(host.root) == before  # not one byte written, nothing added or removed
    assert not mark.exists()  # no hook ran
    assert posted == []  # no webhook went out
    events = [e["event"] for e in logs]
    assert "reclaim.stage" not in events  # the engine never ran a stage

    runs = [e for e in logs if e["event"] == "dry_run.reclaim" and e["intensity"] == "emergency"]
    assert len(runs) == 1
    run = runs[0]
    assert run["cgroups"] == ["batch.slice", "app.slice"]  # background first, protected last
    stages = {
        e["cgroup"]: e
        for e in logs
        if e["event"] == "dry_run.reclaim_stage" and logs.index(e) < logs.index(run)
    }
    batch, app = host.cgroups["batch.slice"], host.cgroups["app.slice"]
    assert stages["batch.slice"]["file_bytes"] == batch.file_bytes
    assert stages["batch.slice"]["anon_bytes"] == batch.anon_bytes  # swap is free: anon too
    planned = [stages[name]["would_reclaim_bytes"] for name in run["cgroups"]]
    everything = batch.file_bytes + batch.anon_bytes + app.file_bytes + app.anon_bytes
    assert sum(planned) == run["would_reclaim_bytes"] == min(everything, run["target_bytes"])
    assert planned[0] == batch.file_bytes + batch.anon_bytes

    [hibernate] = [e for e in logs if e["event"] == "dry_run.hibernate"]
    assert hibernate["would"] == (
        "call EC2 StopInstances(Hibernate=True) on i-0123456789abcdef0 in us-east-1"
    )
    hooks = {(e["kind"], e["hook"], e["would"]) for e in logs if e["event"] == "dry_run.hook"}
    assert ("pre-hibernate", "10-mark", "run") in hooks
    assert ("on-notice", "10-mark", "run") in hooks
    webhooks = [e for e in logs if e["event"] == "dry_run.webhook"]
    assert "hibernating" in [w["would_send"]["what"] for w in webhooks]
    assert {w["host"] for w in webhooks} == {webhook_url.split("/")[2]}
    assert "secret" not in json.dumps(logs)
    assert (tmp_path / "state" / "state.json").exists()  # the agent's own state: still kept


# -- the dry parts, one at a time --------------------------------------------------------------
def reclaim_plan(host: SimHost, request: ReclaimRequest) -> tuple[ReclaimResult, list[Any]]:
    config = ReclaimConfig(background=("batch.slice",), protected=("app.slice",))
    with capture_logs() as logs:
        result = DryReclaimer(HostFS(host.root), config).reclaim(request, threading.Event())
    return result, logs


def test_a_light_dry_run_plans_page_cache_of_the_background_only(tmp_path: Path) -> None:
    host = SimHost(tmp_path / "host")
    result, logs = reclaim_plan(host, ReclaimRequest(Intensity.LIGHT, budget_s=60))
    batch = host.cgroups["batch.slice"]
    assert [(e["cgroup"], e["would_reclaim_bytes"], e["anon_bytes"]) for e in logs[:-1]] == [
        ("batch.slice", batch.file_bytes, 0)
    ]
    assert logs[-1]["would_reclaim_bytes"] == batch.file_bytes
    assert (result.reclaimed_bytes, result.stop_reason, result.backend) == (0, "dry-run", "dry-run")


def test_a_dry_run_plan_stops_at_the_target(tmp_path: Path) -> None:
    host = SimHost(tmp_path / "host")
    request = ReclaimRequest(Intensity.EMERGENCY, budget_s=60, target_bytes=1 << 30)
    _, logs = reclaim_plan(host, request)
    would = {e["cgroup"]: e["would_reclaim_bytes"] for e in logs[:-1]}
    assert would == {"batch.slice": 1 << 30, "app.slice": 0}


def test_without_a_memory_cgroup_the_dry_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = ReclaimConfig()
    with capture_logs() as logs:
        result = DryReclaimer(HostFS(tmp_path / "empty"), config).reclaim(
            ReclaimRequest(Intensity.DEEP, budget_s=1), threading.Event()
        )
    assert result.stop_reason == "unavailable"
    assert logs[0]["would"] == "nothing: no memory cgroup found"


def test_dry_hooks_say_which_would_run_and_which_would_be_skipped(tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    write_hooks(tmp_path / "hooks", mark)
    unsafe = tmp_path / "hooks" / "on-notice" / "20-unsafe"
    unsafe.write_text(f"#!/bin/sh\necho unsafe >> {mark}\n")
    unsafe.chmod(0o777)
    runner = DryHookRunner(HookRunner(tmp_path / "hooks", timeout_s=5))
    with capture_logs() as logs:
        assert runner.run("on-notice", {}) == []
    assert not mark.exists()
    assert [(e["hook"], e["would"]) for e in logs] == [
        ("10-mark", "run"),
        ("20-unsafe", f"skip: {unsafe} is writable by its group or others (mode 0777)"),
    ]
