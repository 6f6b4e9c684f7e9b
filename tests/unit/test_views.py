"""A view's start-up load, and the tables of the first tasks seeded from it (streams.views,
streams.state.restore), on the in-memory Kafka of tests/unit/fakekafka.py."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.state import PartitionTable, restore
from streams.views import Views
from tests.unit.fakekafka import FakeBroker, FakeConsumer

TOPIC = "links-changelog"


def _broker() -> FakeBroker:
    broker = FakeBroker()
    broker.create_topic(TOPIC, 2)
    for n in range(30):
        broker.produce(TOPIC, n % 2, f"k{n % 7}".encode(), f"v{n}".encode())
    broker.append(TOPIC, 0, b"k0", None, None, None, ())  # a tombstone
    broker.produce(TOPIC, 1, b"shared", b"on 1")  # one key on both partitions
    broker.produce(TOPIC, 0, b"shared", b"on 0")
    return broker


async def test_the_first_tasks_read_only_what_the_view_had_not() -> None:
    broker = _broker()
    views = Views(FakeConsumer(broker, None), {"links": TOPIC}, partitions=2)
    await views.load()
    seeds = views.take_seeds()
    tps = [TopicPartition(TOPIC, p) for p in range(2)]
    # Each partition apart, as compaction would keep it, and where it ends.
    for tp in tps:
        assert seeds[tp] == (
            broker.compacted(TOPIC, tp.partition),
            len(broker.logs[TOPIC][tp.partition]),
        )
    assert views.take_seeds() == {}  # given once: a later rebalance reads the changelog
    # The changelog moves on between the view's load and the tasks' restore.
    broker.produce(TOPIC, 0, b"k1", b"later")
    broker.append(TOPIC, 1, b"k2", None, None, None, ())
    tables = [PartitionTable(TOPIC, p) for p in range(2)]
    restored = await restore(FakeConsumer(broker, None), tables, seeds=seeds)
    assert (restored.records, restored.from_views, restored.from_snapshots) == (2, 2, 0)
    for table in tables:
        assert dict(table.rows) == broker.compacted(TOPIC, table.partition)


async def test_a_seed_past_the_changelog_is_not_trusted() -> None:
    broker = _broker()
    rows = {b"k1": b"from elsewhere"}
    end = len(broker.logs[TOPIC][0])
    table = PartitionTable(TOPIC, 0)
    restored = await restore(
        FakeConsumer(broker, None), [table], seeds={TopicPartition(TOPIC, 0): (rows, end + 5)}
    )
    assert (restored.records, restored.from_views) == (end, 0)
    assert dict(table.rows) == broker.compacted(TOPIC, 0)
