"""`rewardstream demo`: a broker, a worker and simulated traffic, then a readable summary.

Everything the demo starts, it stops, even when interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import statistics
from collections import Counter
from typing import Any

from app import localkafka
from app.assembly import load_program_setting
from app.clock import SystemClock
from app.kafkaio import ensure_topics, read, topic_requests
from app.render import render
from app.settings import Settings
from app.simulation import EventSimulator, SimulatorConfig
from app.simulation.live import stream_to_kafka
from app.workerproc import WorkerProcess


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    duration_s: float = 20.0
    rate: float = 200.0
    users: int = 500
    invalid_ratio: float = 0.02
    seed: int = 7


def run_demo(settings: Settings, plan: DemoPlan) -> int:
    """Run the demo end to end; return the process exit code."""
    home = settings.data_dir / "demo"
    shutil.rmtree(home, ignore_errors=True)  # each demo starts from an empty broker
    say(
        f"Starting Apache Kafka {settings.kafka_version} "
        "(the first run fetches it from Maven Central)..."
    )
    broker = localkafka.start(
        home / "kafka",
        cache_dir=settings.cache_dir,
        version=settings.kafka_version,
        port=0,
        heap=settings.kafka_heap,
    )
    settings = dataclasses.replace(
        settings,
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=home,
        web_port=localkafka.free_port(),
    )
    worker = WorkerProcess(settings, home / "worker.log")
    try:
        say(
            f"Kafka is up on {broker.bootstrap_servers}. Creating topics and starting the worker..."
        )
        asyncio.run(ensure_topics(settings.bootstrap_servers, topic_requests(settings)))
        worker.start().wait_ready()
        return asyncio.run(_traffic_and_summary(settings, plan))
    finally:
        say("Stopping the worker and the broker...")
        worker.stop()
        localkafka.stop(home / "kafka")


async def _traffic_and_summary(settings: Settings, plan: DemoPlan) -> int:
    total = int(plan.duration_s * plan.rate)
    simulator = EventSimulator(
        SimulatorConfig(
            users=plan.users,
            seed=plan.seed,
            start_ms=SystemClock().now_ms(),
            events_per_second=plan.rate,
            invalid_ratio=plan.invalid_ratio,
            program=load_program_setting(settings.program).id,
        )
    )
    say(
        f"Streaming {total} simulated events ({plan.rate:.0f}/s for {plan.duration_s:.0f} s, "
        f"{plan.invalid_ratio:.0%} malformed on purpose)..."
    )
    await stream_to_kafka(
        settings.bootstrap_servers, settings.topic_events, simulator, rate=plan.rate, total=total
    )
    outputs = [settings.topic_decisions, settings.topic_fraud_alerts, settings.topic_dead_letter]
    records: list[tuple[dict[str, Any], int]] = []
    async for received in read(settings.bootstrap_servers, outputs, idle_timeout_s=5.0):
        records.append((received.document(), received.timestamp_ms))
    print_summary(records, produced=total)
    decided = sum(1 for r, _ in records if r.get("kind") in ("decision", "dead_letter"))
    return 0 if decided == total else 1


def print_summary(records: list[tuple[dict[str, Any], int]], *, produced: int) -> None:
    decisions = [r for r, _ in records if r.get("kind") == "decision"]
    alerts = [r for r, _ in records if r.get("kind") == "fraud_alert"]
    dead = [r for r, _ in records if r.get("kind") == "dead_letter"]
    latencies = [at - r["ts"] for r, at in records if r.get("kind") == "decision"]
    say("")
    say(
        f"Events produced: {produced}   decisions: {len(decisions)}   "
        f"fraud alerts: {len(alerts)}   dead letters: {len(dead)}"
    )
    statuses = Counter(d["status"] for d in decisions)
    say("Decisions by status: " + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    granted = [d for d in decisions if d["status"] == "granted"]
    actions = Counter(d["action"] for d in granted)
    cost = sum(d["cost"] for d in granted)
    say(
        "Rewards granted: "
        + (", ".join(f"{k} {v}" for k, v in actions.most_common()) or "none")
        + f"   total cost {cost:,.2f}"
    )
    if latencies:
        p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
        say(f"Event time to decision published: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    reasons = Counter(d["reason"] for d in dead)
    say(
        "Dead letters by reason: "
        + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none")
    )
    say("\nA few decisions (one per reward, then a refusal):")
    for record in _one_per_action(granted)[:4] + _refusals(decisions)[:1]:
        say("  " + render(record))
    if dead:
        say("A few dead letters:")
        seen: set[str] = set()
        for record in dead:
            if record["reason"] not in seen:
                seen.add(record["reason"])
                say("  " + render(record))


def _one_per_action(granted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for record in granted:
        first.setdefault(record["action"], record)
    return list(first.values())


def _refusals(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No-reward decisions on trigger events: the ones with something to explain."""
    explained = ("policy.nothing_eligible", "policy.below_minimum")
    return [d for d in decisions if d["status"] == "none" and d["reasons"][0] in explained]


def _percentile(values: list[int], q: int) -> float:
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def say(text: str) -> None:
    print(text, flush=True)
