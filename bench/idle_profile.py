"""Where does the idle agent's CPU go? The real agent in this process under yappi's CPU clock.

`bench/notice_latency.py` says how much CPU the idle agent takes next to a bare poller; this
says what for, part by part, so a change aims at the part that costs (issue 11: find where
the time goes before changing anything). The metadata simulator runs in a child process so
that its serving is not counted; the agent is `build_agent` with the notice benchmark's
settings (`notice_latency.agent_env`). yappi's own
overhead grows with the number of calls, so the shares are what to read, not the totals.

    .venv/bin/python bench/idle_profile.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import yappi
from notice_latency import agent_env

from spotguard import config, logs
from spotguard.assemble import build_agent
from spotguard.simulator import MetadataSimulator

WARM_UP_S = 8.0
# The parts of the agent's idle work, each by the functions that enter it (file:function).
PARTS = {
    "spot notice poll (every poll_interval)": ["monitors.py:SpotInterruptionMonitor.poll"],
    "early-warning polls (every slow_poll_interval)": [
        "monitors.py:RebalanceMonitor.poll",
        "monitors.py:ScheduledEventMonitor.poll",
        "monitors.py:LifecycleMonitor.poll",
    ],
    "tick: observe (host signals, image estimate)": ["agent.py:Agent._observe"],
    "tick: plan": ["planner.py:plan"],
    "tick: report (metrics, state file, watchdog)": ["agent.py:Agent._report"],
}


def serve(pipe: Connection) -> None:
    with MetadataSimulator() as imds:
        pipe.send(imds.url)
        pipe.recv()  # until the parent is done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    ours, theirs = multiprocessing.Pipe()
    simulator = multiprocessing.get_context("spawn").Process(target=serve, args=(theirs,))
    simulator.start()
    logs.configure(stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    with tempfile.TemporaryDirectory() as name:
        env = agent_env(Path(name), ours.recv())
        agent = build_agent(config.load(env=env))
        stop = threading.Event()
        yappi.set_clock_type("cpu")
        yappi.start()
        runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
        runner.start()
        time.sleep(WARM_UP_S)
        yappi.clear_stats()
        time.sleep(args.seconds)
        yappi.stop()
        stop.set()
        runner.join(5)
    ours.send("done")
    simulator.join(5)
    stats = yappi.get_func_stats()
    total = sum(t.ttot for t in yappi.get_thread_stats())
    print(f"idle agent over {args.seconds:g} s: {total:.3f} s of CPU under yappi (all threads)")
    print(f"{'part':<48} {'calls/s':>8} {'ms/call':>8} {'share':>7}")
    for part, names in PARTS.items():
        found = [s for s in stats if f"{Path(s.module).name}:{s.name}" in names]
        calls = sum(s.ncall for s in found)
        seconds = sum(s.ttot for s in found)
        per_call = 1000 * seconds / calls if calls else 0.0
        print(
            f"{part:<48} {calls / args.seconds:>8.2f} {per_call:>8.2f}"
            f" {100 * seconds / total:>6.1f}%"
        )
    print("(the rest: the cadence's threads, the inbox, the control loop's waits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
