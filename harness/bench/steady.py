"""Steady load by hand: ``python -m harness.bench.steady [--rates 200,3000] [--variant
NAME:SETTING=VALUE,...] [--rounds N] [--event-rate R]``.

For each round and each variant (alternated, so that a shared machine's drift falls on
every variant alike): a broker of its own, a backlog drained by one worker with the
variant's settings (``REWARDSTREAM_*`` variables), 10 s at 200 events/s unrecorded, then
each offered rate for ``--seconds`` open-loop, timed as ``rewardstream bench`` times it
(send to decision read back with read_committed). Prints one JSON line per run and rate:
the drain rate, p50 / p99, the worker's and the broker's CPU per event (from
/proc/<pid>/stat) and commits per second. Not a test, and not the benchmark of record
(``rewardstream bench`` is): for A/B comparisons of runtime changes under steady load.
``--event-rate`` spaces the events' times (events per second of event time): the
bench's traffic puts 2,000 users' events within minutes, where at 0.05 they span weeks,
pending periods end and rewards are granted (docs/decisions.md, entry 36).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from app.kafkaio import ensure_topics, produce, topic_requests
from app.settings import Settings
from harness.bench.throughput import (
    FIXED_RATE,
    Traffic,
    cpu_seconds,
    drain_rate,
    latency_at_rate,
)
from harness.workerproc import WorkerProcess, own_broker

WARMUP_S = 10.0
COMMITS = "rewardstream_commit_seconds_count"


def metric_sum(page: str, name: str) -> float:
    """The sum of every series of ``name`` on a Prometheus text page."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", page, re.M))


def broker_pid(settings: Settings) -> int | None:
    """The pid of the broker started under ``settings.data_dir``."""
    found = subprocess.run(
        ["pgrep", "-f", f"kafka.Kafka.*{settings.data_dir}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(found[0]) if found else None


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:REWARDSTREAM_X=1,REWARDSTREAM_Y=2``."""
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    unknown = [k for k in env if not k.startswith("REWARDSTREAM_")]
    if unknown:
        raise SystemExit(f"not a setting: {', '.join(unknown)}")
    return name, env


def run_variant(
    name: str,
    env: dict[str, str],
    rates: Sequence[float],
    seconds: float,
    backlog_size: int,
    event_rate: float | None = None,
) -> list[dict[str, Any]]:
    base = Settings.from_env({**os.environ, **env})
    traffic = Traffic(2_000, 7, events_per_second=event_rate)
    backlog = traffic.take(backlog_size)
    rows: list[dict[str, Any]] = []
    with own_broker(base, "steady") as settings:
        asyncio.run(ensure_topics(settings.bootstrap_servers, topic_requests(settings)))
        asyncio.run(
            produce(settings.bootstrap_servers, settings.topic_events, [m.value for m in backlog])
        )
        worker = WorkerProcess(settings, settings.data_dir / "worker.log")
        try:
            worker.start().wait_ready()
            drain = drain_rate(worker, len(backlog))
            warmup = traffic.take(round(FIXED_RATE * WARMUP_S))
            asyncio.run(latency_at_rate(settings, warmup, rate=FIXED_RATE, worker=worker))
            assert worker.process is not None
            broker = broker_pid(settings)
            pids = {"worker": worker.process.pid, **({"broker": broker} if broker else {})}
            for rate in rates:
                messages = traffic.take(round(rate * seconds))
                cpu = {who: cpu_seconds(pid) for who, pid in pids.items()}
                commits = metric_sum(worker.get("/metrics")[1].decode(), COMMITS)
                started = time.perf_counter()
                found = asyncio.run(latency_at_rate(settings, messages, rate=rate, worker=worker))
                elapsed = time.perf_counter() - started
                commits = metric_sum(worker.get("/metrics")[1].decode(), COMMITS) - commits
                per_event = {
                    f"{who}_cpu_ms": round(1000 * (cpu_seconds(pids[who]) - s) / len(messages), 3)
                    for who, s in cpu.items()
                }
                rows.append(
                    {
                        "variant": name,
                        "event_rate": event_rate,
                        "rate": rate,
                        "drain": round(drain),
                        "p50_ms": found["p50_ms"],
                        "p99_ms": found["p99_ms"],
                        "undecided": found["undecided"],
                        **per_event,
                        "commits_per_s": round(commits / elapsed, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            worker.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.bench.steady")
    parser.add_argument("--rates", default="200,3000", help="offered events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic per rate")
    parser.add_argument("--backlog", type=int, default=20_000, help="events drained first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--event-rate",
        type=float,
        help="events per second of event time (default: the bench's traffic, 100)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME or NAME:REWARDSTREAM_X=V,...; repeat to compare (default: one, as set)",
    )
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    variants = [parse_variant(v) for v in args.variant] or [("as-set", {})]
    for _ in range(args.rounds):
        for name, env in variants:
            run_variant(name, env, rates, args.seconds, args.backlog, args.event_rate)


if __name__ == "__main__":
    main()
