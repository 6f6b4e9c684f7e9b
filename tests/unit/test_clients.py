"""The worker's extension of aiokafka's transactional producer (streams.clients), with no
broker: what it adds ahead, when it says that is in, and that it never waits forever.

It reaches into aiokafka's transaction manager and sender; these tests are what an
aiokafka upgrade that changes them would break first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.clients import BATCH_OVERHEAD_BYTES, TransactionalProducer, batch_bytes_within

GROUP = "workers"
OUT = [TopicPartition("out", 0), TopicPartition("out", 1)]


@pytest.fixture
async def producer_in_a_transaction() -> AsyncIterator[Callable[[], TransactionalProducer]]:
    """A producer (never started: no broker) whose transaction manager is in a
    transaction, as after begin_transaction()."""
    made: list[TransactionalProducer] = []

    def make() -> TransactionalProducer:
        producer = TransactionalProducer(transactional_id="t-0", bootstrap_servers="127.0.0.1:9")
        producer._ahead.set_pid_and_epoch(7, 0)
        producer._ahead.begin_transaction()
        made.append(producer)
        return producer

    yield make
    for producer in made:
        await producer.stop()


async def test_partitions_and_the_group_go_to_the_sender_ahead_and_settle_once_in(
    producer_in_a_transaction: Callable[[], TransactionalProducer],
) -> None:
    producer = producer_in_a_transaction()
    manager = producer._ahead
    producer.add_ahead(OUT, GROUP)
    # The sender adds the partitions first, then the group, with no offsets sent yet.
    assert manager.partitions_to_add() == set(OUT)
    assert manager.consumer_group_to_add() == GROUP
    assert not manager.settled.is_set()
    for tp in OUT:
        manager.partition_added(tp)
    assert not manager.settled.is_set()  # the group is not in yet
    manager.consumer_group_added(GROUP)
    assert manager.settled.is_set()
    await asyncio.wait_for(producer.added_ahead(), 1)
    assert manager.consumer_group_to_add() is None  # added once, not again
    # Asking again for what is in changes nothing.
    producer.add_ahead(OUT, GROUP)
    assert manager.partitions_to_add() == set()
    assert manager.settled.is_set()


async def test_nothing_is_added_ahead_to_a_transaction_that_is_ending(
    producer_in_a_transaction: Callable[[], TransactionalProducer],
) -> None:
    producer = producer_in_a_transaction()
    manager = producer._ahead
    manager.committing_transaction()
    producer.add_ahead(OUT, GROUP)
    assert manager.partitions_to_add() == set()
    assert manager.consumer_group_to_add() is None
    assert manager.settled.is_set()


async def test_a_commit_does_not_wait_forever_for_what_is_never_added(
    producer_in_a_transaction: Callable[[], TransactionalProducer],
) -> None:
    producer = producer_in_a_transaction()
    producer.add_ahead(OUT, GROUP)  # no sender runs: nothing is ever added
    with pytest.raises(KafkaTimeoutError):
        await producer.added_ahead(timeout_s=0.01)


async def test_the_end_of_a_transaction_releases_whoever_waits_for_it(
    producer_in_a_transaction: Callable[[], TransactionalProducer],
) -> None:
    producer = producer_in_a_transaction()
    manager = producer._ahead
    producer.add_ahead(OUT, GROUP)
    waiting = asyncio.create_task(producer.added_ahead())
    await asyncio.sleep(0)
    manager.error_transaction(KafkaTimeoutError("the broker went away"))
    await asyncio.wait_for(waiting, 1)
    assert manager.group_ahead is None


def test_batches_stay_within_the_smallest_limit_of_the_topics_written() -> None:
    wanted = 524_288
    roomy = {"decisions": 1_048_588, "links": 1_048_588}
    assert batch_bytes_within(wanted, roomy) == wanted
    assert batch_bytes_within(wanted, {}) == wanted
    tight = {**roomy, "decisions": 65_536}
    assert batch_bytes_within(wanted, tight) == 65_536 - BATCH_OVERHEAD_BYTES
    # Never below aiokafka's own default, which any broker takes.
    assert batch_bytes_within(wanted, {"decisions": 4_096}) == 16_384
