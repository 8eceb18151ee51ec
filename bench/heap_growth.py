"""Is the agent's RSS creep under chaos a leak? tracemalloc over the whole agent, in-process.

`bench/chaos_soak.py` sees the real process's RSS grow by 0.3-0.5 MiB per 3,000 faulty polls
after warm-up. This runs the same agent (`build_agent`, its real threads, metadata client and
simulated host) in this process under the same random faults, and compares Python's traced heap
between two points of the chaos: flat means the creep is the allocator's (freed memory not
handed back), not objects we keep. Prints the traced growth and the biggest growers.

    .venv/bin/python bench/heap_growth.py [--seconds 150] [--top 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from chaos_soak import POLL_S, SPOT, Soak, random_fault

from spotguard import config, logs
from spotguard.assemble import build_agent
from spotguard.simhost import MIB, SimCgroup, SimHost
from spotguard.simulator import MetadataSimulator


def chaos(imds: MetadataSimulator, soak: Soak, rng: random.Random, seconds: float) -> None:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        random_fault(imds, soak, rng)
        if rng.random() < 0.2:
            imds.expire_tokens()
        time.sleep(rng.uniform(0.1, 0.6))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="chaos between the marks")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    soak = Soak()
    logs.configure(stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    with tempfile.TemporaryDirectory() as name, MetadataSimulator() as imds:
        tmp = Path(name)
        host = SimHost(tmp / "host", cgroups={"batch.slice": SimCgroup(64 * MIB, 64 * MIB)})
        host.start()
        env = {
            "SPOTGUARD_CONFIG": str(tmp / "absent.toml"),
            "SPOTGUARD_IMDS_URL": imds.url,
            "SPOTGUARD_IMDS_CONNECT_TIMEOUT": "0.2",
            "SPOTGUARD_IMDS_READ_TIMEOUT": "0.3",
            "SPOTGUARD_IMDS_TOKEN_TTL": "2",
            "SPOTGUARD_ROOT": str(host.root),
            "SPOTGUARD_AGENT_STATE_FILE": str(tmp / "state.json"),
            "SPOTGUARD_AGENT_HOOK_DIR": str(tmp / "hooks"),
            "SPOTGUARD_AGENT_POLL_INTERVAL": str(POLL_S),
            "SPOTGUARD_AGENT_SLOW_POLL_INTERVAL": str(POLL_S * 4),
            "SPOTGUARD_IDLE_DURATION": "24h",
            "SPOTGUARD_RECLAIM_BACKEND": "v2",
            "SPOTGUARD_HIBERNATE_MODE": "none",
        }
        agent = build_agent(config.load(env=env))
        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
        runner.start()
        try:
            chaos(imds, soak, rng, 30)  # warm-up: every code path once
            tracemalloc.start(30)
            chaos(imds, soak, rng, 30)
            gc.collect()
            first, first_bytes = tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]
            polls = imds.count("GET", SPOT)
            chaos(imds, soak, rng, args.seconds)
            gc.collect()
            last, last_bytes = tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]
            polls = imds.count("GET", SPOT) - polls
        finally:
            stop.set()
            runner.join(5)
            host.stop()
    print(
        f"traced heap {first_bytes / 1024:.0f} KiB -> {last_bytes / 1024:.0f} KiB over {polls}"
        f" spot polls in {args.seconds:.0f} s ({sum(soak.faults.values())} faults):"
        f" growth {(last_bytes - first_bytes) / 1024:.1f} KiB"
    )
    for stat in last.compare_to(first, "lineno")[: args.top]:
        print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
