"""A plain aiokafka consume-produce loop, one hop: a latency anchor for ``rewardstream bench``.

Run as its own process (``python -m harness.bench.anchor_aiokafka``), like the worker, so
the bench's load generator and read-back never share its event loop. A consumer group
reads the input topic and sends each record's value, under its key, to the output
topic; nothing is parsed. Two ways to make the hop restartable:

- plain (default): an idempotent producer; each fetched batch's offsets are committed
  once every send of the batch is delivered;
- ``--transactional``: one transaction per fetched batch, the batch's sends and its
  offsets (``send_offsets_to_transaction``) committed together.

The client settings (batch size, fetch wait, linger) are the worker's, passed in by
the bench. It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

Batches = dict[TopicPartition, list[Any]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--transactional", action="store_true")
    parser.add_argument("--max-records", type=int, default=1_000)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10)
    parser.add_argument("--linger-ms", type=int, default=2)
    return parser.parse_args(argv)


def next_offsets(batches: Batches) -> dict[TopicPartition, int]:
    """The offsets to commit after ``batches``: one past each partition's last record."""
    return {tp: records[-1].offset + 1 for tp, records in batches.items() if records}


def _clients(args: argparse.Namespace) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        # As the worker's consumers: the fetcher's idle poll would otherwise add 200 ms.
        consumer_timeout_ms=args.fetch_max_wait_ms,
    )
    producer_options: dict[str, Any] = {
        "bootstrap_servers": args.bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": args.linger_ms,
    }
    if args.transactional:
        producer_options["transactional_id"] = f"{args.group}-txn"
    return consumer, AIOKafkaProducer(**producer_options)


async def _one_hop(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, output: str, batches: Batches
) -> None:
    """Send every record, wait for their delivery, then commit the offsets."""
    deliveries = [
        await producer.send(output, record.value, key=record.key)
        for records in batches.values()
        for record in records
    ]
    await asyncio.gather(*deliveries)
    await consumer.commit(next_offsets(batches))


async def _one_transaction(
    producer: AIOKafkaProducer, output: str, group: str, batches: Batches
) -> None:
    """The batch's sends and its offsets in one transaction."""
    async with producer.transaction():
        for records in batches.values():
            for record in records:
                await producer.send(output, record.value, key=record.key)
        await producer.send_offsets_to_transaction(next_offsets(batches), group)


async def run(args: argparse.Namespace, stop: asyncio.Event) -> None:
    consumer, producer = _clients(args)
    await producer.start()
    try:
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=args.max_records)
                if not any(batches.values()):
                    continue
                if args.transactional:
                    await _one_transaction(producer, args.output, args.group, batches)
                else:
                    await _one_hop(consumer, producer, args.output, batches)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run(args, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"anchor: aiokafka one hop, transactional={args.transactional}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
