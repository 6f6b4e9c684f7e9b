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

Not a test and not part of the product: it patches aiokafka's offset handler for the
duration of the check only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import aiokafka.producer.sender as aiokafka_sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import ConnectionGroup
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata

from app.settings import Settings
from harness.workerproc import own_broker

TXN_OFFSET_COMMIT = 28
OFFSET_FETCH = 9
UNSTABLE_OFFSET_COMMIT = 88  # aiokafka 0.14 has no class for this error code
SINK = "fencing-out"


class TxnOffsetCommitResponseV3(Response):
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class OffsetFetchResponseV7(Response):
    API_KEY = OFFSET_FETCH
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequestV7(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = OFFSET_FETCH
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _Fixed(Request[Any]):
    """A request of one version only, built from its fields in schema order."""

    API_KEY = -1

    def __init__(self, struct: type[RequestStruct], *fields: Any) -> None:
        self.API_KEY = struct.API_KEY
        self._CLASSES = (struct,)
        self.fields = fields

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(*self.fields)


class Member:
    """The group member whose generation the transaction's offsets carry."""

    generation = -1
    member_id = ""


@contextlib.contextmanager
def offsets_with_generation(member: Member, answers: list[str]) -> Iterator[None]:
    """aiokafka's producer sends a transaction's offsets as TxnOffsetCommit v3 with
    ``member``'s generation while this lasts; each partition's answer goes to
    ``answers``."""
    handler = aiokafka_sender.TxnOffsetCommitHandler
    original = (handler.create_request, handler.handle_response)

    def create_request(self: Any) -> Any:
        txn = self._sender._txn_manager
        topics: dict[str, list[Any]] = {}
        for tp, offset in sorted(self._offsets.items()):
            topics.setdefault(tp.topic, []).append(
                (tp.partition, offset.offset, -1, offset.metadata or "", {})
            )
        return _Fixed(
            TxnOffsetCommitRequestV3,
            txn.transactional_id,
            self._group_id,
            txn.producer_id,
            txn.producer_epoch,
            member.generation,
            member.member_id,
            None,
            [(topic, partitions, {}) for topic, partitions in topics.items()],
            {},
        )

    def handle_response(self: Any, response: Any) -> None:
        txn = self._sender._txn_manager
        for topic, partitions, _ in response.topics:
            for partition, code, _ in partitions:
                error = kafka_errors.for_code(code)
                answers.append(error.__name__)
                tp = TopicPartition(topic, partition)
                if error is not kafka_errors.NoError:
                    raise error()
                txn.offset_committed(tp, self._offsets[tp].offset, self._group_id)

    handler.create_request = create_request
    handler.handle_response = handle_response
    try:
        yield
    finally:
        handler.create_request, handler.handle_response = original


async def fetch_offset(
    consumer: Any, group: str, tp: TopicPartition, stable: bool
) -> tuple[int, int]:
    """(committed offset, error code) of ``tp`` by OffsetFetch v7."""
    request = _Fixed(OffsetFetchRequestV7, group, [(tp.topic, [tp.partition], {})], stable, {})
    coordinator = consumer._coordinator.coordinator_id
    response = await consumer._client.send(coordinator, request, group=ConnectionGroup.COORDINATION)
    [(_, [(_, offset, _, _, code, _)], _)] = response.topics
    return offset, code


async def check(bootstrap: str) -> dict[str, Any]:
    group, source = "fencing-check", TopicPartition("fencing-in", 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("fencing-in", 1, 1), NewTopic("fencing-out", 1, 1)])
    finally:
        await admin.close()
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain.start()
    for i in range(10):
        await plain.send_and_wait(source.topic, b"%d" % i)
    await plain.stop()
    consumer = AIOKafkaConsumer(
        source.topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="fencing-check")
    await producer.start()
    found: dict[str, Any] = {}
    member, answers = Member(), list[str]()
    try:
        await consumer.getmany(timeout_ms=5_000)  # joins the group
        member.generation = consumer._coordinator.generation
        member.member_id = consumer._coordinator.member_id
        with offsets_with_generation(member, answers):
            async with producer.transaction():
                await producer.send(SINK, b"decided")
                await producer.send_offsets_to_transaction(
                    {source: OffsetAndMetadata(5, "")}, group
                )
                found["pending_fetch_require_stable"] = await fetch_offset(
                    consumer, group, source, True
                )
                found["pending_fetch_plain"] = await fetch_offset(consumer, group, source, False)
            started = time.monotonic()
            while (answer := await fetch_offset(consumer, group, source, True))[1] != 0:
                await asyncio.sleep(0.001)
            found["stable_after_commit_ms"] = round(1000 * (time.monotonic() - started), 1)
            found["committed_current_generation"] = answer
            member.generation -= 1  # a zombie of the generation before
            try:
                async with producer.transaction():
                    await producer.send(SINK, b"zombie")
                    await producer.send_offsets_to_transaction(
                        {source: OffsetAndMetadata(8, "")}, group
                    )
                found["stale_generation"] = "committed"
            except Exception:
                found["stale_generation"] = "refused"
        found["answers"] = answers
        found["committed_after_zombie"] = (await fetch_offset(consumer, group, source, True))[0]
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
    return found


def main() -> None:
    settings = Settings.from_env()
    with own_broker(settings, "group-fencing") as running:
        found = asyncio.run(check(running.bootstrap_servers))
    print(json.dumps({"kafka": settings.kafka_version, **found}))


if __name__ == "__main__":
    main()
