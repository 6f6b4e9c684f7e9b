"""How long an erasure request waits for its receipt, under the demo's load.

A broker of its own and one worker; optionally ``state_users`` users signed up first
(each decided before the traffic starts), so that erasures meet a state of that size;
then the demo's traffic (simulated users with the attack scenarios, in event-time
order) at ``rate`` events/s, and every ``every`` events an erasure request for a user
seen so far. The wait of a decision (its
event sent → the decision readable, read_committed) and of a receipt (its request
sent → the receipt readable) are both taken on this process's clock, so they
compare directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.kafkaio import event_routes
from app.settings import Settings
from harness import localkafka
from harness.bench.throughput import signups
from harness.simulation.attacks import AttackConfig, generate
from harness.simulation.events import START_MS
from harness.workerproc import WorkerProcess

DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class ErasurePlan:
    rate: float = 200.0  # the demo's rate, events/s
    events: int = 6_000
    every: int = 40  # one erasure request per this many events
    runs: int = 3
    seed: int = 7
    state_users: int = 0  # users signed up and decided before the traffic


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one_run(
    settings: Settings, plan: ErasurePlan, seed: int, worker: WorkerProcess
) -> dict[str, Any]:
    config = AttackConfig(
        seed=seed,
        start_ms=START_MS,
        duration_ms=2 * DAY_MS,
        normal_users=max(50, plan.events // 15),
        normal_events=plan.events,
        program=settings.program,
    )
    lines = [orjson.dumps(labelled.document) for labelled in generate(config)][: plan.events]
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    requests: list[str] = []
    stop = asyncio.Event()

    async def collect() -> None:
        consumer = AIOKafkaConsumer(
            settings.topic_decisions,
            settings.topic_erasures,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                for tp, messages in (await consumer.getmany(timeout_ms=100)).items():
                    now = time.monotonic()
                    for message in messages:
                        document = orjson.loads(message.value)
                        name = "request_id" if tp.topic == settings.topic_erasures else "event_id"
                        arrived.setdefault(str(document[name]), now)
        finally:
            await consumer.stop()

    reader = asyncio.create_task(collect())
    routes = event_routes(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=0)
    await producer.start()
    filled_s = await _fill_state(settings, producer, plan.state_users, seed, arrived)
    settled = time.monotonic()
    if plan.state_users:
        # The sign-ups' decisions are readable before the worker is done with them (its
        # other stages work through them after): traffic sent then would measure that.
        await asyncio.to_thread(worker.wait_caught_up, 120 + plan.state_users / 1_000)
    settled_s = time.monotonic() - settled
    rng = random.Random(seed)
    seen_users: list[str] = []
    started = time.monotonic()
    try:
        for n, line in enumerate(lines):
            document = orjson.loads(line)
            seen_users.append(document["user_id"])
            sent[document["event_id"]] = time.monotonic()
            topic = routes.get(document["type"], settings.topic_events)
            await producer.send(topic, line, key=document["user_id"].encode())
            if n % plan.every == plan.every - 1:
                user = rng.choice(seen_users)
                request_id = f"bench-erase-{seed}-{n}"
                request = {
                    "event_id": request_id,
                    "user_id": user,
                    "type": "erasure_requested",
                    "ts": int(time.time() * 1000),
                }
                sent[request_id] = time.monotonic()
                requests.append(request_id)
                await producer.send(
                    settings.topic_erasure_requests, orjson.dumps(request), key=user.encode()
                )
            # Paced on the schedule, not per send: a slow send does not lower the rate.
            delay = started + (n + 1) / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(r not in arrived for r in requests):
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    stop.set()
    await reader
    receipts = [(arrived[r] - sent[r]) * 1000 for r in requests if r in arrived]
    decisions = [
        (arrived[e] - sent[e]) * 1000 for e in sent if e in arrived and e not in set(requests)
    ]
    return {
        "state_fill_s": round(filled_s, 1),
        "caught_up_s": round(settled_s, 1),
        "requests": len(requests),
        "receipts": len(receipts),
        "receipt_p50_ms": _quantile(receipts, 0.5),
        "receipt_p99_ms": _quantile(receipts, 0.99),
        "receipt_max_ms": max(receipts),
        "decision_p50_ms": _quantile(decisions, 0.5),
        "decision_p99_ms": _quantile(decisions, 0.99),
    }


async def _fill_state(
    settings: Settings,
    producer: AIOKafkaProducer,
    users: int,
    seed: int,
    arrived: dict[str, float],
) -> float:
    """Sign up ``users`` users (as the throughput bench builds its state) and wait until
    the worker has decided every one (their decisions land in ``arrived``); seconds."""
    started = time.monotonic()
    if not users:
        return 0.0
    ids = []
    for line in signups(users, seed):
        document = orjson.loads(line)
        ids.append(str(document["event_id"]))
        await producer.send(settings.topic_events, line, key=document["user_id"].encode())
    await producer.flush()
    deadline = started + 120 + users / 500
    while any(event_id not in arrived for event_id in ids[-100:]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not decide {users:,} sign-ups in time")
        await asyncio.sleep(0.5)
    missing = sum(event_id not in arrived for event_id in ids)
    if missing:
        raise RuntimeError(f"{missing} of {users:,} sign-ups were not decided")
    return time.monotonic() - started


def run_erasure_benchmark(
    base: Settings, plan: ErasurePlan, *, say: Callable[[str], None]
) -> dict[str, Any]:
    """``plan.runs`` runs, each on a fresh broker with a fresh worker; the median of each
    figure over the runs, and every run's own."""
    runs = []
    for run in range(plan.runs):
        home = Path(tempfile.mkdtemp(prefix="rewardstream-bench-erasure-"))
        info = localkafka.start(
            home, cache_dir=base.cache_dir, version=base.kafka_version, port=0, heap=base.kafka_heap
        )
        try:
            settings = dataclasses.replace(
                base,
                bootstrap_servers=info.bootstrap_servers,
                app_id=f"bench-erasure-{run}",
                data_dir=home / "state",
                web_port=localkafka.free_port(),
            )
            worker = WorkerProcess(settings, home / "worker.log").start()
            try:
                worker.wait_ready(120)
                found = asyncio.run(_one_run(settings, plan, plan.seed + run, worker))
            finally:
                worker.stop()
        finally:
            localkafka.stop(home)
        say(
            f"run {run + 1}: receipts {found['receipts']}/{found['requests']}, p50 "
            f"{found['receipt_p50_ms']:.0f} ms, p99 {found['receipt_p99_ms']:.0f} ms; "
            f"decisions p50 {found['decision_p50_ms']:.0f} ms, "
            f"p99 {found['decision_p99_ms']:.0f} ms"
        )
        runs.append(found)
    keys = [key for key in runs[0] if key.endswith("_ms")]
    median = {key: statistics.median(run[key] for run in runs) for key in keys}
    return {"plan": dataclasses.asdict(plan), "runs": runs, "median": median}


def erasure_markdown(report: dict[str, Any]) -> str:
    plan, median = report["plan"], report["median"]
    state = (
        f" after {plan['state_users']:,} users signed up and were decided"
        if plan.get("state_users")
        else ""
    )
    lines = [
        f"{plan['runs']} runs, each a fresh broker and worker; "
        f"{plan['events']:,} demo events{state} at {plan['rate']:g} events/s "
        f"with an erasure request every {plan['every']} events. "
        "Waits on the sending process's clock, to the record readable with read_committed; "
        "medians over the runs.",
        "",
        "| wait | p50 | p99 | max |",
        "|---|---|---|---|",
        f"| request → erasure receipt | {median['receipt_p50_ms']:.0f} ms | "
        f"{median['receipt_p99_ms']:.0f} ms | {median['receipt_max_ms']:.0f} ms |",
        f"| event → decision (same runs) | {median['decision_p50_ms']:.0f} ms | "
        f"{median['decision_p99_ms']:.0f} ms | |",
    ]
    return "\n".join(lines)
