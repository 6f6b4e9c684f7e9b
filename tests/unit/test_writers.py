"""The producers tasks write with, on the fake broker (streams.writers): what each may
write, that a new one closes what an earlier one of its id left open, and that a new
owner ends a dead worker's transaction over its inputs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams import writers as writers_module
from streams.writers import Writers
from tests.unit.fakekafka import FakeBroker, FakeClients, FakeConsumer

OUTPUTS = ["app-decisions", "app-alerts"]
CHANGELOGS = ["app-users-changelog", "app-links-changelog"]


def writers_on(broker: FakeBroker, clients: FakeClients | None = None) -> Writers:
    for topic in OUTPUTS + CHANGELOGS:
        broker.create_topic(topic, 3)
    return Writers(
        clients or FakeClients(broker),
        "app",
        partitions=3,
        outputs=OUTPUTS,
        changelogs=CHANGELOGS,
    )


def test_a_task_writes_every_output_partition_and_its_own_changelog_partitions() -> None:
    writers = writers_on(FakeBroker())
    assert writers.writable(1) == [
        *((topic, p) for topic in OUTPUTS for p in range(3)),
        ("app-users-changelog", 1),
        ("app-links-changelog", 1),
    ]
    # The worker's one producer writes every task's changelog partitions.
    assert writers.writable(None)[len(OUTPUTS) * 3 :] == [
        (topic, p) for topic in CHANGELOGS for p in range(3)
    ]
    assert (writers.task_id(2), writers.worker_id("w7")) == ("app-task-2", "app-worker-w7")


async def test_a_new_producer_closes_every_partition_its_id_may_have_left_open() -> None:
    """Its first transaction writes a record to every partition the task may write and
    aborts: the abort markers close records an earlier producer of the id left open
    where the coordinator lost track of them. Nothing of it is ever visible."""
    broker = FakeBroker()
    writers = writers_on(broker)
    producer = await writers.producer("app-task-1", 1)
    assert producer.started
    assert producer.txn is None  # ready for the task's first one
    closing = {
        (record.topic, record.partition)
        for topic in OUTPUTS + CHANGELOGS
        for record in broker.records(topic, committed=False)
        if record.key == b"rewardstream.close"
    }
    assert closing == set(writers.writable(1))
    assert all(broker.records(topic) == [] for topic in OUTPUTS + CHANGELOGS)


class PendingOffsets(FakeClients):
    """Offsets held pending by a dead worker's transaction until its id is taken."""

    def __init__(self, broker: FakeBroker, committers: set[str]) -> None:
        super().__init__(broker)
        self.holders = committers
        self.released = asyncio.Event()

    async def stable_offsets(
        self, consumer: FakeConsumer, group_id: str, partitions: Any
    ) -> dict[TopicPartition, int | None]:
        await self.released.wait()
        return dict.fromkeys(partitions, 4)

    async def committers(self, consumer: FakeConsumer, group_id: str, partitions: Any) -> set[str]:
        return set(self.holders)

    def producer(self, transactional_id: str | None, *, member: Any = None) -> Any:
        if transactional_id in self.holders:  # taking its id aborts its transaction
            self.released.set()
        return super().producer(transactional_id, member=member)


async def test_a_new_owner_fences_the_committer_of_offsets_pending_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writers_module, "FENCE_AFTER_S", 0.01)
    broker = FakeBroker()
    clients = PendingOffsets(broker, {"app-worker-dead", "app-worker-me"})
    writers = writers_on(broker, clients)
    inputs = [TopicPartition("events", 0)]
    # Bounded: without the fencing the pending offsets would never come back.
    offsets = await asyncio.wait_for(
        writers.stable_offsets(FakeConsumer(broker, "app"), inputs, own_id="app-worker-me"), 5.0
    )
    assert offsets == {inputs[0]: 4}
    taken = [p.transactional_id for p in clients.producers]
    assert taken == ["app-worker-dead"]  # never its own id: that would fence itself
    assert clients.producers[0].stopped
