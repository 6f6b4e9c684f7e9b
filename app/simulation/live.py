"""Send simulated events to Kafka at a steady rate, or write them as JSON lines."""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from aiokafka import AIOKafkaProducer

from app.kafkaio import user_key
from app.progress import Progress
from app.simulation.events import EventSimulator

TICK_S = 0.05  # send in small bursts this often; smooth enough at any rate


async def stream_to_kafka(
    bootstrap_servers: str,
    topic: str,
    simulator: EventSimulator,
    *,
    rate: float,
    total: int,
    show_progress: bool = True,
) -> int:
    """Produce ``total`` events at ``rate`` per second (open loop); return how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    progress = Progress(total, "events") if show_progress else None
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    try:
        while sent < total:
            due = min(total, int((loop.time() - started) * rate) + 1)
            while sent < due:
                value = simulator.next_message()
                # send() queues the record; awaiting each delivery would cap the rate.
                await producer.send(topic, value, key=user_key(value))
                sent += 1
            if progress:
                progress.update(sent)
            await asyncio.sleep(TICK_S)
        await producer.flush()
    finally:
        await producer.stop()
        if progress:
            progress.close()
    return sent


def write_jsonl(output: BinaryIO, simulator: EventSimulator, *, total: int) -> int:
    """Write ``total`` events, one JSON document per line."""
    for _ in range(total):
        output.write(simulator.next_message() + b"\n")
    return total
