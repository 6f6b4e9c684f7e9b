"""Simulated traffic on Kafka: open loop at a steady rate, or a closed loop of users who
answer the decisions they get; or simulated events written as JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.contract.records import Decision
from app.kafkaio import route, user_key
from harness.progress import Progress
from harness.simulation.closed_loop import ClosedLoopSimulator, LoopStats
from harness.simulation.events import EventSimulator

TICK_S = 0.05  # send in small bursts this often; smooth enough at any rate


async def produce_at_rate(
    bootstrap_servers: str,
    topic: str,
    messages: Iterator[tuple[bytes | None, bytes]],
    *,
    rate: float,
    total: int | None,
    progress_total: int | None = None,
    show_progress: bool = True,
    routes: Mapping[str, str] | None = None,
) -> int:
    """Produce ``messages`` (at most ``total``) at ``rate`` per second to ``topic`` (or, for
    an event type in ``routes``, to its own topic); return how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    expected = progress_total or total or 0
    progress = Progress(expected, "events") if show_progress else None
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    try:
        for key, value in itertools.islice(messages, total):
            # send() queues the record; awaiting each delivery would cap the rate.
            await producer.send(route(value, topic, routes or {}), value, key=key)
            sent += 1
            ahead_s = started + sent / rate - loop.time()
            if ahead_s > TICK_S:  # open loop: wait for the schedule, in small bursts
                if progress:
                    progress.update(sent)
                await asyncio.sleep(ahead_s)
        await producer.flush()
    finally:
        await producer.stop()
        if progress:
            progress.update(sent)
            progress.close()
    return sent


async def stream_to_kafka(
    bootstrap_servers: str,
    topic: str,
    simulator: EventSimulator,
    *,
    rate: float,
    total: int,
    show_progress: bool = True,
    routes: Mapping[str, str] | None = None,
) -> int:
    """Produce ``total`` simulated messages at ``rate`` per second (open loop)."""
    messages = ((user_key(value), value) for value in simulator)
    return await produce_at_rate(
        bootstrap_servers,
        topic,
        messages,
        rate=rate,
        total=total,
        show_progress=show_progress,
        routes=routes,
    )


def write_jsonl(output: BinaryIO, simulator: EventSimulator, *, total: int) -> int:
    """Write ``total`` events, one JSON document per line."""
    for _ in range(total):
        output.write(simulator.next_message() + b"\n")
    return total


async def closed_loop_on_kafka(
    bootstrap_servers: str,
    topics: tuple[str, str],
    simulator: ClosedLoopSimulator,
    kinds: dict[str, str],
    *,
    rate: float,
    total: int,
    malformed: Iterator[bytes] | None = None,
    malformed_ratio: float = 0.0,
    show_progress: bool = True,
    routes: Mapping[str, str] | None = None,
) -> LoopStats:
    """Users who answer the engine's decisions, through Kafka: events out, decisions in.

    ``topics`` is (events, decisions). Event times are simulated (the loop's span
    compressed into the run), so answers that a user gives hours later in event
    time arrive within seconds; the engine only ever reasons in event time.
    With ``malformed``, that share of extra messages is broken on purpose.
    """
    events_topic, decisions_topic = topics
    stats = LoopStats()
    consumer = AIOKafkaConsumer(
        decisions_topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        # As the contract asks of every reader: a decision of an aborted transaction
        # was never made, and a user must not answer it.
        isolation_level="read_committed",
    )
    await consumer.start()
    await consumer.seek_to_end()
    listening = asyncio.create_task(_answer_decisions(consumer, simulator, kinds, stats))
    try:
        # Answers are interleaved with the users' own events, so there are more than total.
        messages = _with_malformed(
            (
                (event.user_id.encode(), orjson.dumps(event.to_document()))
                for event in simulator.events(total)
            ),
            malformed,
            malformed_ratio,
            stats,
            seed=simulator.seed,
        )
        sent = await produce_at_rate(
            bootstrap_servers,
            events_topic,
            messages,
            rate=rate,
            total=None,
            progress_total=total,
            show_progress=show_progress,
            routes=routes,
        )
        stats.events = sent
        await _until_decided(stats, sent - stats.malformed, idle_s=30.0)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await consumer.stop()
    return stats


def _with_malformed(
    messages: Iterator[tuple[bytes | None, bytes]],
    malformed: Iterator[bytes] | None,
    ratio: float,
    stats: LoopStats,
    *,
    seed: int,
) -> Iterator[tuple[bytes | None, bytes]]:
    """``messages`` with a broken one slipped in after a ``ratio`` share of them."""
    draw = random.Random(seed)
    for message in messages:
        yield message
        if malformed is not None and draw.random() < ratio:
            stats.malformed += 1
            yield None, next(malformed)


async def _until_decided(stats: LoopStats, sent: int, *, idle_s: float) -> None:
    """Wait for the decisions of the last events, they still count: until every event
    has one, or none has come for ``idle_s`` (a worker behind, but catching up, is
    waited for)."""
    loop = asyncio.get_running_loop()
    seen, last_progress = stats.decisions, loop.time()
    while stats.decisions < sent and loop.time() - last_progress < idle_s:
        await asyncio.sleep(0.1)
        if stats.decisions > seen:
            seen, last_progress = stats.decisions, loop.time()


async def _answer_decisions(
    consumer: AIOKafkaConsumer,
    simulator: ClosedLoopSimulator,
    kinds: dict[str, str],
    stats: LoopStats,
) -> None:
    async for message in consumer:
        decision = Decision(**{k: v for k, v in orjson.loads(message.value).items() if k != "kind"})
        stats.decisions += 1
        if decision.status != "granted" or decision.action not in kinds:
            continue
        stats.granted += 1
        redeemed = simulator.answer(decision, kinds[decision.action])
        stats.redeemed += redeemed
        stats.answers.append(redeemed)
