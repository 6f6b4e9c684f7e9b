"""The console's Kafka side: a read_committed reader of the engine's outputs and the
producer of analysts' labels, on an asyncio loop in a thread of its own.

The reader has no consumer group: every console reads every partition from the
beginning and builds its index in memory, so consoles never share or commit
anything, and a restart is a fresh read (within the topics' retention, the erasure
bound). It hands each fetched batch to one callback and knows nothing of what the
records mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.kafkaio import Received, client_options, seek_to_first
from app.settings import Settings

log = logging.getLogger(__name__)

# How long one fetch may wait, and how many records it may bring: a batch is applied to
# the index under one lock, so it stays small enough not to hold a lookup up.
FETCH_WAIT_MS = 200
FETCH_MAX_RECORDS = 500
TOPIC_POLL_S = 2.0
LABEL_TIMEOUT_S = 15.0


class ConsoleReader:
    """Reads ``topics`` from their beginning into ``take``; sends labels to ``labels_topic``."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        take: Callable[[list[Received]], None],
        *,
        labels_topic: str,
    ) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.take = take
        self.labels_topic = labels_topic
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="console-reader", daemon=True)
        self.stopping: asyncio.Event | None = None
        self.producer: AIOKafkaProducer | None = None
        # What the status line shows.
        self.waiting_for: list[str] = list(topics)
        self.caught_up = False
        self.records = 0
        self.error: str | None = None

    def start(self) -> ConsoleReader:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(timeout_s)

    def send_label(self, user_id: str, value: bytes) -> None:
        """Produce one label (from a web thread) and wait until the broker has it."""
        future = asyncio.run_coroutine_threadsafe(self._send(user_id, value), self.loop)
        future.result(LABEL_TIMEOUT_S)

    # ------------------------------------------------------------ the loop's thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._read())
        except Exception as error:  # shown on the page: the reader stopped, and why
            log.exception("console.reader_failed")
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.loop.close()

    async def _read(self) -> None:
        self.stopping = asyncio.Event()
        options = client_options(self.settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Only what a worker committed: an aborted transaction's records never show.
            isolation_level="read_committed",
            **options,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            **options,
        )
        await consumer.start()
        await self.producer.start()
        try:
            partitions = await self._wait_for_topics()
            if partitions:
                await self._follow(consumer, partitions)
        finally:
            await consumer.stop()
            await self.producer.stop()

    async def _wait_for_topics(self) -> list[TopicPartition]:
        """The partitions of every topic, once all exist (the worker or `topics create`
        makes them); nothing if stopped first."""
        assert self.stopping is not None
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers,
            **client_options(self.settings),
        )
        await admin.start()
        try:
            while not self.stopping.is_set():
                described = await admin.describe_topics(self.topics)
                found = {
                    d["topic"]: sorted(p["partition"] for p in d["partitions"])
                    for d in described
                    if d["error_code"] == 0 and d["partitions"]
                }
                self.waiting_for = [t for t in self.topics if t not in found]
                if not self.waiting_for:
                    return [TopicPartition(t, p) for t in self.topics for p in found[t]]
                await _sleep_unless(self.stopping, TOPIC_POLL_S)
        finally:
            await admin.close()
        return []

    async def _follow(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        assert self.stopping is not None
        consumer.assign(partitions)
        await seek_to_first(consumer, partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        while not self.stopping.is_set():
            batch = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=FETCH_MAX_RECORDS)
            records = [_received(m) for messages in batch.values() for m in messages]
            if records:
                self.take(records)
                self.records += len(records)
            if not self.caught_up:
                positions = {tp: await consumer.position(tp) for tp in partitions}
                self.caught_up = all(positions[tp] >= ends[tp] for tp in partitions)

    async def _send(self, user_id: str, value: bytes) -> None:
        if self.producer is None:
            raise RuntimeError("the console is not connected to Kafka yet")
        await self.producer.send_and_wait(self.labels_topic, value, key=user_id.encode())


def _received(message: Any) -> Received:
    return Received(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value if message.value is not None else b"",
        message.timestamp,
    )


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
