"""How a task hands one commit's records to its producer: a batch per partition.

The records of a commit go out through the producer's batch interface
(streams.task._send). What the rest of the runtime relies on: every record is
written once, in its order within its partition; a keyed record without a partition
lands where Kafka's default partitioner (murmur2, aiokafka's and Java's) puts that
key, so a compacted topic keeps one key on one partition whichever way it was
written; and where each changelog partition's rows end (for snapshots) is the
offset after its last row, however many batches the rows took.
"""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.state import ChangelogRecord
from streams.task import UndeliveredError, _require_delivered, _send
from tests.unit.fakekafka import FakeBroker, FakeProducer, Out


async def producer_on(broker: FakeBroker) -> FakeProducer:
    producer = FakeProducer(broker, "t-0")
    await producer.start()
    await producer.begin_transaction()
    return producer


async def test_records_keep_their_order_within_a_partition_across_batches() -> None:
    broker = FakeBroker()
    broker.create_topic("out", 2)
    producer = await producer_on(broker)
    outputs = [Out("out", b"k", b"%d" % i, partition=i % 2) for i in range(11)]
    outputs[4] = Out("out", b"k", b"4", headers=(("from", b"events/0@7"),), partition=0)

    deliveries = await _send(producer, outputs, [], lambda role: role)
    await producer.commit_transaction()

    _require_delivered(deliveries)
    by_partition = {p: [r.value for r in broker.records("out") if r.partition == p] for p in (0, 1)}
    assert by_partition == {
        0: [b"%d" % i for i in range(0, 11, 2)],
        1: [b"%d" % i for i in range(1, 11, 2)],
    }
    assert len(deliveries.futures) == 4  # 6 and 5 records, 3 a batch here
    assert [r.headers for r in broker.records("out") if r.value == b"4"] == [
        (("from", b"events/0@7"),)
    ]
    assert deliveries.written == {TopicPartition("out", 0), TopicPartition("out", 1)}


async def test_a_keyed_record_goes_where_the_default_partitioner_puts_its_key() -> None:
    broker = FakeBroker()
    broker.create_topic("links", 5)
    producer = await producer_on(broker)
    keys = [b"device:%d" % i for i in range(40)]

    await _send(producer, [Out("links", k, b"v") for k in keys], [], lambda role: role)

    partitioner = DefaultPartitioner()
    expected = {k: partitioner(k, list(range(5)), list(range(5))) for k in keys}
    written = {r.key: r.partition for r in broker.records("links", committed=False)}
    assert written == expected
    assert len(set(written.values())) > 1


async def test_a_changelog_ends_after_its_last_row_however_many_batches_it_took() -> None:
    broker = FakeBroker()
    broker.create_topic("out", 1)
    broker.create_topic("table-changelog", 2)
    broker.produce("table-changelog", 0, b"old", b"row")  # the partition does not start at 0
    producer = await producer_on(broker)
    changes = [ChangelogRecord("table-changelog", 0, b"u%d" % i, b"row") for i in range(7)]
    changes.append(ChangelogRecord("table-changelog", 1, b"x", None))

    deliveries = await _send(producer, [Out("out", b"k", b"v")], changes, lambda role: role)

    ends = {tp: future.result().offset + n for tp, (future, n) in deliveries.changelog_last.items()}
    assert ends == {
        TopicPartition("table-changelog", 0): 8,
        TopicPartition("table-changelog", 1): 1,
    }  # output partitions are not changelogs


async def test_a_batch_not_delivered_keeps_the_commit_from_going_through() -> None:
    broker = FakeBroker()
    broker.create_topic("out", 1)
    producer = await producer_on(broker)
    broker.fail_next_deliveries("out")

    deliveries = await _send(producer, [Out("out", b"k", b"v")] * 4, [], lambda role: role)

    with pytest.raises(UndeliveredError, match="1 of 2 batches not delivered"):
        _require_delivered(deliveries)
