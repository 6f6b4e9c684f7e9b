"""A check by hand: ``python -m harness.group_fencing``.

Can the worker fence a zombie through the consumer group (KIP-447) on aiokafka, so
that one transactional producer per worker could replace one per task
(docs/decisions.md §35)? aiokafka 0.14 sends a transaction's offsets with
TxnOffsetCommit v0, which carries no group generation, and fetches committed offsets
without ``require_stable``. Both newer versions are flexible requests that aiokafka's
own protocol types can spell. On a broker of its own, this sends them and prints what
the broker answers:

1. TxnOffsetCommit v3 with the member's generation and id: accepted.
2. The same with the previous generation (a zombie's): refused, ILLEGAL_GENERATION,
   and the committed offset does not move.
3. OffsetFetch v7 while a transaction's offsets are pending: UNSTABLE_OFFSET_COMMIT
   with ``require_stable``, the old offset without it (the gap a new owner would
   read through).
4. How long after the producer's commit returned the offset reads as stable.

The requests are the worker's own (streams.fencing); the real-broker test of the same
is tests/integration/test_group_fencing.py. This prints the broker's raw answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import ConnectionGroup
from aiokafka.structs import OffsetAndMetadata

from app.settings import Settings
from harness.workerproc import own_broker
from streams.clients import KafkaClients
from streams.fencing import OffsetFetchRequestV7, OneVersion, group_member

SOURCE, SINK = "fencing-in", "fencing-out"


async def fetch_offset(
    consumer: Any, group: str, tp: TopicPartition, stable: bool
) -> tuple[int, int]:
    """(committed offset, error code) of ``tp`` by one OffsetFetch v7."""
    request = OneVersion(OffsetFetchRequestV7, group, [(tp.topic, [tp.partition], {})], stable, {})
    coordinator = consumer._coordinator.coordinator_id
    response = await consumer._client.send(coordinator, request, group=ConnectionGroup.COORDINATION)
    [(_, [(_, offset, _, _, code, _)], _)] = response.topics
    return offset, code


async def check(bootstrap: str) -> dict[str, Any]:
    group, source = "fencing-check", TopicPartition(SOURCE, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(SOURCE, 1, 1), NewTopic(SINK, 1, 1)])
    finally:
        await admin.close()
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain.start()
    for i in range(10):
        await plain.send_and_wait(SOURCE, b"%d" % i)
    await plain.stop()
    consumer = AIOKafkaConsumer(
        SOURCE,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    clients = KafkaClients(bootstrap, {}, fetch_max_wait_ms=100, linger_ms=0)
    found: dict[str, Any] = {}
    producer: Any = None
    zombie: Any = None
    try:
        await consumer.getmany(timeout_ms=5_000)  # joins the group
        producer = clients.producer("fencing-check", member=group_member(consumer))
        await producer.start()
        async with producer.transaction():
            await producer.send(SINK, b"decided")
            await producer.send_offsets_to_transaction({source: OffsetAndMetadata(5, "")}, group)
            found["pending_fetch_require_stable"] = await fetch_offset(
                consumer, group, source, True
            )
            found["pending_fetch_plain"] = await fetch_offset(consumer, group, source, False)
        started = time.monotonic()
        while (answer := await fetch_offset(consumer, group, source, True))[1] != 0:
            await asyncio.sleep(0.001)
        found["stable_after_commit_ms"] = round(1000 * (time.monotonic() - started), 1)
        found["committed_current_generation"] = answer
        stale = consumer._coordinator.generation - 1
        zombie = clients.producer("fencing-zombie", member=lambda: (stale, "gone"))
        await zombie.start()
        try:
            async with zombie.transaction():
                await zombie.send(SINK, b"zombie")
                await zombie.send_offsets_to_transaction({source: OffsetAndMetadata(8, "")}, group)
            found["stale_generation"] = "committed"
        except Exception as error:
            found["stale_generation"] = f"refused: {error}"
        found["committed_after_zombie"] = (await fetch_offset(consumer, group, source, True))[0]
    finally:
        await consumer.stop()
        for client in (producer, zombie):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
    return found


def main() -> None:
    settings = Settings.from_env()
    with own_broker(settings, "group-fencing") as running:
        found = asyncio.run(check(running.bootstrap_servers))
    print(json.dumps({"kafka": settings.kafka_version, **found}))


if __name__ == "__main__":
    main()
