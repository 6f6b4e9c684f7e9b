"""Fencing a worker's one transactional producer through its consumer group (KIP-447).

With one producer for all of a worker's tasks (docs/decisions.md §35), a transactional
id no longer names the partitions it writes, so a new owner of a partition cannot fence
the old one by taking its id. Kafka fences it through the group instead: a
transaction's offsets carry the member's generation and id (TxnOffsetCommit v3), and
the broker refuses them from a member of an earlier generation, so a zombie's
transaction cannot commit; and a new owner asks for its committed offsets with
``require_stable`` (OffsetFetch v7), which the broker answers only once no transaction's
offsets for those partitions are pending, so it reads on from where a zombie's last
transaction really left them.

aiokafka 0.14 sends TxnOffsetCommit v0 (no generation) and OffsetFetch without
``require_stable``. Both newer versions are flexible requests that aiokafka's own
protocol types spell; :func:`send_offsets_with_generation` puts the first in the place
of the producer's offset request, :func:`stable_offsets` sends the second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.producer.sender import TxnOffsetCommitHandler
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

TXN_OFFSET_COMMIT = 28
OFFSET_FETCH = 9
# aiokafka 0.14 knows neither error by name.
UNSTABLE_OFFSET_COMMIT = 88
FENCED_INSTANCE_ID = 82
# How often a new owner asks again while a transaction's offsets are pending: the
# broker answers as soon as the transaction's markers are written (22-26 ms after its
# commit returned, docs/decisions.md §35), so short.
STABLE_POLL_S = 0.005

# The group consumer's generation and member id, as they are when asked.
Member = Callable[[], tuple[int, str]]


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


class OneVersion(Request[Any]):
    """A request of one version only, built from its fields in schema order (aiokafka
    picks among a request's versions by what the broker supports: these need exactly
    theirs, and a broker without it refuses them)."""

    API_KEY = -1

    def __init__(self, struct: type[RequestStruct], *fields: Any) -> None:
        self.API_KEY = struct.API_KEY
        self._CLASSES = (struct,)
        self.fields = fields

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(*self.fields)


def group_member(consumer: Any) -> Member:
    """The generation and member id of ``consumer`` (an aiokafka group consumer) at the
    moment of asking: after a rebalance, the new ones."""
    coordinator = consumer._coordinator

    def now() -> tuple[int, str]:
        return coordinator.generation, coordinator.member_id

    return now


# Answers aiokafka's own handler retries after a backoff (the same list).
_RETRIED = (
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.UnknownTopicOrPartitionError,
)
_COORDINATOR_MOVED = (
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.RequestTimedOutError,
)


class _GenerationOffsetsHandler(TxnOffsetCommitHandler):
    """aiokafka's handler of a transaction's offsets, sending them as TxnOffsetCommit v3.

    A refusal for the member's generation or id (a zombie of an earlier generation,
    or a member the group no longer knows) makes the transaction abortable: the commit
    waiting for these offsets raises, and the caller aborts. (Raising here instead
    would end aiokafka's sender task, and the producer with it.)
    """

    def __init__(
        self,
        sender: Any,
        offsets: Mapping[TopicPartition, Any],
        group_id: str,
        member: Member,
        metadata: str,
    ) -> None:
        super().__init__(sender, offsets, group_id)
        self._member = member
        self._metadata = metadata

    def create_request(self) -> OneVersion:
        txn = self._sender._txn_manager
        generation, member_id = self._member()
        topics: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = {}
        for tp, offset in sorted(self._offsets.items()):
            topics.setdefault(tp.topic, []).append(
                (tp.partition, offset.offset, -1, self._metadata, {})
            )
        return OneVersion(
            TxnOffsetCommitRequestV3,
            txn.transactional_id,
            self._group_id,
            txn.producer_id,
            txn.producer_epoch,
            generation,
            member_id,
            None,
            [(topic, partitions, {}) for topic, partitions in topics.items()],
            {},
        )

    def handle_response(self, response: Any) -> float | None:
        txn = self._sender._txn_manager
        for topic, partitions, _ in response.topics:
            for partition, code, _ in partitions:
                tp = TopicPartition(topic, partition)
                error = kafka_errors.for_code(code)
                if error is kafka_errors.NoError:
                    txn.offset_committed(tp, self._offsets[tp].offset, self._group_id)
                elif error in _COORDINATOR_MOVED:
                    self._sender._coordinator_dead(CoordinationType.GROUP)
                    return float(self._default_backoff)
                elif error in _RETRIED:
                    return float(self._default_backoff)
                elif error is kafka_errors.InvalidProducerEpoch:
                    raise kafka_errors.ProducerFenced()  # as aiokafka's own handler
                else:
                    txn.error_transaction(OffsetsRefused(tp, code))
                    return None
        return None


class OffsetsRefused(kafka_errors.KafkaError):
    """The group coordinator refused a transaction's offsets: for a generation or member
    it no longer has (the worker lost the partition), or another error. The transaction
    must be aborted."""

    def __init__(self, tp: TopicPartition, code: int) -> None:
        name = (
            "FENCED_INSTANCE_ID"
            if code == FENCED_INSTANCE_ID
            else kafka_errors.for_code(code).__name__
        )
        super().__init__(f"offsets of {tp.topic}[{tp.partition}] refused: {name} ({code})")
        self.code = code


def send_offsets_with_generation(producer: Any, member: Member, metadata: str) -> None:
    """Make ``producer`` (a started aiokafka transactional producer) send its
    transactions' offsets as TxnOffsetCommit v3 with ``member``'s generation and id,
    ``metadata`` beside each offset."""
    sender = producer._sender

    async def send(offsets: Mapping[TopicPartition, Any], group_id: str) -> None:
        if not offsets:
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except kafka_errors.GroupAuthorizationFailedError as error:
            sender._txn_manager.error_transaction(error)
            return
        handler = _GenerationOffsetsHandler(sender, offsets, group_id, member, metadata)
        await handler.do(node_id)

    sender._do_txn_offset_commit = send


async def stable_offsets(
    consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each of ``partitions`` (None: none), asked with
    ``require_stable`` again until no transaction's offsets for them are pending."""
    while True:
        found, pending, _ = await _fetch_offsets(consumer, group_id, partitions, stable=True)
        if not pending:
            return found
        await asyncio.sleep(STABLE_POLL_S)


async def committers(
    consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
) -> set[str]:
    """Who committed the offsets of ``partitions`` last: the metadata a worker's one
    producer writes beside each offset (its transactional id; empty ones left out)."""
    _, _, metadata = await _fetch_offsets(consumer, group_id, partitions, stable=False)
    return {text for text in metadata.values() if text}


async def _fetch_offsets(
    consumer: Any, group_id: str, partitions: Iterable[TopicPartition], *, stable: bool
) -> tuple[dict[TopicPartition, int | None], bool, dict[TopicPartition, str]]:
    """One OffsetFetch v7: the committed offsets, whether any is pending (only asked
    with ``stable``), and each offset's metadata."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    if not by_topic:
        return {}, False, {}
    request = OneVersion(
        OffsetFetchRequestV7,
        group_id,
        [(topic, sorted(indexes), {}) for topic, indexes in sorted(by_topic.items())],
        stable,
        {},
    )
    coordinator = consumer._coordinator
    while True:
        await coordinator.ensure_coordinator_known()
        response = await consumer._client.send(
            coordinator.coordinator_id, request, group=ConnectionGroup.COORDINATION
        )
        if not response.error_code:
            break
        error = kafka_errors.for_code(response.error_code)
        if error not in _COORDINATOR_MOVED and error not in _RETRIED:
            raise error()
        coordinator.coordinator_dead()
        await asyncio.sleep(STABLE_POLL_S)
    found: dict[TopicPartition, int | None] = {}
    metadata: dict[TopicPartition, str] = {}
    pending = False
    for topic, answers, _ in response.topics:
        for partition, offset, _, text, code, _ in answers:
            tp = TopicPartition(topic, partition)
            if code == UNSTABLE_OFFSET_COMMIT:
                pending = True
            elif code:
                raise kafka_errors.for_code(code)()
            else:
                found[tp] = offset if offset >= 0 else None
                metadata[tp] = text or ""
    return found, pending, metadata
