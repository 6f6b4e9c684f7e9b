"""`rewardstream bench`: throughput, latency and state size, every figure in one run.

On one machine, with the same simulated payloads and partitions, it measures:

1. the ceiling: a raw aiokafka consume-produce loop moving a backlog between two
   topics, with no parsing at all: what Python and this broker allow;
2. the engine: a real worker (all three stages, the configured delivery
   guarantee) draining a backlog of the same events, counted on its /metrics;
3. latency under open-loop load at a fixed 200 events/s and at 50, 70 and 90% of
   the engine's measured maximum: each event's send time to the time its decision
   is read back (read_committed), in a log-linear histogram
   (:mod:`harness.bench.histogram`); then, at 200 events/s and at the 70% share, the same
   events through plain Kafka programs, each its own process, measured the same way
   (:mod:`harness.bench.anchors`): every latency figure has anchors from the same run;
4. offline replay: the same stages in-process with no broker (median of runs);
5. state per user: many distinct users (one sign-up each) through the pipeline
   in a fresh interpreter: bytes of their rows, and resident memory growth;
6. state per user with a history: the simulator's users after 30 simulated days
   of their traffic, replayed in-process through the same pipeline: bytes of
   their user rows and link rows, beside the sign-up-only figure.

Everything it starts (a broker of its own on a free port, a worker) it stops,
even on errors. It is a measurement: missing a target is a finding, reported
beside the figure, not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry

from app.assembly import build_engine
from app.contract.records import SourcePosition
from app.kafkaio import TopicRequest, ensure_topics, event_routes, produce, topic_requests
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables
from app.replay import BATCH_LINES, kafka_partitioner, replay
from app.settings import Settings
from harness.bench.anchors import (
    FIXED_RATE,
    Anchor,
    AnchorProcess,
    AnchorUnavailableError,
    anchor_command,
    anchor_env,
    anchor_rows,
    anchors_for,
    anchors_markdown,
    anchors_python,
)
from harness.bench.histogram import LatencyHistogram
from harness.bench.report import commit, machine
from harness.bench.restart import restart_time
from harness.simulation import EventSimulator, SimulatorConfig
from harness.simulation.events import CHANNELS, COUNTRIES, START_MS
from harness.simulation.live import produce_at_rate
from harness.workerproc import WorkerError, WorkerProcess, own_broker

PASSTHROUGH_IN = "bench-passthrough-in"
PASSTHROUGH_OUT = "bench-passthrough-out"
METRICS_POLL_S = 0.2
# The offered rates of the latency runs, as shares of the engine's measured maximum; the
# targets speak of 70%. The lower ones are what a worker can be planned at
# (harness.bench.report.planned_load): the highest whose p99 stays in real time.
LATENCY_SHARES = (0.3, 0.5, 0.7, 0.9)
HEADLINE_SHARE = 0.7
# Event types the simulator makes that belong on topics of their own (the project's
# producers route them: kafkaio.event_routes). On the events topic the worker
# dead-letters them, so they would never be decided: the drain would wait for them to
# its deadline and the latency runs would count them at the grace's end.
ROUTED_TYPES = frozenset(event_routes(Settings()))  # control events: topics of their own
# Before an anchor is measured, probe events show that it answers (its group joined, its
# topics made): so many, at this rate, at most so many tries.
PROBE_EVENTS = 20
PROBE_RATE = 50.0
PROBE_TRIES = 4
# The state run checks the memory left every so many users, and stops below this.
MEMORY_CHECK_EVERY = 10_000
MIN_AVAILABLE_BYTES = 2 * 2**30
# How unevenly the simulated users are active (activity falls off as 1/rank^skew): the
# busiest of 2,000 sends about 1% of the traffic.
TRAFFIC_SKEW = 0.5
# The state with a history: so many simulated days of the simulator's traffic, so many
# events per user on average (bench-learning's traffic: 50,000 events of 2,000 users
# over 30 days).
HISTORY_DAYS = 30
HISTORY_EVENTS_PER_USER = 25


@dataclasses.dataclass(frozen=True)
class BenchPlan:
    """How big a run is. The defaults are the full benchmark (about 35 minutes here, 20 of
    them the state of a million users)."""

    events: int = 50_000  # the backlog both loops drain, and the replay's input
    partitions: int = 4
    latency_seconds: float = 20.0  # of traffic per offered rate
    # Before the first recorded latency run, the worker and then each anchor take traffic at
    # the fixed rate for this long, unrecorded: right after the drain the broker spent
    # 6.4 ms of CPU per event on a worker's transactions, 2.3 ms a minute later (its JIT
    # compiling the transaction paths), and the anchors, which ran later, met it warm.
    warmup_seconds: float = 30.0
    state_users: int = 1_000_000
    # Simulated users whose 30 days of traffic build the state with a history: 26-34 s
    # here (50,000 events replayed in-process).
    history_users: int = 2_000
    restart_users: int = 1_000_000  # whose state a restarted worker restores
    replay_runs: int = 3
    # Simulated users behind the throughput events. The simulator's cost per event grows
    # with its user count, and a few thousand already give every user a history.
    users: int = 2_000
    seed: int = 7
    quick: bool = False

    def check(self) -> None:
        if min(self.events, self.partitions, self.state_users, self.replay_runs) < 1:
            raise ValueError("events, partitions, state users and replay runs must be >= 1")
        if self.history_users < 1:
            raise ValueError("history users must be >= 1")
        if self.restart_users < 2:
            raise ValueError("restart users must be >= 2 (the probe is the second)")
        if self.latency_seconds <= 0:
            raise ValueError("latency seconds must be above 0")
        if self.warmup_seconds < 0:
            raise ValueError("warm-up seconds must be 0 or more")


# About three minutes on a shared 2-core machine where the worker decides about 700 events
# a second, replay about 1,700 and the state run signs up about 1,300 users a second; the
# broker and worker start-ups take another 10 s, the state with a history (500 users'
# 12,500 events) about 5 s. Eleven latency runs of 5 s each (the worker's four and
# at_least_once's, two per anchor) and their waits are half of it.
QUICK_PLAN = BenchPlan(
    events=6_000,
    latency_seconds=5.0,
    warmup_seconds=5.0,
    state_users=20_000,
    history_users=500,
    restart_users=100_000,
    quick=True,
)
# Sign-ups whose rows the restart phase copies for its users.
RESTART_TEMPLATES = 256


def plan_for(quick: bool, **overrides: Any) -> BenchPlan:
    """The full or quick plan, with the options given (None: the plan's own value)."""
    plan = QUICK_PLAN if quick else BenchPlan()
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    plan.check()
    return plan


# ---------------------------------------------------------------- traffic


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    event_id: str
    key: bytes
    value: bytes


class Traffic:
    """The bench's events, from one seeded simulator: the backlog first, then each
    latency run's events, so every event id is new to the worker."""

    def __init__(self, users: int, seed: int, *, events_per_second: float | None = None) -> None:
        # events_per_second spaces the events' times (the simulator's 100 by default: the
        # bench's traffic, 2,000 users' events within minutes of event time).
        config = SimulatorConfig(users=users, seed=seed, skew=TRAFFIC_SKEW)
        if events_per_second is not None:
            config = dataclasses.replace(config, events_per_second=events_per_second)
        self.simulator = EventSimulator(config)

    def take(self, count: int) -> list[Message]:
        messages: list[Message] = []
        while len(messages) < count:
            # next_message, not next_event: it advances the sequence that numbers the
            # events and spaces their times (repeated ids would be decided as replays).
            value = self.simulator.next_message()
            event = orjson.loads(value)
            if event["type"].startswith("reward_"):
                continue  # answers to rewards need live decisions; this is about load
            if event["type"] in ROUTED_TYPES:
                continue  # dead-lettered as unauthorized on the events topic: no decision
            messages.append(Message(event["event_id"], event["user_id"].encode(), value))
        return messages


def signups(users: int, seed: int) -> Iterator[bytes]:
    """One sign-up for each of ``users`` distinct users, each on its own device, spread
    over networks like the simulator's users, 100 ms of event time apart."""
    draw = random.Random(seed)
    for number in range(users):
        yield orjson.dumps(
            {
                "event_id": f"ev-state-{number}",
                "user_id": f"u-state-{number:07d}",
                "type": "signup",
                "ts": START_MS + number * 100,
                "channel": draw.choice(CHANNELS),
                "device_id": f"dev-{draw.getrandbits(48):012x}",
                "ip": f"10.{draw.randrange(256)}.{draw.randrange(256)}.{draw.randrange(1, 255)}",
                "attributes": {"country": draw.choice(COUNTRIES), "age": draw.randint(16, 80)},
            }
        )


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class Figures:
    """What the phases measured, before it is shaped into the report."""

    passthrough_events_per_s: float = 0.0
    engine_events_per_s: float = 0.0
    # The same worker draining a second backlog after the latency runs, and the worker's
    # CPU per event in each drain (ms).
    engine_warm_events_per_s: float = 0.0
    engine_cpu_ms: float = 0.0
    engine_warm_cpu_ms: float = 0.0
    latency: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    latency_fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # FIXED_RATE
    anchors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    latency_at_least_once: dict[str, Any] = dataclasses.field(default_factory=dict)
    replay_runs: list[float] = dataclasses.field(default_factory=list)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: dict[str, Any] = dataclasses.field(default_factory=dict)  # state with a history
    restart: dict[str, Any] = dataclasses.field(default_factory=dict)
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase: the report says where the run's time went."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = round(time.perf_counter() - started, 2)


def run_throughput_benchmark(
    settings: Settings, plan: BenchPlan, *, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every phase in turn; the report as a dict."""
    settings = dataclasses.replace(settings, partitions=plan.partitions)
    figures = Figures()
    traffic = Traffic(plan.users, plan.seed)
    backlog = traffic.take(plan.events)
    say(f"Starting a broker of our own (Apache Kafka {settings.kafka_version})...")
    _on_own_broker(settings, plan, traffic, backlog, figures, say)
    say(f"Offline replay of the same {plan.events:,} events, {plan.replay_runs} runs...")
    with figures.phase("replay"):
        figures.replay_runs = replay_rates(settings, [m.value for m in backlog], plan.replay_runs)
    say(f"State of {plan.state_users:,} distinct users, in a fresh interpreter...")
    with figures.phase("state"):
        figures.state = state_in_child(settings, plan.state_users, plan.seed)
    say(
        f"State of {plan.history_users:,} simulated users after {HISTORY_DAYS} simulated days "
        "of their traffic, in-process..."
    )
    with figures.phase("state_history"):
        figures.history = history_footprint(settings, plan.history_users, plan.seed)
    return build_report(
        settings,
        plan,
        figures,
        machine_description=machine(),
        commit_id=commit(),
        finished_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _on_own_broker(
    settings: Settings,
    plan: BenchPlan,
    traffic: Traffic,
    backlog: list[Message],
    figures: Figures,
    say: Callable[[str], None],
) -> None:
    with contextlib.ExitStack() as stack:
        with figures.phase("broker_start"):
            settings = stack.enter_context(own_broker(settings, "bench"))
        _kafka_phases(settings, plan, traffic, backlog, figures, settings.data_dir, say)


def _kafka_phases(
    settings: Settings,
    plan: BenchPlan,
    traffic: Traffic,
    backlog: list[Message],
    figures: Figures,
    home: Path,
    say: Callable[[str], None],
) -> None:
    anchors = anchors_for(plan.quick)
    say(f"Producing the backlog: {len(backlog):,} events, twice (engine and raw loop)...")
    with figures.phase("produce_backlog"):
        asyncio.run(_prepare_topics(settings, backlog, anchors))
    say("Raw aiokafka consume-produce loop over the backlog...")
    with figures.phase("passthrough"):
        figures.passthrough_events_per_s = asyncio.run(passthrough_rate(settings, len(backlog)))
    points = _worker_latency(settings, plan, traffic, figures, home, say)
    _anchor_latency(settings, anchors, points, traffic, figures, say, plan.warmup_seconds)
    figures.latency_at_least_once = _headline_at_least_once(settings, plan, traffic, figures, say)
    say(f"Restart with {plan.restart_users:,} users' state in the changelogs...")
    with figures.phase("restart"):
        templates = signups(RESTART_TEMPLATES, plan.seed)
        figures.restart = restart_time(settings, plan.restart_users, home, templates)


@dataclasses.dataclass(frozen=True)
class Point:
    """An offered load the anchors are measured at, with the worker's very events."""

    name: str  # "fixed" or "headline"
    rate: float
    messages: list[Message]
    share: float | None = None


def _worker_latency(
    settings: Settings,
    plan: BenchPlan,
    traffic: Traffic,
    figures: Figures,
    home: Path,
    say: Callable[[str], None],
) -> list[Point]:
    """The drain, then open-loop runs at the fixed rate (first, on an idle worker) and
    at each share; the fixed and headline runs' events, for the anchors."""
    worker = WorkerProcess(settings, home / "worker.log")
    points: list[Point] = []

    def run(
        rate: float, seconds: float = plan.latency_seconds
    ) -> tuple[list[Message], dict[str, Any]]:
        return open_loop(settings, worker, traffic, rate, seconds)

    try:
        with figures.phase("worker_start"):
            worker.start().wait_ready()
        say(f"The worker drains the backlog ({settings.processing_guarantee})...")
        with figures.phase("engine_drain"):
            cpu = worker_cpu_seconds(worker)
            figures.engine_events_per_s = drain_rate(worker, plan.events)
            figures.engine_cpu_ms = 1000 * (worker_cpu_seconds(worker) - cpu) / plan.events
        if plan.warmup_seconds:
            say(
                f"Warm-up: {plan.warmup_seconds:g} s at {FIXED_RATE:,.0f} events/s, not recorded..."
            )
            with figures.phase("warmup"):
                run(FIXED_RATE, plan.warmup_seconds)
        say(f"Open-loop load at a fixed {FIXED_RATE:,.0f} events/s...")
        with figures.phase("latency_fixed"):
            messages, result = run(FIXED_RATE)
        figures.latency_fixed = {"share": None, **result}
        points.append(Point("fixed", FIXED_RATE, messages))
        for share in LATENCY_SHARES:
            rate = share * figures.engine_events_per_s
            say(f"Open-loop load at {share:.0%} of the drain rate: {rate:,.0f} events/s...")
            with figures.phase(f"latency_{round(share * 100)}"):
                messages, result = run(rate)
            figures.latency.append({"share": share, **result})
            if share == HEADLINE_SHARE:
                points.append(Point("headline", rate, messages, share))
        say(f"The worker drains a second backlog of {plan.events:,} events, over its state...")
        with figures.phase("engine_drain_warm"):
            backlog = [m.value for m in traffic.take(plan.events)]
            figures.engine_warm_events_per_s, figures.engine_warm_cpu_ms = second_drain(
                settings, worker, backlog
            )
    finally:
        worker.stop()
    return points


def open_loop(
    settings: Settings, worker: WorkerProcess, traffic: Traffic, rate: float, seconds: float
) -> tuple[list[Message], dict[str, Any]]:
    """``seconds`` of the traffic's next events at ``rate``, open-loop, to ``worker``: the
    events sent and their latency entry."""
    messages = traffic.take(max(1, round(rate * seconds)))
    return messages, asyncio.run(latency_at_rate(settings, messages, rate=rate, worker=worker))


def worker_cpu_seconds(worker: WorkerProcess) -> float:
    """The user and system CPU time the running worker has used so far."""
    assert worker.process is not None
    return cpu_seconds(worker.process.pid)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds_if_alive(pid: int) -> float | None:
    """:func:`cpu_seconds`, or None once the process is gone (a run then fails on its own
    terms, not on reading its CPU)."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


def second_drain(
    settings: Settings, worker: WorkerProcess, backlog: list[bytes]
) -> tuple[float, float]:
    """Events per second, and the worker's CPU ms per event, deciding ``backlog`` over
    the state the worker holds by now.

    A worker that has decided a hundred thousand events holds fuller rows than one that
    drains a first backlog from empty tables (users with grants and answers, devices and
    networks with their accounts), and each event costs it more: this is its maximum on
    a state like production's. The backlog is written while the worker is stopped
    (SIGSTOP: its group session outlasts the second or two), so it drains a backlog
    rather than chasing the writer.
    """
    assert worker.process is not None
    before = _decided(worker) or 0.0
    worker.process.send_signal(signal.SIGSTOP)
    try:
        asyncio.run(produce(settings.bootstrap_servers, settings.topic_events, backlog))
    finally:
        worker.process.send_signal(signal.SIGCONT)
    cpu = worker_cpu_seconds(worker)
    rate = drain_rate(worker, round(before) + len(backlog))
    return rate, 1000 * (worker_cpu_seconds(worker) - cpu) / len(backlog)


def _anchor_latency(
    settings: Settings,
    anchors: Iterable[Anchor],
    points: list[Point],
    traffic: Traffic,
    figures: Figures,
    say: Callable[[str], None],
    warmup_seconds: float,
) -> None:
    """Each anchor in its own process, at the points' rates with the points' events."""
    python = anchors_python()
    for anchor in anchors:
        say(f"Anchor: {anchor.label}...")
        with figures.phase(f"anchor_{anchor.name}"):
            figures.anchors.extend(
                _one_anchor(settings, anchor, python, points, traffic, say, warmup_seconds)
            )


def _one_anchor(
    settings: Settings,
    anchor: Anchor,
    python: Path | None,
    points: list[Point],
    traffic: Traffic,
    say: Callable[[str], None],
    warmup_seconds: float = 0.0,
) -> list[dict[str, Any]]:
    """The anchor's latency at each point, after ``warmup_seconds`` at the fixed rate
    unrecorded; a row saying why for an anchor that could not run or stopped answering (a
    measurement: the other figures still count)."""

    def row(point: Point, **found: Any) -> dict[str, Any]:
        where = {"point": point.name, "system": anchor.name, "label": anchor.label}
        return {**where, "share": point.share, **found}

    state_dir = settings.data_dir / f"anchor-{anchor.name}-state"
    try:
        command = anchor_command(anchor, settings, python=python, state_dir=state_dir)
    except AnchorUnavailableError as why:
        say(f"  not run: {why}")
        return [row(point, error=str(why)) for point in points]
    log = settings.data_dir / f"anchor-{anchor.name}.log"
    process = AnchorProcess(command, log, env=anchor_env(anchor))
    hop = Hop(anchor.input_topic, anchor.output_topic)
    try:
        process.start()
        asyncio.run(_probe(settings, hop, process, traffic))
        if warmup_seconds:
            warmup = traffic.take(max(1, round(FIXED_RATE * warmup_seconds)))
            asyncio.run(latency_at_rate(settings, warmup, rate=FIXED_RATE, worker=process, hop=hop))
        rows = []
        for point in points:
            say(f"  at {point.rate:,.0f} events/s ({len(point.messages):,} events)...")
            found = asyncio.run(
                latency_at_rate(settings, point.messages, rate=point.rate, worker=process, hop=hop)
            )
            rows.append(row(point, **found))
        return rows
    except WorkerError as error:
        say(f"  stopped: {error}")
        reason = f"the anchor failed (see {process.log_path.name})"
        return [row(point, error=reason) for point in points]
    finally:
        process.stop()


async def _probe(settings: Settings, hop: Hop, process: Watched, traffic: Traffic) -> None:
    """Until a whole probe is answered: the anchor has joined its group, made its topics
    and warmed up. Raise if it never is."""
    for _ in range(PROBE_TRIES):
        probe = traffic.take(PROBE_EVENTS)
        found = await latency_at_rate(settings, probe, rate=PROBE_RATE, worker=process, hop=hop)
        if found["undecided"] == 0:
            return
    raise WorkerError(f"no whole probe answered in {PROBE_TRIES} tries:\n{process.log_tail()}")


def _headline_at_least_once(
    settings: Settings,
    plan: BenchPlan,
    traffic: Traffic,
    figures: Figures,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The headline load again on a worker with ``at_least_once``: what the transactions
    cost in latency, for users who can take a repeated decision after a crash. The worker
    starts over the state the exactly-once worker left, so it gets the same warm-up first
    (its tables restored and its decoded rows filled, as the other worker's were)."""
    relaxed = dataclasses.replace(settings, processing_guarantee="at_least_once")
    rate = HEADLINE_SHARE * figures.engine_events_per_s
    say(f"The same {rate:,.0f} events/s on a worker with at_least_once...")
    worker = WorkerProcess(relaxed, settings.data_dir / "worker-at-least-once.log")
    try:
        with figures.phase("latency_at_least_once"):
            worker.start().wait_ready()
            if plan.warmup_seconds:
                open_loop(relaxed, worker, traffic, FIXED_RATE, plan.warmup_seconds)
            _, result = open_loop(relaxed, worker, traffic, rate, plan.latency_seconds)
    finally:
        worker.stop()
    return {"share": HEADLINE_SHARE, **result}


async def _prepare_topics(
    settings: Settings, backlog: list[Message], anchors: Iterable[Anchor] = ()
) -> None:
    """The engine's topics, the raw loop's and the anchors', and the backlog in both
    input topics."""
    names = [PASSTHROUGH_IN, PASSTHROUGH_OUT]
    names += [topic for a in anchors for topic in (a.input_topic, a.output_topic)]
    raw = [TopicRequest(name, settings.partitions, 1) for name in names]
    await ensure_topics(settings.bootstrap_servers, [*topic_requests(settings), *raw])
    values = [m.value for m in backlog]
    for topic in (settings.topic_events, PASSTHROUGH_IN):
        await produce(settings.bootstrap_servers, topic, values)


# ---------------------------------------------------------------- 1. the raw ceiling


class _Assigned(ConsumerRebalanceListener):
    """Remembers when the group gave the consumer its partitions: the clock starts then,
    as the engine's starts when its worker is ready."""

    def __init__(self) -> None:
        self.at: float | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.at = time.perf_counter()


async def passthrough_rate(settings: Settings, total: int) -> float:
    """Events per second a plain consume-produce loop moves: a consumer group, batches as
    big as the worker's, no parsing, sends not awaited one by one, a flush and an offset
    commit per batch (without them it would not be a loop one could restart)."""
    common = {"bootstrap_servers": settings.bootstrap_servers}
    consumer = AIOKafkaConsumer(
        group_id="bench-passthrough",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **common,
    )
    producer = AIOKafkaProducer(
        acks="all", enable_idempotence=True, linger_ms=settings.linger_ms, **common
    )
    assigned = _Assigned()
    await consumer.start()
    await producer.start()
    try:
        consumer.subscribe([PASSTHROUGH_IN], listener=assigned)
        moved = 0
        while moved < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.batch_max_records)
            for messages in batches.values():
                for message in messages:
                    await producer.send(PASSTHROUGH_OUT, message.value, key=message.key)
                moved += len(messages)
            await producer.flush()
            await consumer.commit()
        return total / (time.perf_counter() - (assigned.at or time.perf_counter()))
    finally:
        await consumer.stop()
        await producer.stop()


# ---------------------------------------------------------------- 2. the engine


def decisions_in(metrics_page: str) -> float:
    """The worker's decision count: the sum of its ``rewardstream_decisions_total`` series."""
    pattern = r"^rewardstream_decisions_total\{[^}]*\} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, metrics_page, re.M))


def link_records(metrics_page: str) -> tuple[float, float]:
    """Decided events' copies for the link stage: (sent, handled) so far."""
    steps = dict.fromkeys(("sent", "handled"), 0.0)
    pattern = r'^rewardstream_link_records_total\{step="(sent|handled)"\} (\S+)$'
    for step, value in re.findall(pattern, metrics_page, re.M):
        steps[step] += float(value)
    return steps["sent"], steps["handled"]


def links_behind(metrics_page: str) -> float:
    """Decided events' copies the link stage has yet to handle (sent minus handled)."""
    sent, handled = link_records(metrics_page)
    return sent - handled


def _decided(worker: WorkerProcess) -> float | None:
    status, body = worker.get("/metrics")
    return decisions_in(body.decode()) if status == 200 else None


def _drained(worker: WorkerProcess) -> tuple[float, float]:
    """Decisions so far, and the link stage's records behind them."""
    status, body = worker.get("/metrics")
    if status != 200:
        return 0.0, 0.0
    page = body.decode()
    return decisions_in(page), links_behind(page)


def drain_rate(worker: WorkerProcess, total: int) -> float:
    """Events per second the ready worker takes through every stage until ``total`` are
    decided and the link stage has handled what they sent it.

    A backlog is drained once its events' link records are handled too: the decide
    stage runs ahead of the link stage, and counting decisions alone gave a rate 6.7%
    above the worker's in a drain measured both ways (docs/decisions.md, entry 36).
    Decisions made before the first count (the worker got ready a moment before the poll
    saw it) are left out of both the count and the time.
    """
    first = _decided(worker) or 0.0
    started = time.perf_counter()
    deadline = started + max(120.0, total / 50)  # a worker slower than this is broken
    while True:
        decided, behind = _drained(worker)
        if decided >= total and behind <= 0:
            break
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise WorkerError(f"the worker exited while draining:\n{worker.log_tail()}")
        if time.perf_counter() > deadline:
            raise WorkerError(
                f"the worker decided {decided:.0f} of {total} events in time, "
                f"{behind:.0f} link records behind"
            )
        time.sleep(METRICS_POLL_S)
    return (decided - first) / (time.perf_counter() - started)


# ---------------------------------------------------------------- 3. latency


@dataclasses.dataclass
class SendLog:
    """When each event of a latency run was handed to the producer (perf_counter ns),
    until its decision is read back."""

    pending: dict[str, int] = dataclasses.field(default_factory=dict)
    sent: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def stamped(self, messages: Iterable[Message]) -> Iterator[tuple[bytes | None, bytes]]:
        """``messages`` for the producer, each stamped as it is taken: the producer takes
        the next one just before sending it, at the schedule of the offered rate."""
        for message in messages:
            now = time.perf_counter_ns()
            self.pending[message.event_id] = now
            self.first_ns = self.first_ns or now
            self.last_ns = now
            self.sent += 1
            yield message.key, message.value


def event_id_in_value(value: bytes | None) -> str | None:
    """The ``event_id`` of a JSON object value: the event a decision (or an anchor's
    output) answers; None for anything else."""
    try:
        document = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    found = document.get("event_id") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


@dataclasses.dataclass(frozen=True)
class Hop:
    """Where a latency run sends its events, where it reads what answers them, and how
    an answer names its event."""

    input_topic: str
    output_topic: str
    answers: Callable[[bytes | None], str | None] = event_id_in_value


class Watched(Protocol):
    """A process under load (the worker, an anchor): a run stops if it exits."""

    process: subprocess.Popen[bytes] | None

    def log_tail(self, lines: int = 40) -> str: ...


async def latency_at_rate(
    settings: Settings,
    messages: list[Message],
    *,
    rate: float,
    worker: Watched,
    hop: Hop | None = None,
) -> dict[str, Any]:
    """Offer ``messages`` at ``rate`` per second (open loop: the schedule never waits for
    a decision) and time each event from its send to its answer read back.

    ``hop`` says where: by default the worker's events and decisions topics; for an
    anchor its own input and output topics."""
    hop = hop or Hop(settings.topic_events, settings.topic_decisions)
    log, histogram = SendLog(), LatencyHistogram()
    consumer = await _outputs_from_now(settings, hop.output_topic)
    reading = asyncio.create_task(_time_answers(consumer, hop, log, histogram))
    assert worker.process is not None
    pid = worker.process.pid
    cpu = _cpu_seconds_if_alive(pid)
    try:
        await produce_at_rate(
            settings.bootstrap_servers,
            hop.input_topic,
            log.stamped(messages),
            rate=rate,
            total=len(messages),
            show_progress=False,
        )
        await _until_decided(log, worker, grace_s=max(10.0, len(messages) / rate))
        now_cpu = _cpu_seconds_if_alive(pid)
        used_s = None if cpu is None or now_cpu is None else now_cpu - cpu
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await consumer.stop()
    undecided = _count_undecided(log, histogram)
    return latency_entry(rate, log, histogram, undecided, cpu_s=used_s)


async def _outputs_from_now(settings: Settings, topic: str) -> AIOKafkaConsumer:
    """A consumer of ``topic`` (decisions, or an anchor's outputs) positioned at its
    current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # a decision counts once its transaction commits
        fetch_max_wait_ms=5,
        # The fetcher's idle poll (200 ms by default) would be measured as engine latency.
        consumer_timeout_ms=5,
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)  # resolve "the end" now, before anything is sent
    return consumer


async def _time_answers(
    consumer: AIOKafkaConsumer, hop: Hop, log: SendLog, histogram: LatencyHistogram
) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        now = time.perf_counter_ns()
        for messages in batches.values():
            for message in messages:
                event_id = hop.answers(message.value)
                sent = log.pending.pop(event_id, None) if event_id is not None else None
                if sent is not None:
                    histogram.record((now - sent) / 1e6)


async def _until_decided(log: SendLog, worker: Watched, *, grace_s: float) -> None:
    """Wait, at most ``grace_s`` after the last send, for the last decisions."""
    deadline = time.monotonic() + grace_s
    while log.pending and time.monotonic() < deadline:
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise WorkerError(f"the process exited under load:\n{worker.log_tail()}")
        await asyncio.sleep(0.05)


def _count_undecided(log: SendLog, histogram: LatencyHistogram) -> int:
    """Events still waiting when the grace ran out count at the wait so far: a lower
    bound, but leaving them out would flatter the percentiles."""
    now = time.perf_counter_ns()
    for sent in log.pending.values():
        histogram.record((now - sent) / 1e6)
    return len(log.pending)


def latency_entry(
    rate: float,
    log: SendLog,
    histogram: LatencyHistogram,
    undecided: int,
    *,
    cpu_s: float | None = None,
) -> dict[str, Any]:
    """One latency run as a report entry (times in milliseconds). ``cpu_s``: the CPU
    the process under load used from the first send to the last answer (or the end of
    the grace), reported per event sent: a steady run's cost an event, beside a
    drain's."""
    span_s = (log.last_ns - log.first_ns) / 1e9
    entry: dict[str, Any] = {
        "offered_rate": round(rate, 1),
        "achieved_rate": round((log.sent - 1) / span_s, 1) if span_s > 0 else None,
        "events": log.sent,
        "undecided": undecided,
        "cpu_ms": round(1000 * cpu_s / log.sent, 3) if cpu_s is not None and log.sent else None,
    }
    for name, q in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9), ("max_ms", 100)):
        entry[name] = round(histogram.percentile(q), 2) if histogram.count else None
    return entry


# ---------------------------------------------------------------- 4. offline replay


def replay_rates(settings: Settings, lines: list[bytes], runs: int) -> list[float]:
    """Events per second of ``replay()`` over ``lines``, each run with a fresh engine."""
    rates = []
    for _ in range(runs):
        engine = build_engine(settings)
        started = time.perf_counter()
        for _ in replay(
            engine,
            lines,
            source_name="bench",
            max_event_bytes=settings.max_event_bytes,
            state_ttl_ms=settings.state_ttl_ms,
        ):
            pass
        rates.append(len(lines) / (time.perf_counter() - started))
    return rates


# ---------------------------------------------------------------- 5. state per user


def proc_kib(text: str, field: str) -> int:
    """The bytes of a ``<field>: <n> kB`` line of a /proc file (status, meminfo)."""
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    if found is None:
        raise ValueError(f"no {field} line")
    return int(found.group(1)) * 1024


def vm_rss_bytes(status: str) -> int:
    """Resident memory from the text of ``/proc/<pid>/status``."""
    return proc_kib(status, "VmRSS")


def state_in_child(settings: Settings, users: int, seed: int) -> dict[str, Any]:
    """:func:`state_footprint` in a fresh interpreter: memory this process freed earlier
    would otherwise be reused and hide part of the growth."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(state_footprint, settings, users, seed).result()


def mem_available_bytes(meminfo: str) -> int:
    """Memory the kernel could still give, from the text of ``/proc/meminfo``."""
    return proc_kib(meminfo, "MemAvailable")


def in_process_pipeline(settings: Settings) -> Pipeline:
    """The worker's stages in-process, users placed as Kafka's partitioner would."""
    return Pipeline(
        build_engine(settings),
        Metrics(CollectorRegistry()),
        max_event_bytes=settings.max_event_bytes,
        partitioner=kafka_partitioner(settings.partitions),
        state_ttl_ms=settings.state_ttl_ms,
    )


def state_footprint(settings: Settings, users: int, seed: int) -> dict[str, Any]:
    """Build the state of ``users`` distinct users through the pipeline, as the worker
    would; measure the bytes of their rows and the growth of resident memory."""
    pipeline = in_process_pipeline(settings)
    tables = Tables(users={}, ledgers={})
    gc.collect()
    before = vm_rss_bytes(Path("/proc/self/status").read_text())
    built = _build_users(pipeline, tables, users, seed)
    gc.collect()
    growth = vm_rss_bytes(Path("/proc/self/status").read_text()) - before
    return state_entry(built, tables, growth, wanted=users)


def _build_users(pipeline: Pipeline, tables: Tables, users: int, seed: int) -> int:
    """Sign up to ``users`` users; stop early, rather than push a shared machine into the
    OOM killer, when less than ``MIN_AVAILABLE_BYTES`` of memory is left. How many?"""
    for number, value in enumerate(signups(users, seed)):
        if number and number % MEMORY_CHECK_EVERY == 0 and _memory_short():
            return number
        pipeline.handle(tables, SourcePosition("bench-state", 0, number), value)
    return users


def _memory_short() -> bool:
    return mem_available_bytes(Path("/proc/meminfo").read_text()) < MIN_AVAILABLE_BYTES


def _value_bytes(table: Iterable[bytes | None]) -> int:
    return sum(len(value) for value in table if value)


def _bytes_per_user(tables: Tables, users: int) -> dict[str, float]:
    """The bytes of the user rows, of the link rows (devices, networks) and of the offer
    timers in ``tables``, per user of ``users``; ledgers are per partition, not per user.
    A timer is all key (app.timers): its key and value are counted; a row's value."""
    user_bytes = _value_bytes(tables.users.values())
    link_bytes = _value_bytes(tables.links.values())
    timer_bytes = sum(len(key) + len(value or b"") for key, value in tables.timers.items())
    return {
        "user_state_bytes_per_user": round(user_bytes / users, 1),
        "link_bytes_per_user": round(link_bytes / users, 1),
        "timer_bytes_per_user": round(timer_bytes / users, 1),
        "bytes_per_user": round((user_bytes + link_bytes + timer_bytes) / users, 1),
    }


def state_entry(users: int, tables: Tables, rss_growth: int, *, wanted: int) -> dict[str, Any]:
    """The state figures of ``users`` users (of ``wanted``) held in ``tables``."""
    return {
        "users": users,
        "users_wanted": wanted,
        "stopped_early": users < wanted,  # memory ran short first
        "user_rows": len(tables.users),
        "link_rows": len(tables.links),
        **_bytes_per_user(tables, users),
        "rss_growth_bytes": rss_growth,
        "rss_bytes_per_user": round(rss_growth / users, 1),
    }


# ---------------------------------------------------------------- 6. state with a history


def history_events(
    users: int,
    seed: int,
    *,
    days: float = HISTORY_DAYS,
    events_per_user: int = HISTORY_EVENTS_PER_USER,
) -> Iterator[bytes]:
    """The simulator's traffic of ``users`` users (the bench's skew) over ``days``
    simulated days, ``events_per_user`` events per user on average: every type the worker
    decides, answers to rewards and consent changes included, none malformed."""
    total = users * events_per_user
    simulator = EventSimulator(
        SimulatorConfig(
            users=users,
            seed=seed,
            start_ms=START_MS,
            events_per_second=total / (days * 86_400),
            skew=TRAFFIC_SKEW,
        )
    )
    for _ in range(total):
        yield simulator.next_message()


def history_footprint(settings: Settings, users: int, seed: int) -> dict[str, Any]:
    """The state the simulator's ``users`` users build in :data:`HISTORY_DAYS` simulated
    days of their traffic, replayed through the pipeline in-process (changed rows
    written back once per batch of lines, as replay and the worker do): the bytes of
    their user rows and link rows."""
    pipeline = in_process_pipeline(settings)
    tables = Tables(users={}, ledgers={})
    events = 0
    for number, value in enumerate(history_events(users, seed)):
        source = SourcePosition("bench-history", 0, number)
        pipeline.handle(tables, source, value, flush=number % BATCH_LINES == 0)
        events += 1
    pipeline.flush(tables)
    return history_entry(tables, simulated_users=users, events=events, days=HISTORY_DAYS)


def history_entry(
    tables: Tables, *, simulated_users: int, events: int, days: float
) -> dict[str, Any]:
    """The state figures of the users with a row in ``tables`` after ``events`` events of
    ``simulated_users`` simulated users over ``days`` simulated days."""
    sizes = sorted(len(value) for value in tables.users.values() if value)
    users = len(sizes)
    if not users:
        raise ValueError("no user has a row: nothing to measure")
    return {
        "simulated_users": simulated_users,
        "users": users,
        "days": days,
        "events": events,
        "events_per_user": round(events / users, 1),
        "user_rows": len(tables.users),
        "link_rows": len(tables.links),
        **_bytes_per_user(tables, users),
        "user_row_bytes_p50": sizes[(users - 1) // 2],
        "user_row_bytes_max": sizes[-1],
    }


# ---------------------------------------------------------------- the report


def build_report(
    settings: Settings,
    plan: BenchPlan,
    figures: Figures,
    *,
    machine_description: str,
    commit_id: str,
    finished_at: str,
) -> dict[str, Any]:
    headline = next(e for e in figures.latency if e["share"] == HEADLINE_SHARE)
    passthrough, engine = figures.passthrough_events_per_s, figures.engine_events_per_s
    return {
        "commit": commit_id,
        "machine": machine_description,
        "finished_at": finished_at,
        "python": sys.version.split()[0],
        "quick": plan.quick,
        "events": plan.events,
        "partitions": plan.partitions,
        "simulated_users": plan.users,
        "processing_guarantee": settings.processing_guarantee,
        "passthrough_events_per_s": round(passthrough, 1),
        "engine_events_per_s": round(engine, 1),
        "engine_cpu_ms_per_event": round(figures.engine_cpu_ms, 3),
        "engine_warm_events_per_s": round(figures.engine_warm_events_per_s, 1),
        "engine_warm_cpu_ms_per_event": round(figures.engine_warm_cpu_ms, 3),
        "ratio": round(engine / passthrough, 4) if passthrough else 0.0,
        "latency_seconds": plan.latency_seconds,
        "warmup_seconds": plan.warmup_seconds,
        "offered_rate": headline["offered_rate"],
        "p50_ms": headline["p50_ms"],
        "p99_ms": headline["p99_ms"],
        "p999_ms": headline["p999_ms"],
        "latency": figures.latency,
        "latency_fixed_rate": figures.latency_fixed,
        "latency_at_least_once": figures.latency_at_least_once,
        # The worker beside the anchors at the same offered rates, with its ratios to each.
        "anchor_latency": anchor_rows(
            {"fixed": figures.latency_fixed, "headline": headline},
            figures.anchors,
            label=f"rewardstream worker, {settings.processing_guarantee}",
        ),
        "replay_events_per_s": round(statistics.median(figures.replay_runs), 1),
        "replay_runs_events_per_s": [round(r, 1) for r in figures.replay_runs],
        "state_users": figures.state["users"],
        "bytes_per_user": figures.state["bytes_per_user"],
        "rss_bytes_per_user": figures.state["rss_bytes_per_user"],
        "state": figures.state,
        # The same bytes for users with a history: 30 simulated days of their traffic.
        "history_users": figures.history["users"],
        "history_bytes_per_user": figures.history["bytes_per_user"],
        "history": figures.history,
        "restart_users": figures.restart["users"],
        "restart_ready_s": figures.restart["cold_ready_s"],
        "restart_first_decision_s": figures.restart["cold_first_decision_s"],
        "restart_warm_first_decision_s": figures.restart["warm_first_decision_s"],
        "restart": figures.restart,
        "phase_seconds": figures.phase_seconds,
    }


@dataclasses.dataclass(frozen=True)
class Target:
    figure: str  # the report's key
    label: str
    goal: str
    met: Callable[[float], bool]


TARGETS = (
    # Issue 14's targets ("Real time"); the ratio to the raw loop is issue 6's.
    Target("engine_events_per_s", "engine throughput", ">= 5,000 events/s", lambda v: v >= 5_000),
    Target("ratio", "engine / raw Kafka loop", ">= 0.15", lambda v: v >= 0.15),
    Target("p99_ms", "p99 latency at 70% of max", "<= 150 ms", lambda v: v <= 150),
    Target("replay_events_per_s", "offline replay", ">= 10,000 events/s", lambda v: v >= 10_000),
    Target(
        "bytes_per_user", "state per user (one sign-up each)", "<= 500 bytes", lambda v: v <= 500
    ),
    Target(
        "restart_first_decision_s",
        "restart with 1,000,000 users to deciding",
        "<= 15 s",
        lambda v: v <= 15,
    ),
)


def targets_met(report: dict[str, Any]) -> list[tuple[Target, bool]]:
    """Each target and whether the report's figure meets it (a missing figure does not)."""
    return [(t, _measured(report, t) and t.met(report[t.figure])) for t in TARGETS]


def _measured(report: dict[str, Any], target: Target) -> bool:
    """Whether the report has the target's figure at the target's scale."""
    if report.get(target.figure) is None:
        return False
    return target.figure != "restart_first_decision_s" or report["restart_users"] >= 1_000_000


def targets_summary(report: dict[str, Any]) -> str:
    results = targets_met(report)
    met = sum(ok for _, ok in results)
    listed = "; ".join(f"{t.label} {_verdict(report, t, ok)}" for t, ok in results)
    return f"Targets met: {met} of {len(results)} ({listed})."


def _verdict(report: dict[str, Any], target: Target, ok: bool) -> str:
    """Met, missed, or not measured at the scale the target names (a quick run's restart)."""
    if ok:
        return "met"
    if report.get(target.figure) is not None and not _measured(report, target):
        return "not measured at its scale"
    return "missed"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def throughput_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the figures beside their targets, latency per rate, then
    the worker's latency beside the anchors measured in the same run."""
    anchors = anchors_markdown(report.get("anchor_latency", []))
    return "\n".join(
        [
            _setup_line(report),
            "",
            *_figure_rows(report),
            "",
            *_latency_rows(report),
            *(["", *anchors] if anchors else []),
        ]
    )


def _figure_rows(report: dict[str, Any]) -> list[str]:
    cell = {"met": "yes", "missed": "no", "not measured at its scale": "not at this size"}
    met = {t.figure: cell[_verdict(report, t, ok)] for t, ok in targets_met(report)}
    state, history, restart = report["state"], report["history"], report["restart"]
    return [
        "| figure | value | target | met |",
        "|---|---:|---:|---|",
        f"| raw aiokafka consume-produce loop (the ceiling) "
        f"| {report['passthrough_events_per_s']:,.0f} events/s | | |",
        f"| engine, one worker draining a backlog | {report['engine_events_per_s']:,.0f} events/s "
        f"| >= 5,000 events/s | {met['engine_events_per_s']} |",
        f"| engine / raw loop | {report['ratio']:.3f} | >= 0.15 | {met['ratio']} |",
        f"| the same worker draining a second backlog after the latency runs, over the state "
        f"they left | {report['engine_warm_events_per_s']:,.0f} events/s | | |",
        f"| worker CPU per event, first / second drain | "
        f"{report['engine_cpu_ms_per_event']:.3f} / {report['engine_warm_cpu_ms_per_event']:.3f}"
        " ms | | |",
        f"| latency at 70% of max ({report['offered_rate']:,.0f} events/s offered), "
        f"p50 / p99 / p99.9 | {_ms(report['p50_ms'])} / {_ms(report['p99_ms'])} / "
        f"{_ms(report['p999_ms'])} ms | p99 <= 150 ms | {met['p99_ms']} |",
        f"| offline replay, median of {len(report['replay_runs_events_per_s'])} "
        f"| {report['replay_events_per_s']:,.0f} events/s | >= 10,000 events/s "
        f"| {met['replay_events_per_s']} |",
        f"| state per user at {state['users']:,} users, one sign-up each (user row "
        f"{state['user_state_bytes_per_user']:,.0f} + link rows "
        f"{state['link_bytes_per_user']:,.0f}) | {report['bytes_per_user']:,.0f} bytes "
        f"| <= 500 bytes | {met['bytes_per_user']} |",
        f"| state per user after {history['days']:g} simulated days of the simulator's "
        f"traffic, {history['users']:,} users, {history['events_per_user']:,.1f} events each "
        f"on average (user row {history['user_state_bytes_per_user']:,.0f} + link rows "
        f"{history['link_bytes_per_user']:,.0f}; user rows: median "
        f"{history['user_row_bytes_p50']:,}, largest {history['user_row_bytes_max']:,}) "
        f"| {history['bytes_per_user']:,.0f} bytes | | |",
        f"| resident memory growth per user | {report['rss_bytes_per_user']:,.0f} bytes | | |",
        f"| restart with {restart['users']:,} users' state, from the changelogs alone "
        f"({restart['cold_records_restored']:,} records): ready / first decision "
        f"| {restart['cold_ready_s']:,.1f} / {restart['cold_first_decision_s']:,.1f} s "
        f"| <= 15 s at 1,000,000 users | {met['restart_first_decision_s']} |",
        f"| the same restart from local snapshots ({restart['warm_records_restored']:,} "
        f"records after them): ready / first decision | {restart['warm_ready_s']:,.1f} / "
        f"{restart['warm_first_decision_s']:,.1f} s | | |",
    ]


def _setup_line(report: dict[str, Any]) -> str:
    state, history = report["state"], report["history"]
    short = (
        f" (of {state['users_wanted']:,} asked for: memory ran low)"
        if state["stopped_early"]
        else ""
    )
    quick = " Quick mode: a smaller run than the full benchmark." if report["quick"] else ""
    return (
        f"{report['events']:,} simulated events ({report['simulated_users']:,} users), "
        f"{report['partitions']} partitions, {report['processing_guarantee']}, one worker and "
        f"a broker of its own on this machine; {report['latency_seconds']:g} s of open-loop "
        f"traffic per latency run, after {report.get('warmup_seconds', 0):g} s at the fixed "
        "rate unrecorded (the worker's and each anchor's); state from one sign-up each of "
        f"{state['users']:,} "
        f"distinct users{short}, and from {history['days']:g} simulated days of traffic of "
        f"{history['simulated_users']:,} simulated users ({history['events']:,} events, "
        f"replayed in-process).{quick}"
    )


def _latency_rows(report: dict[str, Any]) -> list[str]:
    rows = [
        "Latency, event sent to its decision read back (read_committed), by offered load:",
        "",
        "| guarantee | share of max | offered events/s | achieved | events | undecided "
        "| p50 ms | p99 ms | p99.9 ms | max ms | worker CPU ms an event |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = [(report["processing_guarantee"], e) for e in report["latency"]]
    if report.get("latency_fixed_rate"):
        runs.insert(0, (report["processing_guarantee"], report["latency_fixed_rate"]))
    if report.get("latency_at_least_once"):
        runs.append(("at_least_once", report["latency_at_least_once"]))
    for guarantee, e in runs:
        achieved = "n/a" if e["achieved_rate"] is None else f"{e['achieved_rate']:,.0f}"
        share = "fixed" if e.get("share") is None else f"{e['share']:.0%}"
        rows.append(
            f"| {guarantee} | {share} | {e['offered_rate']:,.0f} | {achieved} "
            f"| {e['events']:,} | {e['undecided']:,} | {_ms(e['p50_ms'])} "
            f"| {_ms(e['p99_ms'])} | {_ms(e['p999_ms'])} | {_ms(e['max_ms'])} "
            f"| {_cpu_ms(e.get('cpu_ms'))} |"
        )
    rows += [
        "",
        "A latency run's CPU an event is the worker's over the run, beside a drain's in the "
        "table above: a steady worker's commits hold far fewer events than a drain's, so "
        "each row and request serves fewer of them (docs/decisions.md §52).",
    ]
    return rows


def _cpu_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
