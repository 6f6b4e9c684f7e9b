"""One task: partition ``p`` of every input of the topology, its tables, its transactions.

A task is the unit of ownership and of exactly-once. It holds partition ``p`` of
each stage's tables. With one producer per task, its own, ``<app_id>-task-<p>``:
when the partitions move to another worker (or a killed worker restarts), the
new owner's producer fences the old one, so a zombie can never commit for a
task it lost. With one producer per worker (the default, docs/decisions.md §35),
the worker's tasks commit together in rounds (:meth:`Task.start_round`) and a
zombie is fenced through the consumer group's generation (streams.fencing).

States, in order: ``RESTORING`` (tables being read back), ``RUNNING`` (handles
messages; a transaction may be committing in the background while it handles
the next ones), ``FAILED`` (a transaction failed: everything not committed is
dropped and the task is restored and rewound), ``REVOKED``.

What the task handled since its last commit (outputs, table changes, input
positions) is committed together, in one transaction, when the first of it
has waited its stage's ``commit_within_ms``, and only one transaction is in
flight at a time: under load transactions grow instead of multiplying.
Records fetched while a transaction is in flight wait (:meth:`Task.wait`) and are
handled together when it ends: they could not be committed any sooner, and one
batch costs less than the many small ones a busy fetch loop brings (each batch
encodes the rows it changed once).

As soon as a transaction has committed, the task opens the next one and adds to it,
in the background, the partitions the last one wrote and the consumer group
(:meth:`streams.clients.TransactionalProducer.add_ahead`): the next commit then
sends its records and offsets at once and ends, two coordinator round trips
instead of four. A transaction opened ahead and left idle is ended after
:data:`OPEN_AHEAD_MAX_S`, long before the coordinator's timeout would abort it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from streams.state import ChangelogRecord, PartitionTable
from streams.topology import Effect, Output

log = logging.getLogger(__name__)

# How long a transaction opened ahead may stay open with nothing in it before the task
# ends it (and opens the next): far below the transaction timeout (60 s), which would
# fence the producer.
OPEN_AHEAD_MAX_S = 10.0
# How long after a commit the next transaction's partitions and group are added. The
# coordinator refuses them (CONCURRENT_TRANSACTIONS) until the last one's markers are
# written, a few ms after its end, and aiokafka retries only 20 ms later, which is
# often when the next event's records need them. Timed on the project's broker, a
# transaction of 3 records and offsets 20 ms after the last one: median 7-10 ms and
# 90th percentile 18-19 ms without adding ahead, 7-9 / 17-23 ms adding at once,
# 5-6 / 7-8 ms adding 6 ms after (4 rounds of 60).
ADD_AHEAD_AFTER_S = 0.006


class TaskState(enum.Enum):
    RESTORING = "restoring"
    RUNNING = "running"
    FAILED = "failed"
    REVOKED = "revoked"


@dataclass
class Pending:
    """What a task handled since its last commit began."""

    outputs: list[Output] = field(default_factory=list)
    positions: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    due_s: float | None = None  # when it must be committed (monotonic clock)
    effects: list[Effect] = field(default_factory=list)  # to run once it is committed

    def add(
        self,
        tp: TopicPartition,
        next_offset: int,
        outputs: Sequence[Output],
        due_s: float,
        effects: Sequence[Effect] = (),
    ) -> None:
        self.outputs.extend(outputs)
        self.effects.extend(effects)
        self.positions[tp] = next_offset
        self.due_s = due_s if self.due_s is None else min(self.due_s, due_s)


@dataclass
class Committed:
    """What one successful commit wrote: for counters, snapshots and metrics."""

    outputs: int
    changelog_ends: dict[TopicPartition, int]
    seconds: float
    source_ms: list[int]  # the input timestamps of the outputs that asked for them
    effects: list[Effect]  # what the committed batches asked to run after their commit
    positions: dict[TopicPartition, int]  # the next offset of each input it committed


Resolve = Callable[[str], str]  # an output role to its topic name
CommitOffsets = Callable[[dict[TopicPartition, int]], Awaitable[None]]  # at_least_once


class Task:
    """Partition ``partition`` of every input, its tables and its producer."""

    def __init__(
        self,
        partition: int,
        *,
        inputs: Iterable[TopicPartition],
        tables: dict[str, PartitionTable],
        producer: Any,
        transactional: bool,
    ) -> None:
        self.partition = partition
        self.inputs = frozenset(inputs)
        self.tables = tables
        self.producer = producer
        self.transactional = transactional
        self.state = TaskState.RESTORING
        self.pending = Pending()
        self.committing: asyncio.Task[Committed] | None = None
        # When the transaction opened ahead was opened (monotonic), or None when none is,
        # and every partition the task's transactions wrote: each one opened ahead takes
        # them all (at most the output topics' partitions and the task's changelogs).
        # Only the last one's saved less: outputs keyed by device or network land on
        # another partition each time, and each new one cost a round trip on the way.
        self.opened_ahead_s: float | None = None
        self.written: set[TopicPartition] = set()
        # The next offset the task has to handle on each input (after its last handled
        # message): a batch fetched before a rewind is cut to what comes after.
        self.next_offsets: dict[TopicPartition, int] = {}
        # Records fetched while a transaction was in flight, per input, in offset order:
        # handled when it ends (Runtime._commit_ended), or dropped with what was pending.
        self.waiting: dict[TopicPartition, list[Any]] = {}
        # Per input, the offset below which the records' effects already ran, in a
        # transaction Kafka acknowledged and then aborted (Runtime._note_reverted): they
        # are handled again for their outputs and table changes, without their effects.
        self.effects_taken_before: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------ handling

    def fresh(self, tp: TopicPartition, messages: list[Any]) -> list[Any]:
        """The messages of a fetched batch the task has not handled yet."""
        expected = self.next_offsets.get(tp)
        if expected is None or messages[0].offset >= expected:
            return messages
        return [m for m in messages if m.offset >= expected]

    def wait(
        self, tp: TopicPartition, messages: list[Any], most: int, *, hold: bool = False
    ) -> list[Any]:
        """Keep ``messages`` of ``tp`` until :meth:`take_waiting` while a transaction is
        in flight, or while ``hold`` (another task's is: the worker's one producer commits
        every task at once), or records of ``tp`` wait already (order is kept). What to
        handle now instead: nothing, or, once ``tp`` has ``most`` records waiting, all of
        them."""
        if not self.busy and not hold and tp not in self.waiting:
            return messages
        waiting = self.waiting.setdefault(tp, [])
        waiting.extend(messages)
        if len(waiting) < most:
            return []
        return self.waiting.pop(tp)

    def take_waiting(self) -> dict[TopicPartition, list[Any]]:
        """The records that waited for the transaction in flight to end."""
        waiting, self.waiting = self.waiting, {}
        return waiting

    def handled(
        self,
        tp: TopicPartition,
        next_offset: int,
        outputs: Sequence[Output],
        due_s: float,
        effects: Sequence[Effect] = (),
    ) -> None:
        self.next_offsets[tp] = next_offset
        self.pending.add(tp, next_offset, outputs, due_s, effects)

    def touched(self, due_s: float) -> None:
        """Table changes made outside a batch (the sweep): commit them by ``due_s``."""
        pending = self.pending
        pending.due_s = due_s if pending.due_s is None else min(pending.due_s, due_s)

    def idle_ahead(self, now_s: float) -> bool:
        """A transaction opened ahead has waited :data:`OPEN_AHEAD_MAX_S` with nothing in it."""
        return (
            self.opened_ahead_s is not None
            and not self.busy
            and self.pending.due_s is None
            and now_s - self.opened_ahead_s >= OPEN_AHEAD_MAX_S
        )

    @property
    def busy(self) -> bool:
        return self.committing is not None and not self.committing.done()

    def due(self, now_s: float) -> bool:
        return (
            self.state is TaskState.RUNNING
            and not self.busy
            and self.pending.due_s is not None
            and now_s >= self.pending.due_s
        )

    # ------------------------------------------------------------ committing

    def start_commit(
        self, resolve: Resolve, group_id: str, commit_offsets: CommitOffsets
    ) -> asyncio.Task[Committed]:
        """Commit everything pending, in the background; the task goes on handling."""
        pending, self.pending = self.pending, Pending()
        changes = [record for table in self.tables.values() for record in table.drain()]
        self.committing = asyncio.ensure_future(
            self._commit(pending, changes, resolve, group_id, commit_offsets)
        )
        return self.committing

    def start_round(
        self,
        tasks: Sequence[Task],
        resolve: Resolve,
        group_id: str,
        commit_offsets: CommitOffsets,
    ) -> asyncio.Task[Committed]:
        """Commit everything ``tasks`` handled, in one transaction of this task's
        producer, in the background (the worker's one producer: this task owns no
        partition, only the producer and the transaction it opened ahead). Each of
        ``tasks`` is busy until it ends."""
        merged = Pending()
        changes: list[ChangelogRecord] = []
        for task in tasks:
            pending, task.pending = task.pending, Pending()
            merged.outputs.extend(pending.outputs)
            merged.effects.extend(pending.effects)
            merged.positions.update(pending.positions)
            changes += [record for table in task.tables.values() for record in table.drain()]
        self.committing = asyncio.ensure_future(
            self._commit(merged, changes, resolve, group_id, commit_offsets)
        )
        for task in tasks:
            task.committing = self.committing
        return self.committing

    async def _commit(
        self,
        pending: Pending,
        changes: list[ChangelogRecord],
        resolve: Resolve,
        group_id: str,
        commit_offsets: CommitOffsets,
    ) -> Committed:
        started = time.monotonic()
        producer = self.producer
        if not self.transactional:
            # Outputs first, table changes once every output is delivered, offsets last.
            # A crash or a lost batch between two of them leaves tables behind the outputs,
            # never ahead: the input handled again from state that lacks it is decided
            # again (a duplicate), where state that already held it would take it for a
            # repeat and publish nothing for it (a loss).
            deliveries = await _send(producer, pending.outputs, [], resolve)
            await producer.flush()
            _require_delivered(deliveries)  # else the offsets would skip lost records
            if changes:
                rows = await _send(producer, [], changes, resolve)
                await producer.flush()
                _require_delivered(rows)
                deliveries.merge(rows)
            if pending.positions:
                await commit_offsets(dict(pending.positions))
            return _committed(pending, deliveries, started)
        opened_ahead, self.opened_ahead_s = self.opened_ahead_s is not None, None
        if not opened_ahead:
            await producer.begin_transaction()
        try:
            if opened_ahead:
                # Records sent while the transaction still changes, or beside its offsets,
                # are refused and retried 10 ms later (streams.clients.TransactionalProducer):
                # add what is not in yet, now, send the offsets, then the records.
                producer.add_ahead(self.written, group_id)
                await producer.added_ahead()
            offsets_first = opened_ahead and bool(pending.positions)
            if offsets_first:
                await producer.send_offsets_to_transaction(dict(pending.positions), group_id)
            deliveries = await _send(producer, pending.outputs, changes, resolve)
            if pending.positions and not offsets_first:
                await producer.send_offsets_to_transaction(dict(pending.positions), group_id)
            # aiokafka ends a transaction with a commit once its batches are done, whether
            # they were delivered or failed (a batch that expired while the broker was
            # away): the transaction would commit its offsets without those records. So
            # every record must be delivered before the commit is asked for; if one was
            # not, the transaction is aborted and the task handles the batch again.
            if deliveries.futures:
                await asyncio.wait(deliveries.futures)
            _require_delivered(deliveries)
            await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        committed = _committed(pending, deliveries, started)
        await self._open_ahead(deliveries, group_id)
        return committed

    async def _open_ahead(self, deliveries: Deliveries, group_id: str) -> None:
        """Open the next transaction now, with the partitions the task writes and the
        group already on their way into it. A failure here only leaves none open: the
        next commit begins its own (and meets any fencing there)."""
        self.written.update(deliveries.written)
        if self.state is not TaskState.RUNNING:
            return
        try:
            await self.producer.begin_transaction()
        except Exception as error:
            log.info("transaction.not_opened_ahead task=%d error=%r", self.partition, error)
            return
        opened = self.opened_ahead_s = time.monotonic()
        asyncio.get_running_loop().call_later(
            ADD_AHEAD_AFTER_S, self._add_ahead, opened, frozenset(self.written), group_id
        )

    def _add_ahead(self, opened: float, partitions: frozenset[TopicPartition], group: str) -> None:
        if self.opened_ahead_s == opened:  # still open ahead: no commit has begun with it
            self.producer.add_ahead(partitions, group)

    async def close_ahead(self) -> None:
        """Abort the transaction opened ahead, if any (before the producer stops)."""
        if self.opened_ahead_s is not None:
            self.opened_ahead_s = None
            with contextlib.suppress(Exception):
                await self.producer.abort_transaction()

    async def settle(self) -> Committed | BaseException | None:
        """Wait for the transaction in flight, if any: what it wrote, or why it failed."""
        committing, self.committing = self.committing, None
        if committing is None:
            return None
        try:
            return await committing
        except Exception as error:
            return error

    def drop_pending(self) -> None:
        """Forget what was handled and not committed (a rewind reads it again)."""
        self.pending = Pending()
        self.waiting = {}
        self.next_offsets.clear()
        for table in self.tables.values():
            table.changed = {}


@dataclass
class Deliveries:
    """The delivery futures of one commit's records: one per batch of one partition."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    # Where each changelog partition's rows now end: the last batch written to it, and
    # how many records that batch holds (its future gives the first one's offset).
    changelog_last: dict[TopicPartition, tuple[asyncio.Future[Any], int]] = field(
        default_factory=dict
    )
    written: set[TopicPartition] = field(default_factory=set)  # every partition written

    def merge(self, later: Deliveries) -> None:
        """Add the deliveries of records sent after these (they end the changelogs)."""
        self.futures += later.futures
        self.changelog_last.update(later.changelog_last)
        self.written |= later.written


class UndeliveredError(RuntimeError):
    """A record of the transaction was not delivered: the transaction must not commit."""


class _Batches:
    """A commit's records gathered into one batch per partition, handed to the producer
    a batch at a time.

    aiokafka's ``send()`` costs a coroutine, a metadata lookup, a partitioner call and
    a delivery future per record, and resolving thousands of futures costs as much
    again: most of the producer's share of a drain (docs/benchmarks.md). Its batch
    interface (``create_batch``, ``send_batch``) costs that once per batch. Records keep
    their order within a partition, which is all Kafka keeps; a record without a
    partition goes where the producer's default partitioner would put it (murmur2 of its
    key, as Kafka's Java client does), so a key stays on one partition whichever way it
    was sent.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.open: dict[TopicPartition, Any] = {}
        self.deliveries = Deliveries()
        self.partitions: dict[str, list[int]] = {}

    async def partition_of(self, topic: str, key: bytes | None) -> int:
        partitions = self.partitions.get(topic)
        if partitions is None:
            partitions = self.partitions[topic] = sorted(await self.producer.partitions_for(topic))
        if key is None:
            return random.choice(partitions)
        return partitions[_key_slot(key, len(partitions))]

    async def add(
        self,
        tp: TopicPartition,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        headers = list(headers)  # aiokafka's compiled batch builder takes a list only
        batch = self.open.get(tp)
        if batch is None:
            batch = self.open[tp] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            await self._send(tp, batch)  # full: send it, start the next
            batch = self.open[tp] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                raise ValueError(f"a record for {tp.topic} does not fit an empty batch")

    async def _send(self, tp: TopicPartition, batch: Any) -> None:
        batch.close()
        delivery = await self.producer.send_batch(batch, tp.topic, partition=tp.partition)
        self.deliveries.futures.append(delivery)
        self.deliveries.written.add(tp)
        self.deliveries.changelog_last[tp] = (delivery, batch.record_count())

    async def send_all(self) -> Deliveries:
        open_batches, self.open = self.open, {}
        for tp, batch in open_batches.items():
            await self._send(tp, batch)
        return self.deliveries


@functools.lru_cache(maxsize=65_536)
def _key_slot(key: bytes, partitions: int) -> int:
    """Which of ``partitions`` a key goes to (murmur2, as Kafka's default partitioner):
    kept for the keys seen lately, as users and devices recur and murmur2 is pure
    Python in aiokafka (about 5% of a drain's CPU uncached)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def forget_placements() -> None:
    """Empty the cache of keys placed lately: the keys of outputs name users, devices
    and networks, and the runtime keeps none of them longer than it needs (it knows
    nothing of erasure; its housekeeping calls this every ``PLACEMENTS_KEPT_S``)."""
    _key_slot.cache_clear()


def placements_kept() -> int:
    """How many keys the placement cache holds now."""
    return _key_slot.cache_info().currsize


async def _send(
    producer: Any, outputs: Sequence[Output], changes: list[ChangelogRecord], resolve: Resolve
) -> Deliveries:
    """Hand the records to the producer; return their delivery futures.

    The futures are not awaited here: the commit (or the flush) waits for every
    delivery at once.
    """
    batches = _Batches(producer)
    changelogs: set[TopicPartition] = set()
    for output in outputs:
        topic = resolve(output.role)
        partition = output.partition
        if partition is None:
            partition = await batches.partition_of(topic, output.key)
        await batches.add(
            TopicPartition(topic, partition),
            output.key,
            output.value,
            output.timestamp_ms,
            output.headers,
        )
    for change in changes:
        tp = TopicPartition(change.topic, change.partition)
        changelogs.add(tp)
        await batches.add(tp, change.key, change.value, None, ())
    deliveries = await batches.send_all()
    deliveries.changelog_last = {
        tp: last for tp, last in deliveries.changelog_last.items() if tp in changelogs
    }
    return deliveries


def _require_delivered(deliveries: Deliveries) -> None:
    """Raise if any batch was not delivered (its future failed or is not done)."""
    failed = 0
    first: BaseException | None = None
    for delivery in deliveries.futures:
        error = delivery.exception() if delivery.done() else UndeliveredError("not done")
        if error is not None:
            failed += 1
            first = first or error
    if failed:
        raise UndeliveredError(
            f"{failed} of {len(deliveries.futures)} batches not delivered: {first!r}"
        ) from first


def _committed(pending: Pending, deliveries: Deliveries, started: float) -> Committed:
    """What a commit (or flush) wrote, and where each changelog partition's rows now end."""
    return Committed(
        len(pending.outputs),
        {
            tp: delivery.result().offset + records
            for tp, (delivery, records) in deliveries.changelog_last.items()
        },
        time.monotonic() - started,
        [o.source_ms for o in pending.outputs if o.source_ms is not None],
        pending.effects,
        dict(pending.positions),
    )
