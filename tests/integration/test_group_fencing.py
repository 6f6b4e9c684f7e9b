"""A worker's one transactional producer is fenced through its consumer group
(streams.fencing, KIP-447), on the real broker: a member that lost its partitions to a
rebalance cannot commit offsets for them with its old generation, and a new owner reads
committed offsets only once no transaction's offsets for them are pending."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from app.kafkaio import event_routes, produce
from app.settings import Settings
from harness import localkafka
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from streams.clients import KafkaClients
from streams.fencing import OffsetsRefused, committers, group_member, stable_offsets

pytestmark = pytest.mark.kafka


async def _topics(servers: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        await admin.close()


def _member_of_group(servers: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


async def test_offsets_of_an_old_generation_are_refused_and_a_new_owner_waits_for_them(
    kafka_settings: Settings,
) -> None:
    servers = kafka_settings.bootstrap_servers
    suffix = uuid.uuid4().hex[:8]
    source, sink, group = f"in-{suffix}", f"out-{suffix}", f"group-{suffix}"
    tp = TopicPartition(source, 0)
    await _topics(servers, source, sink)
    plain = AIOKafkaProducer(bootstrap_servers=servers)
    await plain.start()
    for n in range(10):
        await plain.send_and_wait(source, b"%d" % n)
    await plain.stop()

    first = _member_of_group(servers, source, group)
    await first.start()
    await first.getmany(timeout_ms=5_000)  # joins: generation 1
    clients = KafkaClients(servers, {}, fetch_max_wait_ms=100, linger_ms=0)
    producer = clients.producer(f"worker-{suffix}", member=group_member(first))
    await producer.start()
    second: AIOKafkaConsumer | None = None
    try:
        # The member's own generation: committed, and read back once stable.
        async with producer.transaction():
            await producer.send(sink, b"decided")
            await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(4, "")}, group)
        assert await stable_offsets(first, group, [tp]) == {tp: 4}
        # Beside its offsets, the producer wrote who committed them: whom to fence.
        assert await committers(first, group, [tp]) == {f"worker-{suffix}"}

        # While a transaction's offsets are pending, a new owner's fetch waits for its end.
        await producer.begin_transaction()
        await producer.send(sink, b"decided again")
        await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(6, "")}, group)
        reading = asyncio.ensure_future(stable_offsets(first, group, [tp]))
        await asyncio.sleep(0.3)
        assert not reading.done()  # the broker answers UNSTABLE_OFFSET_COMMIT meanwhile
        await producer.commit_transaction()
        assert await asyncio.wait_for(reading, 10) == {tp: 6}

        # A second member joins: the group rebalances to a new generation, and the first
        # member's producer, still holding the old one, is a zombie.
        stale_generation = first._coordinator.generation
        second = _member_of_group(servers, source, group)
        await second.start()
        for _ in range(100):
            await asyncio.gather(first.getmany(timeout_ms=100), second.getmany(timeout_ms=100))
            if second._coordinator.generation > stale_generation:
                break
        assert second._coordinator.generation > stale_generation
        zombie = clients.producer(
            f"zombie-{suffix}", member=lambda: (stale_generation, "a-member-long-gone")
        )
        await zombie.start()
        try:
            await zombie.begin_transaction()
            await zombie.send(sink, b"from a zombie")
            with pytest.raises(OffsetsRefused):
                await zombie.send_offsets_to_transaction({tp: OffsetAndMetadata(9, "")}, group)
            await zombie.abort_transaction()
        finally:
            await zombie.stop()
        assert await stable_offsets(second, group, [tp]) == {tp: 6}  # unmoved
    finally:
        await producer.stop()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_two_live_workers_given_one_worker_id_say_so_on_ready(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    # A misconfiguration (REWARDSTREAM_WORKER_ID copied to two live workers): each renewal
    # of one's producer fences the other's. /ready names it instead of only failing.
    twin = dataclasses.replace(kafka_settings, worker_id="twin")
    first = start_worker(twin, tmp_path / "first.log")
    await asyncio.to_thread(first.wait_ready, 90)
    second_settings = dataclasses.replace(
        twin, web_port=localkafka.free_port(), data_dir=tmp_path / "state-second"
    )
    second = start_worker(second_settings, tmp_path / "second.log")
    simulator = EventSimulator(SimulatorConfig(users=200, seed=5, program=twin.program))
    told = "is this worker id (twin) given to another live worker too?"
    deadline = time.monotonic() + 120
    answers: list[tuple[int, bytes]] = []
    while time.monotonic() < deadline:
        await produce(
            twin.bootstrap_servers,
            twin.topic_events,
            [simulator.next_message() for _ in range(20)],
            routes=event_routes(twin),
        )
        answers = [worker.get("/ready") for worker in (first, second)]
        if any(status == 503 and told.encode() in body for status, body in answers):
            break
        await asyncio.sleep(0.5)
    assert any(told.encode() in body for _, body in answers), (
        f"{answers}\n{first.log_tail()}\n{second.log_tail()}"
    )
