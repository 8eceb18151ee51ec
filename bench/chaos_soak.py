"""Chaos soak: the real `spotguard run` against a misbehaving metadata service, then a notice.

Starts a moto server (EC2, request recorder) and the metadata simulator on 127.0.0.1, both in
this process, a simulated host tree, and `spotguard run` as a separate process (hibernate mode
ec2 against moto, a short poll, short IMDS timeouts, 2 s tokens so the token path is exercised
too). Then, until `--polls` spot polls or `--max-seconds`: switch on a random fault from every
class the simulator has, on a random path, for a few requests; sometimes expire the tokens.
Finally all faults go, a valid stop notice is served, and the soak waits for the hibernation.

Reports crashes, tracebacks, false resumes (`hibernate.resumed` though nothing slept), the
longest tick of the notice path (one spot poll, token and GET, timed inside the agent and read
from its /metrics: `spotguard_poll_seconds`), the gaps between spot GETs as the service sees
them (a poll whose token PUT failed sends no GET, so one gap can span several polls; gaps that
span a refusing listener are reported apart), RSS growth over the chaos phase, notice served ->
`hibernate.issued`, and the StopInstances count from moto.
Goals (issue 9): 0 / 0 / 0, longest tick <= 2x the request deadline, RSS growth <= 1 MB (from
the moment every fault class has been met at least once, so each code path has run once),
exactly 1 StopInstances. Loopback only; bounded in polls and seconds.

    .venv/bin/python bench/chaos_soak.py [--polls 3000] [--max-seconds 600] [--peer aws-mock]
"""

from __future__ import annotations

import argparse
import base64
import collections
import itertools
import json
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# moto reads where its recorder writes once, when imported: keep that out of the tree.
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH", os.path.join(tempfile.gettempdir(), f"chaos-moto-{os.getpid()}")
)

import boto3
import requests
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families

from spotguard.imds import TOKEN_PATH
from spotguard.simhost import MIB, SimCgroup, SimHost
from spotguard.simulator import AWS_MOCK, BAD_TOKENS, MetadataSimulator, SimulatedInstance

META = "/latest/meta-data/"
SPOT = META + "spot/instance-action"
PATHS = [
    "/",
    TOKEN_PATH,
    SPOT,
    META + "events/recommendations/rebalance",
    META + "events/maintenance/scheduled",
    META + "autoscaling/target-lifecycle-state",
]
POLL_S = 0.05
CONNECT_S = 0.2
READ_S = 0.3  # also the request deadline (the larger of the two)
TOKEN_TTL_S = 2
Lines = queue.Queue[tuple[float, dict[str, Any]]]


@dataclass
class Soak:
    """What the soak saw, gathered while it runs."""

    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    refusals: list[tuple[float, float]] = field(default_factory=list)  # never_accept windows
    spot_polls: list[float] = field(default_factory=list)  # arrival times, sampled
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pump(stream: IO[str], soak: Soak, lines: Lines) -> None:
    for line in stream:
        at = time.time()
        if line.startswith("{"):
            entry = json.loads(line)
            soak.events.append((at, entry))
            lines.put((at, entry))
        else:
            soak.raw_lines.append(line)


def sample_spot_polls(imds: MetadataSimulator, soak: Soak, stop: threading.Event) -> None:
    """When each spot poll arrived, to within 5 ms: the simulator counts, we watch the count."""
    seen = 0
    while not stop.wait(0.005):
        now = imds.count("GET", SPOT)
        if now > seen:
            soak.spot_polls.extend([time.monotonic()] * (now - seen))
            seen = now


CHAOS = (
    "timeout", "token_timeout", "hang", "error_500", "error_503", "throttled", "garbage", "slow",
    "drip", "huge", "huge_unsized", "nested", "bad_time", "bad_token", "disabled", "not_found",
    "never_accept",
)  # fmt: skip


def random_fault(imds: MetadataSimulator, soak: Soak, rng: random.Random) -> None:
    """One fault from every class in turn of chance, on a path it can hit."""
    name = rng.choice(CHAOS)
    soak.faults[name] += 1
    if name == "never_accept":
        seconds = rng.uniform(0.1, 0.8)
        soak.refusals.append((time.monotonic(), time.monotonic() + seconds + CONNECT_S))
        imds.set_fault(name, delay=seconds)
        return
    # A bad time on the spot path is a real notice with an unusable time (the agent then takes
    # EC2's two minutes, tests/test_interruption_process.py): chaos keeps it on the other paths.
    paths = [p for p in PATHS if p not in ("/", SPOT)] if name == "bad_time" else PATHS
    path = TOKEN_PATH if name in ("token_timeout", "bad_token") else rng.choice(paths)
    value = rng.choice(list(BAD_TOKENS.values())) if name == "bad_token" else None
    delay = {"timeout": 1.0, "token_timeout": 1.0, "hang": 3.0, "drip": 5.0, "slow": 0.1}
    imds.set_fault(name, rng.randint(1, 3), delay=delay.get(name), path=path, value=value)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return -1


@dataclass(frozen=True)
class PollTimes:
    """The agent's own account of its spot polls (spotguard_poll_seconds{source=...})."""

    longest: float
    count: int
    over: int  # longer than the goal

    @classmethod
    def scrape(cls, port: int, goal: float, source: str = "spot-interruption") -> PollTimes:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        longest, count, within = float("nan"), 0, None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("source") != source:
                    continue
                if sample.name == "spotguard_poll_seconds_max":
                    longest = sample.value
                elif sample.name == "spotguard_poll_seconds_count":
                    count = int(sample.value)
                elif sample.name == "spotguard_poll_seconds_bucket" and float(
                    sample.labels["le"]
                ) == round(goal, 3):
                    within = int(sample.value)
        if within is None:
            raise SystemExit(f"spotguard_poll_seconds has no bucket at {goal} s")
        return cls(longest, count, count - within)


def stop_instances(moto_url: str) -> int:
    """StopInstances calls in moto's recording (bodies may be base64)."""
    answer = requests.get(f"{moto_url}/moto-api/recorder/download-recording", timeout=10)
    answer.raise_for_status()
    count = 0
    for line in answer.text.splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        count += urllib.parse.parse_qs(body).get("Action") == ["StopInstances"]
    return count


def wait_for(lines: Lines, event: str, limit: float) -> float | None:
    end = time.monotonic() + limit
    while (left := end - time.monotonic()) > 0:
        try:
            at, entry = lines.get(timeout=left)
        except queue.Empty:
            return None
        if entry.get("event") == event:
            return at
    return None


def poll_gaps(soak: Soak) -> tuple[list[float], list[float]]:
    """Gaps between spot polls minus the poll interval: (plain, overlapping a refusal window).
    A tick whose token PUT failed sends no spot GET, so one gap can span several ticks."""
    plain: list[float] = []
    refused: list[float] = []
    for before, after in itertools.pairwise(soak.spot_polls):
        gap = after - before - POLL_S
        overlaps = any(start < after and before < end for start, end in soak.refusals)
        (refused if overlaps else plain).append(gap)
    return sorted(plain) or [0.0], sorted(refused) or [0.0]


def agent_env(
    tmp: Path, imds_url: str, moto_url: str, host: SimHost, metrics_port: int
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPOTGUARD_"))},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_EC2": moto_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SPOTGUARD_CONFIG": str(tmp / "absent.toml"),
        "SPOTGUARD_IMDS_URL": imds_url,
        "SPOTGUARD_IMDS_CONNECT_TIMEOUT": str(CONNECT_S),
        "SPOTGUARD_IMDS_READ_TIMEOUT": str(READ_S),
        "SPOTGUARD_IMDS_TOKEN_TTL": str(TOKEN_TTL_S),
        "SPOTGUARD_ROOT": str(host.root),
        "SPOTGUARD_AGENT_STATE_FILE": str(tmp / "state.json"),
        "SPOTGUARD_AGENT_HOOK_DIR": str(tmp / "hooks"),
        "SPOTGUARD_AGENT_POLL_INTERVAL": str(POLL_S),
        "SPOTGUARD_AGENT_METRICS_PORT": str(metrics_port),
        "SPOTGUARD_AGENT_SLOW_POLL_INTERVAL": str(POLL_S * 4),
        "SPOTGUARD_IDLE_DURATION": "24h",
        "SPOTGUARD_RECLAIM_BACKEND": "v2",
        "SPOTGUARD_HIBERNATE_MODE": "ec2",
        "SPOTGUARD_HIBERNATE_REGION": "us-east-1",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=3000, help="spot polls under chaos")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="chaos phase bound")
    parser.add_argument("--peer", choices=("ec2", "aws-mock"), default="ec2")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--log", type=Path, help="write the agent's JSON log lines here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    soak = Soak()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access lines
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    moto_url = f"http://127.0.0.1:{moto_port}"
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
    )
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, HibernationOptions={"Configured": True}
    )["Instances"][0]["InstanceId"]
    requests.post(f"{moto_url}/moto-api/recorder/reset-recording", timeout=10)
    requests.post(f"{moto_url}/moto-api/recorder/start-recording", timeout=10)

    quirks = AWS_MOCK if args.peer == "aws-mock" else None
    small = {"batch.slice": SimCgroup(64 * MIB, 64 * MIB)}
    stop_sampling = threading.Event()
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        MetadataSimulator(instance=SimulatedInstance(instance_id=instance), quirks=quirks) as imds,
    ):
        tmp = Path(tmp_name)
        host = SimHost(tmp / "host", cgroups=small).start()
        metrics_port = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "spotguard", "run"],
            env=agent_env(tmp, imds.url, moto_url, host, metrics_port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert agent.stderr is not None
        lines: Lines = queue.Queue()
        threading.Thread(target=pump, args=(agent.stderr, soak, lines), daemon=True).start()
        sampler = threading.Thread(target=sample_spot_polls, args=(imds, soak, stop_sampling))
        sampler.start()
        crashed = ""
        rss: list[int] = []  # KiB at each tenth of the polls: warm-up apart from a leak
        rss_warm = warm_polls = -1  # once every fault class was met: each path has run once
        rss_end = hwm = -1
        polls = PollTimes(float("nan"), 0, 0)
        issued_after: float | None = None
        sigterm_s = float("nan")
        try:
            if wait_for(lines, "agent.started", 60) is None:
                raise SystemExit("the agent did not start")
            began = time.monotonic()
            while (
                imds.count("GET", SPOT) < args.polls and time.monotonic() - began < args.max_seconds
            ):
                if agent.poll() is not None:
                    crashed = f"agent exited with {agent.returncode} during the chaos phase"
                    break
                if imds.count("GET", SPOT) >= (len(rss) + 1) * args.polls // 10:
                    rss.append(rss_kib(agent.pid))
                if rss_warm < 0 and rss and len(soak.faults) == len(CHAOS):
                    rss_warm, warm_polls = rss_kib(agent.pid), imds.count("GET", SPOT)
                random_fault(imds, soak, rng)
                if rng.random() < 0.2:
                    imds.expire_tokens()
                time.sleep(rng.uniform(0.1, 0.6))
            chaos_s = time.monotonic() - began
            chaos_polls = imds.count("GET", SPOT)
            imds.clear_faults()
            time.sleep(1.0)  # held requests end; the agent settles
            if not crashed:
                rss_end, hwm = rss_kib(agent.pid), rss_kib(agent.pid, "VmHWM")
                polls = PollTimes.scrape(metrics_port, 2 * READ_S)
                imds.set_notice("stop", in_seconds=120)  # moving with --peer aws-mock
                issued_at = wait_for(lines, "hibernate.issued", 60)
                served = imds.served_at("spot/instance-action")
                if issued_at is not None and served is not None:
                    issued_after = issued_at - served
                time.sleep(3.0)  # more polls of the same interruption must not issue again
        finally:
            stop_sampling.set()
            sampler.join()
            sent = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
                sigterm_s = time.monotonic() - sent
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            host.stop()
        stops = stop_instances(moto_url)
    moto.stop()
    Path(os.environ["MOTO_RECORDER_FILEPATH"]).unlink(missing_ok=True)

    names = collections.Counter(str(e.get("event")) for _, e in soak.events)
    tracebacks = sum("exception" in e for _, e in soak.events) + sum(
        "Traceback" in line for line in soak.raw_lines
    )
    plain, refused = poll_gaps(soak)
    p99 = plain[int(0.99 * (len(plain) - 1))]
    over = sum(gap > 2 * READ_S for gap in plain)
    warnings = sum(e.get("level") == "warning" for _, e in soak.events)
    crashes = 1 if crashed or agent.returncode not in (0, None) else 0
    faults = ", ".join(f"{k} {v}" for k, v in sorted(soak.faults.items()))
    growth = (rss_end - rss_warm) / 1024
    half = (rss_end - rss[len(rss) // 2]) / 1024 if rss else float("nan")
    tenths = " ".join(f"{kib / 1024:.1f}" for kib in rss)
    issued = "never" if issued_after is None else f"{issued_after:.2f} s"
    report = [
        f"chaos soak, peer {args.peer}, seed {args.seed}: {chaos_polls} spot polls in"
        f" {chaos_s:.0f} s (poll {POLL_S:g} s, request deadline {READ_S:g} s)",
        f"  faults set: {sum(soak.faults.values())} ({faults})",
        f"  crashes: {crashes} {crashed}(exit {agent.returncode},"
        f" SIGTERM -> exit in {sigterm_s:.2f} s)",
        f"  tracebacks: {tracebacks}",
        f"  false resumes (hibernate.resumed): {names['hibernate.resumed']}",
        f"  longest tick of the notice path (in the agent): {polls.longest:.2f} s"
        f" (goal <= {2 * READ_S:.2f} s; {polls.over} of {polls.count} over the goal)",
        f"  longest gap between spot GETs (at the service): {plain[-1]:.2f} s"
        f" (p99 {p99:.2f} s, {over} of {len(plain)} over {2 * READ_S:.2f} s);"
        f" across a refusing listener: {refused[-1]:.2f} s",
        f"  RSS {rss_warm / 1024:.1f} MiB warm (every fault class met, at poll {warm_polls})"
        f" -> {rss_end / 1024:.1f} MiB after the chaos"
        f" (growth {growth:.2f} MiB, goal <= 1 MB; over the second half {half:.2f} MiB);"
        f" peak {hwm / 1024:.1f} MiB; by tenths of the polls: {tenths}",
        f"  notice served -> hibernate.issued: {issued}",
        f"  StopInstances: {stops} (goal: exactly 1)",
        f"  warnings logged: {warnings} ({warnings / max(chaos_s, 1):.2f}/s), imds.error"
        f" {names['imds.error']}, log.repeated {names['log.repeated']},"
        f" notice.received {names['notice.received']}",
    ]
    print("\n".join(report))
    if args.log is not None:
        args.log.write_text("".join(json.dumps(e) + "\n" for _, e in soak.events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
