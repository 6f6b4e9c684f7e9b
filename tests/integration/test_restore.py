"""Restoring tables from their changelogs on the real broker: every partition is read
in full, every time, whatever reset policy the restoring consumer has.

A restore once came back with one partition empty, one time in a few: aiokafka's
``seek_to_beginning`` only asks for a reset, and the reset to the consumer's default
(the end) that the fetcher starts by itself after ``assign`` could answer later and
win. The worker then decided on empty state for that partition's users.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.kafkaio import TopicRequest, ensure_topics, latest_by_key
from app.settings import Settings
from streams.state import PartitionTable, restore

pytestmark = pytest.mark.kafka

PARTITIONS = 8
KEYS_PER_PARTITION = 40
RESTORES = 25  # the race showed in about one restore of 16 partitions in three


async def compacted_topic_holding(
    servers: str,
    topic: str,
    records: list[tuple[int, bytes, bytes]],
    *,
    partitions: int = PARTITIONS,
) -> None:
    """Create ``topic`` (compacted) holding (partition, key, value) records, in order."""
    await ensure_topics(servers, [TopicRequest(topic, partitions, 1, compacted=True)])
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send(topic, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def test_every_restore_reads_every_partition_in_full(kafka_settings: Settings) -> None:
    topic = f"{kafka_settings.app_id}-restore-changelog"
    servers = kafka_settings.bootstrap_servers
    await compacted_topic_holding(
        servers,
        topic,
        [
            (partition, f"p{partition}-k{n}".encode(), value)
            for partition in range(PARTITIONS)
            for n in range(KEYS_PER_PARTITION)
            for value in (b"old", f"v{n}".encode())  # every key overwritten once
        ],
    )
    expected = {
        partition: {
            f"p{partition}-k{n}".encode(): f"v{n}".encode() for n in range(KEYS_PER_PARTITION)
        }
        for partition in range(PARTITIONS)
    }

    for attempt in range(RESTORES):
        # A fresh consumer each time, left at aiokafka's default reset (the end): the
        # race is between its first automatic reset and the restore's own positioning.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            tables = [PartitionTable(topic, partition) for partition in range(PARTITIONS)]
            restored = await restore(consumer, tables)
        finally:
            await consumer.stop()
        empty = [t.partition for t in tables if not t.rows]
        assert not empty, f"restore {attempt}: partitions restored empty: {empty}"
        for table in tables:
            assert table.rows == expected[table.partition], f"restore {attempt}"
        assert restored.records == PARTITIONS * KEYS_PER_PARTITION * 2


async def test_a_model_checkpoint_is_read_back_every_time(kafka_settings: Settings) -> None:
    """A worker reads its model checkpoint back at start-up with ``latest_by_key``, from a
    one-partition topic: the newest value under the key, whatever else the topic holds.
    (It positions its reader with ``seek_to_first`` like a restore; the race that
    helper avoids is caught by the test above, which needs many more tries.)"""
    topic = f"{kafka_settings.app_id}-checkpoints"
    servers = kafka_settings.bootstrap_servers
    records = [(0, b"model", b"old"), (0, b"other", b"x"), (0, b"model", b"newest")]
    await compacted_topic_holding(servers, topic, records, partitions=1)
    for _ in range(3):
        assert await latest_by_key(servers, topic, b"model") == b"newest"
    assert await latest_by_key(servers, topic, b"missing") is None
