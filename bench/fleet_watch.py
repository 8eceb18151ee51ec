"""How fast does `spotguard fleet watch` digest a big drill, and in how much memory?

The events of a simulated N-instance drill (about 5 each: warning, notice seen, hibernation
issued, stopping, stopped; 2 % graceful, 2 % too late), shuffled, 10 % of them delivered twice,
are sent to an SQS queue on a moto server (its own process, 127.0.0.1) as fast as moto takes
them, while the consumer drains the queue; the consumer is first a bare boto3 receive+delete
loop (the floor: moto's own speed), then `spotguard fleet watch --until-settled`, each a child
process measured alone (wall time, peak RSS from wait4).

moto (5.2) is the bottleneck of that run, not the watcher: its SQS reads every queue attribute
for every message it returns (`is_message_valid_based_on_retention_period` ->
`get_queue_attributes`), three scans of the whole queue with two datetime conversions per
message each, so each message received costs O(queue depth) (about 1.5 s per receive of 10
from a queue of 500 here) and a queue holding a 1,000-instance drill takes moto tens of
minutes. So the moto run uses `--moto-instances` (200 by default), and the watcher's own cost
for the full drill is measured as well: the same `watch()` loop and report over the same
messages handed over in batches of 10 from memory, in a child process of its own.
Goals (issue 12): the whole drill digested in under 60 s, peak RSS under 100 MB.

    .venv/bin/python bench/fleet_watch.py [--instances 1000] [--moto-instances 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import requests

from spotguard.fleet.events import Kind

GIB = 1 << 30
DRAIN = """
import sys, boto3
sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sys.argv[1])
read, want = 0, int(sys.argv[3])
while read < want:
    got = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10, WaitTimeSeconds=1)
    messages = got.get("Messages", [])
    read += len(messages)
    if messages:
        sqs.delete_message_batch(QueueUrl=sys.argv[2], Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)])
print(read)
"""


def envelope(detail_type: Kind, instance: str, at: float, **detail: Any) -> str:
    """What EventBridge puts in the queue (moto's shape)."""
    body: dict[str, Any] = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type.value,
        "source": detail_type.source,
        "account": "123456789012",
        "time": datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [],
        "detail": {"instance-id": instance, **detail},
    }
    if detail_type.source == "spotguard":
        body["detail"]["at"] = at
    return json.dumps(body)


def drill_bodies(instances: int, rng: random.Random, t0: float) -> list[str]:
    bodies = []
    for n in range(instances):
        instance = f"i-{n:017x}"
        warned = t0 + rng.uniform(0, 5)
        deadline = warned + 120
        bodies += [
            envelope(Kind.WARNING, instance, warned, **{"instance-action": "stop"}),
            envelope(
                Kind.NOTICE_SEEN,
                instance,
                warned + rng.uniform(0.1, 1.1),
                kind="spot-interruption",
                action="stop",
                deadline=deadline,
            ),
        ]
        fate = rng.random()
        if fate < 0.02:
            bodies.append(envelope(Kind.GRACEFUL, instance, warned + 1.5, reason="swap too small"))
            stop = warned + 119
            stopping = stop - 10
        else:
            issued = warned + (rng.uniform(100, 118) if fate < 0.04 else rng.uniform(2, 30))
            bodies.append(
                envelope(
                    Kind.HIBERNATION_ISSUED,
                    instance,
                    issued,
                    image_bytes=rng.randrange(GIB // 4, 2 * GIB),
                    seconds_left=round(deadline - issued, 1),
                )
            )
            stopping, stop = issued + 1, issued + rng.uniform(5, 25)
        bodies += [
            envelope(Kind.STATE, instance, stopping, state="stopping"),
            envelope(Kind.STATE, instance, stop, state="stopped"),
        ]
    return bodies


def fill(sqs: Any, url: str, bodies: list[str], done: list[float]) -> None:
    """The drill's producer: batches of 10 as fast as moto takes them; `done` gets the time
    (monotonic) the last one was in the queue."""
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[start : start + 10])
        ]
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not answer.get("Failed"), answer["Failed"]
    done.append(time.monotonic())


@dataclass(frozen=True)
class Run:
    seconds: float  # first message sent -> the consumer exited
    after_last_s: float  # the last message sent -> the consumer exited
    peak_rss_mib: float
    out: str


def streamed(sqs: Any, url: str, bodies: list[str], argv: list[str], env: dict[str, str]) -> Run:
    """Start the consumer, then produce the drill into its queue while it reads."""
    consumer = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert consumer.stdout is not None
    assert consumer.stderr is not None
    time.sleep(5.0)  # the consumer's imports and first poll: not the drill's time
    last: list[float] = []
    began = time.monotonic()
    producer = threading.Thread(target=fill, args=(sqs, url, bodies, last))
    producer.start()
    out = consumer.stdout.read().decode()
    errors = consumer.stderr.read().decode()
    _, status, usage = os.wait4(consumer.pid, 0)
    ended = time.monotonic()
    consumer.returncode = os.waitstatus_to_exitcode(status)
    producer.join()
    if consumer.returncode not in (0, 1):  # 1: the drill had misses, as it should here
        raise SystemExit(f"{argv[:4]} failed ({consumer.returncode}): {errors[-2000:]}")
    return Run(ended - began, ended - last[0], usage.ru_maxrss / 1024, out)


DIGEST = """
import json, sys, time
from spotguard.clock import SystemClock
from spotguard.fleet.report import DrillReport
from spotguard.fleet.watch import watch

class Batches:
    def __init__(self, bodies):
        self.bodies, self.received = bodies, 0
    def read(self, wait_s):
        batch = self.bodies[self.received : self.received + 10]
        self.received += len(batch)
        return batch

bodies = json.loads(open(sys.argv[1]).read())
report, clock = DrillReport(), SystemClock()
began = time.monotonic()
result = watch(Batches(bodies), report, clock, until_settled=True)
document = report.to_json(clock.wall())
print(json.dumps({"seconds": time.monotonic() - began, "received": result.received,
                  "settled": result.settled, "summary": document["summary"]}))
"""


def digest(bodies: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """The watcher's own cost: its loop and report over the messages, without SQS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as feed:
        json.dump(bodies, feed)
        feed.flush()
        child = subprocess.Popen(
            [sys.executable, "-c", DIGEST, feed.name], env=env, stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        out = child.stdout.read().decode()
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the digest child failed")
    return json.loads(out), usage.ru_maxrss / 1024


def drill(instances: int, duplicates: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """The events of a drill, and them as delivered: shuffled, some twice."""
    events = drill_bodies(instances, rng, time.time() - 600)
    delivered = events + rng.sample(events, int(len(events) * duplicates))
    rng.shuffle(delivered)
    return events, delivered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--moto-instances", type=int, default=200)
    parser.add_argument("--duplicates", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    events, delivered = drill(args.instances, args.duplicates, rng)
    measured, digest_rss = digest(delivered, dict(os.environ))
    assert measured["received"] == len(delivered)
    assert measured["settled"]
    assert measured["summary"]["warned"] == args.instances
    print(
        f"{args.instances} instances: {len(events)} events + {len(delivered) - len(events)} "
        f"duplicates = {len(delivered)} messages, digested by watch() from memory in "
        f"{measured['seconds']:.2f} s ({len(delivered) / measured['seconds']:.0f} msgs/s), "
        f"peak RSS {digest_rss:.1f} MiB"
    )

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_ENDPOINT_URL": url,
    }
    os.environ.update(env)
    moto_bin = Path(sys.executable).with_name("moto_server")
    moto = subprocess.Popen(
        [str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=url)
        events, delivered = drill(args.moto_instances, args.duplicates, rng)
        print(
            f"against moto, {args.moto_instances} instances: {len(delivered)} messages, "
            "streamed into the queue while the consumer reads"
        )
        floor_url = sqs.create_queue(QueueName="floor")["QueueUrl"]
        floor = streamed(
            sqs,
            floor_url,
            delivered,
            [sys.executable, "-c", DRAIN, url, floor_url, str(len(delivered))],
            env,
        )
        drill_url = sqs.create_queue(QueueName="drill")["QueueUrl"]
        with tempfile.TemporaryDirectory() as tmp:
            watch_env = {**env, "SPOTGUARD_CONFIG": str(Path(tmp) / "absent.toml")}
            watch = streamed(
                sqs,
                drill_url,
                delivered,
                [
                    *(sys.executable, "-m", "spotguard", "fleet", "watch", "--queue", drill_url),
                    *("--until-settled", "--json", "--wait", "1", "--timeout", "10m"),
                ],
                watch_env,
            )
    finally:
        moto.terminate()
        moto.wait(15)

    report = json.loads(watch.out)
    summary, watched = report["summary"], report["watch"]
    assert int(floor.out) == len(delivered) == watched["received"], (floor.out, watched)
    assert report["messages"]["events"] == len(events)
    assert summary["warned"] == args.moto_instances, summary
    assert summary["settled"], summary
    n = len(delivered)
    print(
        f"bare receive+delete loop: {floor.seconds:.1f} s, {n / floor.seconds:.0f} msgs/s, "
        f"peak RSS {floor.peak_rss_mib:.1f} MiB, exit {floor.after_last_s:.2f} s after the"
        " last send"
    )
    print(
        f"spotguard fleet watch:    {watch.seconds:.1f} s, {n / watch.seconds:.0f} msgs/s, "
        f"peak RSS {watch.peak_rss_mib:.1f} MiB (time {watch.seconds / floor.seconds:.2f}x the "
        f"bare loop's, RSS {watch.peak_rss_mib / floor.peak_rss_mib:.2f}x)"
    )
    print(
        f"last event sent -> settled report: {watch.after_last_s:.2f} s "
        f"(the watcher's own count from the last message it read: "
        f"{watched['last_event_to_report_s']:.2f} s, one confirming 1 s poll)"
    )
    print("goals: the whole drill digested in < 60 s, peak RSS < 100 MB")
    print(
        f"report: {summary['warned']} warned, {summary['hibernated']} hibernated, "
        f"{summary['graceful']} graceful, {summary['missed']} missed; "
        f"{report['messages']['duplicates']} duplicates recognised"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
