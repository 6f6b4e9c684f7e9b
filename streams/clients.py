"""The seam between the runtime and Kafka: every client the runtime uses is made here.

The worker uses :class:`KafkaClients` (aiokafka). The runtime's unit tests pass
a fake with the same methods, so rebalances mid-commit, aborts and recoveries
run in milliseconds without a broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.transaction_manager import TransactionManager

from streams.fencing import Member, committers, send_offsets_with_generation, stable_offsets

# Retry backoff of the transactional producers: the broker refuses to add partitions to
# a transaction while the previous commit of the same producer is still completing, and
# the producer retries after this backoff (aiokafka's 100 ms default was most of the
# latency).
TRANSACTION_RETRY_BACKOFF_MS = 10
# How long aiokafka's background fetcher sleeps when nothing wakes it (its default, 200 ms,
# once added up to 200 ms to a hop); each wake-up walks every assigned partition, so 10 ms
# cost an idle worker about 4% of a core more than this.
FETCHER_IDLE_MS = 50
# How long a commit waits for what its transaction was given ahead to be in it before
# it gives up (and aborts, and the task starts over): the coordinator answers within
# milliseconds when it can; this is for one that keeps refusing.
ADDED_AHEAD_TIMEOUT_S = 30.0
# aiokafka's transaction timeout (its default): the coordinator aborts a transaction
# open longer. A task ends a transaction it opened ahead well before (streams.task).
TRANSACTION_TIMEOUT_MS = 60_000


class Clients(Protocol):
    def group_consumer(self, group_id: str) -> Any: ...
    def reader(self) -> Any: ...
    def producer(self, transactional_id: str | None, *, member: Member | None = None) -> Any: ...
    async def stable_offsets(
        self, consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]: ...
    async def committers(
        self, consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
    ) -> set[str]: ...


# Room left in a batch for what Kafka adds around the records (the batch header).
BATCH_OVERHEAD_BYTES = 1_024


def batch_bytes_within(wanted: int, limits: Mapping[str, int]) -> int:
    """The producer's batch size: ``wanted``, or less where a topic's ``max.message.bytes``
    (``limits``) would refuse a batch that large (aiokafka never splits a refused batch:
    the commit would fail again at every retry). Never below aiokafka's default."""
    smallest = min(limits.values(), default=wanted + BATCH_OVERHEAD_BYTES)
    return max(16_384, min(wanted, smallest - BATCH_OVERHEAD_BYTES))


class KafkaClients:
    """aiokafka clients for one worker, with the deployment's connection options."""

    def __init__(
        self,
        bootstrap_servers: str,
        options: Mapping[str, Any],
        *,
        fetch_max_wait_ms: int,
        linger_ms: int,
        batch_bytes: int = 16_384,
    ) -> None:
        self.common = {"bootstrap_servers": bootstrap_servers, **options}
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms
        self.batch_bytes = batch_bytes

    def group_consumer(self, group_id: str) -> AIOKafkaConsumer:
        """The consumer of every stage's inputs. The range assignor gives one member the
        same partition numbers of every input topic (they have as many partitions): the
        partitions of one task (streams.task) never part."""
        return AIOKafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            consumer_timeout_ms=FETCHER_IDLE_MS,
            **self.common,
        )

    def reader(self) -> AIOKafkaConsumer:
        """A consumer with no group, for restores and views: committed records only."""
        return AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # if compaction removes the start mid-read
            isolation_level="read_committed",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            consumer_timeout_ms=FETCHER_IDLE_MS,
            **self.common,
        )

    def producer(
        self, transactional_id: str | None, *, member: Member | None = None
    ) -> AIOKafkaProducer:
        """A transactional producer with ``transactional_id``, or (None) a plain idempotent
        one. With ``member``, its transactions' offsets carry that group member's
        generation (streams.fencing): the producer of a worker's every task."""
        if transactional_id is None:
            # The same batches as the transactional producers': with aiokafka's 16 KiB a
            # commit of at_least_once went a dozen round trips a partition (§29, §37).
            return AIOKafkaProducer(
                acks="all",
                enable_idempotence=True,
                linger_ms=self.linger_ms,
                max_batch_size=self.batch_bytes,
                **self.common,
            )
        producer = TransactionalProducer(
            transactional_id=transactional_id,
            linger_ms=self.linger_ms,
            max_batch_size=self.batch_bytes,
            retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            **self.common,
        )
        if member is not None:
            # The committer's id beside each offset says whom a new owner may fence.
            send_offsets_with_generation(producer, member, metadata=transactional_id)
        return producer

    async def stable_offsets(
        self, consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``partitions`` once no transaction's offsets
        for them are pending (streams.fencing)."""
        return await stable_offsets(consumer, group_id, partitions)

    async def committers(
        self, consumer: Any, group_id: str, partitions: Iterable[TopicPartition]
    ) -> set[str]:
        """The transactional ids that committed the offsets of ``partitions`` last."""
        return await committers(consumer, group_id, partitions)


class _AheadTransactionManager(TransactionManager):
    """aiokafka's transaction manager, able to add a consumer group to the open
    transaction before there are offsets to send (aiokafka adds the group only with
    the first offsets, one round trip before it sends them), and to say when what was
    added ahead is in (:attr:`settled`)."""

    def __init__(self, transactional_id: str, transaction_timeout_ms: int) -> None:
        super().__init__(transactional_id, transaction_timeout_ms)
        self.group_ahead: str | None = None
        self.settled = asyncio.Event()
        self.settled.set()

    def consumer_group_to_add(self) -> str | None:
        group: str | None = super().consumer_group_to_add()
        if group is None and self._txn_consumer_group is None and self.is_in_transaction():
            return self.group_ahead
        return group

    def add_ahead(self, partitions: Iterable[TopicPartition], group_id: str) -> None:
        if not self.is_in_transaction():
            return  # committing or aborting already: too late to add ahead
        for tp in partitions:
            self.maybe_add_partition_to_txn(tp)
        if self._txn_consumer_group is None:
            self.group_ahead = group_id
        self._check_settled()
        self.notify_task_waiter()

    def partition_added(self, tp: TopicPartition) -> None:
        super().partition_added(tp)
        self._check_settled()

    def consumer_group_added(self, group_id: str) -> None:
        super().consumer_group_added(group_id)
        self._check_settled()

    def _check_settled(self) -> None:
        group_pending = self.group_ahead is not None and self._txn_consumer_group is None
        if self._pending_txn_partitions or group_pending:
            self.settled.clear()
        else:
            self.settled.set()

    def complete_transaction(self) -> None:
        self.group_ahead = None
        super().complete_transaction()
        self.settled.set()

    def error_transaction(self, exc: BaseException) -> None:
        self.group_ahead = None
        super().error_transaction(exc)
        self.settled.set()

    def fatal_error(self, exc: BaseException) -> None:
        self.group_ahead = None
        super().fatal_error(exc)
        self.settled.set()


class TransactionalProducer(AIOKafkaProducer):
    """A transactional producer whose open transaction can take its partitions and its
    consumer group ahead of the records and offsets (:meth:`add_ahead`).

    A commit of aiokafka's takes four coordinator round trips in a row: add the
    partitions, add the group, send the offsets, end the transaction (about 15 ms at
    200 events/s here, docs/decisions.md §23). Worse, aiokafka sends the records as
    soon as their partitions are in, while it still adds the group or sends the
    offsets: the broker (since Kafka 3.6) checks each transactional write with the
    coordinator, which refuses while the transaction changes, and the refusal reaches
    aiokafka's old produce version as NOT_ENOUGH_REPLICAS, retried 10 ms later (on
    hundreds of commits a minute at 200 events/s). A task that opens its next
    transaction as soon as the last one ends and adds what it will write to it while it
    waits for events, then, once that is in (:meth:`added_ahead`), sends the offsets
    and then the records, leaves an event two short round trips and the end.
    """

    def __init__(self, *, transactional_id: str, **options: Any) -> None:
        super().__init__(transactional_id=transactional_id, **options)
        timeout_ms = options.get("transaction_timeout_ms", TRANSACTION_TIMEOUT_MS)
        self._ahead = _AheadTransactionManager(transactional_id, timeout_ms)
        # The one manager the producer, its accumulator and its sender share.
        self._txn_manager = self._ahead
        self._message_accumulator._txn_manager = self._ahead
        self._sender._txn_manager = self._ahead

    def add_ahead(self, partitions: Iterable[TopicPartition], group_id: str) -> None:
        """Add ``partitions`` and ``group_id`` to the open transaction now, in the
        background. A partition added and never written costs the broker one marker when
        the transaction ends."""
        self._ahead.add_ahead(partitions, group_id)

    async def added_ahead(self, timeout_s: float = ADDED_AHEAD_TIMEOUT_S) -> None:
        """Until what :meth:`add_ahead` asked for is in the transaction (or it ended, or
        the producer's sender stopped: the next send raises why). Raise
        ``KafkaTimeoutError`` after ``timeout_s``, so the caller aborts and starts over."""
        settled = self._ahead.settled
        if settled.is_set():
            return
        waiting = asyncio.ensure_future(settled.wait())
        sender = self._sender.sender_task
        try:
            done, _ = await asyncio.wait(
                {waiting} if sender is None else {waiting, sender},
                timeout=timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiting.cancel()
        if not done:
            raise KafkaTimeoutError(f"partitions not added to the transaction in {timeout_s} s")
