"""An in-memory Kafka for the runtime's unit tests: the three clients of streams.clients.

Just enough Kafka for the runtime: topics as lists of records per partition;
transactions whose records (and offsets) only ``read_committed`` readers see,
and only once committed; a commit marker after each transaction, as Kafka
writes one; fencing by transactional id; committed offsets per group. A test
can hold a producer's commits (to act while a transaction is in flight), make
its next commit fail, trigger a rebalance, and act between a fetch and its use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import (
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
    ProducerFenced,
    UnknownTopicOrPartitionError,
)


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Out:
    """An output of a handler (the shape streams.topology.Output asks for)."""

    role: str
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    source_ms: int | None = None
    partition: int | None = None


class Metadata(NamedTuple):
    topic: str
    partition: int
    offset: int


@dataclass
class Txn:
    """One transaction: open until committed or aborted."""

    transactional_id: str
    state: str = "open"  # open, committed, aborted
    partitions: set[TopicPartition] = field(default_factory=set)
    offsets: dict[tuple[str | None, TopicPartition], int] = field(default_factory=dict)
    groups_ahead: set[str] = field(default_factory=set)  # added before any offsets


@dataclass
class Entry:
    record: Record
    txn: Txn | None  # None: written outside a transaction
    marker: bool = False  # a commit or abort marker: takes an offset, never returned

    @property
    def visible(self) -> bool:
        return not self.marker and (self.txn is None or self.txn.state == "committed")


class FakeBroker:
    def __init__(self) -> None:
        self.logs: dict[str, list[list[Entry]]] = {}
        self.committed: dict[tuple[str | None, TopicPartition], int] = {}  # (group, tp)
        self.epochs: dict[str, int] = {}  # transactional id -> its producers' latest epoch
        self.open: dict[str, Txn] = {}  # transactional id -> its open transaction
        self.failures: dict[str, int] = {}  # how many next commits of that id fail
        self.holds: dict[str, asyncio.Event] = {}  # commits of that id wait for this
        self.unmarked: dict[str, int] = {}  # how many next commits of that id skip markers
        self.hanging: dict[str, list[Txn]] = {}  # acknowledged, never marked, per id
        self.undelivered: dict[str, int] = {}  # how many next sends to that topic fail
        self.unreachable_starts = 0  # how many next transactional producer starts fail
        # Records a producer's batch holds: small, so a commit spans several batches of a
        # partition and the runtime's batching is exercised as with aiokafka's byte limit.
        self.batch_records = 3
        self.history: list[tuple[str, Any]] = []  # ("record", Record) / ("offset", (tp, n))
        # Each plain offset commit a consumer sent (at least once), as the partitions it named.
        self.offset_commits: list[set[TopicPartition]] = []
        self.wake = asyncio.Event()

    # ------------------------------------------------------------ what tests use

    def create_topic(self, topic: str, partitions: int) -> None:
        self.logs[topic] = [[] for _ in range(partitions)]

    def produce(self, topic: str, partition: int, key: bytes | None, value: bytes) -> Record:
        """Append one record outside any transaction (what an outside producer writes)."""
        return self.append(topic, partition, key, value, None, None, ())

    def records(self, topic: str, *, committed: bool = True) -> list[Record]:
        """Every record of ``topic`` a read_committed reader sees (or, with ``committed``
        False, every record written, aborted and open ones too), partition by partition."""
        return [
            entry.record
            for log in self.logs[topic]
            for entry in log
            if not entry.marker and (entry.visible or not committed)
        ]

    def compacted(self, topic: str, partition: int) -> dict[bytes, bytes]:
        """What a restore of ``partition`` of ``topic`` reads back: the latest committed
        value per key, a tombstone removing it."""
        rows: dict[bytes, bytes] = {}
        for record in self.records(topic):
            if record.partition == partition and record.key is not None:
                if record.value is None:
                    rows.pop(record.key, None)
                else:
                    rows[record.key] = record.value
        return rows

    def fail_next_commit(self, transactional_id: str, times: int = 1) -> None:
        """The next ``times`` commits of ``transactional_id`` fail (the transaction stays
        open, as after a failed EndTxn: the producer has to abort it)."""
        self.failures[transactional_id] = times

    def fail_next_starts(self, times: int = 1) -> None:
        """The next ``times`` starts of a transactional producer fail as aiokafka's start
        fails while the broker is away (its bootstrap finds no broker that answers)."""
        self.unreachable_starts = times

    def fail_next_deliveries(self, topic: str, times: int = 1) -> None:
        """The next ``times`` records (or batches) sent to ``topic`` are not written and
        their delivery futures fail, as aiokafka fails a batch that expired while the
        broker was away. As in aiokafka, the producer's transaction does not notice: a
        commit still commits what was delivered."""
        self.undelivered[topic] = times

    def skip_markers_of_next_commit(self, transactional_id: str, times: int = 1) -> None:
        """The next ``times`` commits of ``transactional_id`` are acknowledged and no marker
        is written, as a lone Kafka broker does when it shuts down mid-commit (its
        partitions have no leader; it takes them for deleted and skips them, KAFKA-5202).
        Their records stay open (unseen by read_committed readers, holding the last stable
        offset) and their offsets pending, until the id's next marker decides them:
        committed by its next commit, aborted by an abort (a new producer's fencing abort).
        Kafka decides each partition by the marker that reaches it; here the next marker
        decides the whole transaction (the runtime writes the same partitions each time)."""
        self.unmarked[transactional_id] = times

    def hold_commits(self, transactional_id: str) -> asyncio.Event:
        """Commits of ``transactional_id`` wait until the returned event is set."""
        self.holds[transactional_id] = asyncio.Event()
        return self.holds[transactional_id]

    # ------------------------------------------------------------ what clients use

    def log(self, tp: TopicPartition) -> list[Entry]:
        if tp.topic not in self.logs or not 0 <= tp.partition < len(self.logs[tp.topic]):
            raise UnknownTopicOrPartitionError(str(tp))
        return self.logs[tp.topic][tp.partition]

    def append(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        txn: Txn | None,
        timestamp_ms: int | None,
        headers: Iterable[tuple[str, bytes]] | None,
    ) -> Record:
        if partition is None:  # a stand-in partitioner: the same key, the same partition
            partition = zlib.crc32(key or b"") % len(self.logs[topic])
        log = self.log(TopicPartition(topic, partition))
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        record = Record(topic, partition, len(log), key, value, stamp, tuple(headers or ()))
        log.append(Entry(record, txn))
        if txn is None:
            self.history.append(("record", record))
        else:
            txn.partitions.add(TopicPartition(topic, partition))
        self.changed()
        return record

    def stable(self, tp: TopicPartition) -> int:
        """The last stable offset: the first offset of a transaction still open."""
        log = self.log(tp)
        return next((e.record.offset for e in log if e.txn and e.txn.state == "open"), len(log))

    def leave_open(self, txn: Txn) -> None:
        """An acknowledged commit whose markers were skipped (skip_markers_of_next_commit)."""
        self.open.pop(txn.transactional_id, None)
        self.hanging.setdefault(txn.transactional_id, []).append(txn)

    def end(self, txn: Txn, state: str) -> None:
        for left in self.hanging.pop(txn.transactional_id, []):
            self._decide(left, state)  # this marker closes what was left open, too
        self.open.pop(txn.transactional_id, None)
        for tp in txn.partitions:
            log = self.log(tp)
            log.append(Entry(Record(tp.topic, tp.partition, len(log), None, None, 0), txn, True))
        self._decide(txn, state)

    def _decide(self, txn: Txn, state: str) -> None:
        txn.state = state
        if state == "committed":
            self.committed.update(txn.offsets)
            self.history += [
                ("record", e.record)
                for tp in txn.partitions
                for e in self.log(tp)
                if e.txn is txn and not e.marker
            ]
            self.history += [("offset", item) for item in txn.offsets.items()]
        self.changed()

    def changed(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()


class FakeConsumer:
    """A group consumer (``group_id``) or a reader (None); always read_committed."""

    def __init__(self, broker: FakeBroker, group_id: str | None) -> None:
        self.broker = broker
        self.group_id = group_id
        self.listener: Any = None
        self.positions: dict[TopicPartition, int] = {}  # the assignment, with positions
        self.paused: set[TopicPartition] = set()
        self.stopped = False
        # Awaited with the batches getmany() is about to return: the test acts there as if
        # it happened between the fetch and the moment the runtime handles its result.
        self.before_return: (
            Callable[[dict[TopicPartition, list[Record]]], Awaitable[None]] | None
        ) = None
        # The max_records of each getmany() call, in order.
        self.asked: list[int | None] = []
        # Whether getmany() lets the event loop turn once before it returns what it has.
        # aiokafka does not: while it has records buffered, getmany() returns without
        # suspending, and a loop of nothing else never lets another task run. False: as
        # aiokafka (it still suspends while it waits for records).
        self.turns_when_buffered = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self.positions = dict.fromkeys(partitions, 0)

    async def rebalance(self, assigned: Iterable[TopicPartition]) -> None:
        """What the group coordinator does (eager protocol): revoke all, then assign
        ``assigned``, each partition read on from its committed offset."""
        await self.listener.on_partitions_revoked(set(self.positions))
        self.positions = {tp: self.broker.committed.get((self.group_id, tp), 0) for tp in assigned}
        self.paused &= set(self.positions)
        await self.listener.on_partitions_assigned(set(self.positions))

    def _owned(self, tp: TopicPartition) -> None:
        if tp not in self.positions:
            raise IllegalStateError(f"{tp} is not assigned")

    async def position(self, tp: TopicPartition) -> int:
        self._owned(tp)
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._owned(tp)
        self.positions[tp] = offset

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.broker.committed.get((self.group_id, tp))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.broker.offset_commits.append(set(offsets))
        for tp, offset in offsets.items():
            self.broker.committed[(self.group_id, tp)] = offset
            self.broker.history.append(("offset", ((self.group_id, tp), offset)))

    def pause(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._owned(tp)
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._owned(tp)
        self.paused -= set(tps)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        # As aiokafka: asking of a partition the consumer does not hold is an assertion.
        assert tp in self.positions, "Partition is not assigned"
        return self.broker.stable(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp in self.positions, "Partition is not assigned"
        return len(self.broker.log(tp))

    def lose(self, *tps: TopicPartition) -> None:
        """The group takes ``tps`` from this consumer before any callback has said so (a
        lost generation, a fenced twin): aiokafka's subscription changes first."""
        for tp in tps:
            self.positions.pop(tp, None)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        log = self.broker.logs.get(topic)
        return None if log is None else set(range(len(log)))

    async def topics(self) -> set[str]:
        return set(self.broker.logs)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.stable(tp) for tp in tps}

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        self.asked.append(max_records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        if self.turns_when_buffered:
            await asyncio.sleep(0)
        while True:
            before = dict(self.positions)
            batches = self._fetch(partitions, max_records)
            # Unlike aiokafka, it also returns at once after reading only records it must
            # not show (aborted ones, markers): aiokafka waits out timeout_ms there.
            if batches or self.positions != before or loop.time() >= deadline:
                break
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.broker.wake.wait()
        if batches and self.before_return is not None:
            await self.before_return(batches)
        return batches

    def _fetch(
        self, partitions: tuple[TopicPartition, ...], max_records: int | None
    ) -> dict[TopicPartition, list[Record]]:
        left = max_records or 1_000_000
        batches: dict[TopicPartition, list[Record]] = {}
        for tp in partitions or list(self.positions):
            if tp in self.paused:
                continue
            log, stable = self.broker.log(tp), self.broker.stable(tp)
            while left and self.positions[tp] < stable:
                entry = log[self.positions[tp]]
                self.positions[tp] += 1
                if entry.visible:
                    batches.setdefault(tp, []).append(entry.record)
                    left -= 1
        return batches


class FakeBatch:
    """aiokafka's BatchBuilder: records for one partition, full at ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None, int | None, Any]] = []
        self.closed = False

    def append(
        self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Any
    ) -> object | None:
        if not isinstance(headers, list):  # as aiokafka's compiled builder
            raise TypeError(
                f"Argument 'headers' has incorrect type (expected list, got {headers!r})"
            )
        if self.closed or len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, timestamp, headers))
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """A transactional producer (``transactional_id``) or a plain one (None)."""

    def __init__(self, broker: FakeBroker, transactional_id: str | None) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        self.epoch = 0
        self.txn: Txn | None = None
        self.started = self.stopped = False
        self.member: Any = None  # FakeClients.producer(member=...)

    async def start(self) -> None:
        """Takes the transactional id: aborts what an older producer left open, fences it."""
        tid = self.transactional_id
        if tid is not None and self.broker.unreachable_starts > 0:
            self.broker.unreachable_starts -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True
        if tid is not None:
            left_open = self.broker.open.get(tid)
            if left_open is not None:
                self.broker.end(left_open, "aborted")
            self.epoch = self.broker.epochs[tid] = self.broker.epochs.get(tid, 0) + 1

    async def stop(self) -> None:
        self.stopped = True

    @property
    def tid(self) -> str:
        if self.transactional_id is None or not self.started:
            raise IllegalStateError("not a started transactional producer")
        return self.transactional_id

    def _check(self) -> None:
        if self.broker.epochs[self.tid] != self.epoch:
            raise ProducerFenced()

    async def begin_transaction(self) -> None:
        self._check()
        if self.txn is not None:
            raise IllegalStateError("a transaction is already in progress")
        self.txn = self.broker.open[self.tid] = Txn(self.tid)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Metadata]:
        return self._write(topic, partition, [(key, value, timestamp_ms, headers)])

    async def partitions_for(self, topic: str) -> set[int]:
        if topic not in self.broker.logs:
            raise UnknownTopicOrPartitionError(topic)
        return set(range(len(self.broker.logs[topic])))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.broker.batch_records)

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[Metadata]:
        return self._write(topic, partition, batch.records)

    def _write(
        self, topic: str, partition: int | None, records: list[tuple[Any, Any, Any, Any]]
    ) -> asyncio.Future[Metadata]:
        """Appends ``records`` in order (a record or a batch); the future gives the first
        one's offset, or fails as a batch that expired (``fail_next_deliveries``)."""
        if self.stopped:  # as aiokafka refuses a send once its producer is stopped
            raise ProducerClosed()
        if self.transactional_id is not None:
            self._check()
            if self.txn is None:
                raise IllegalStateError("send outside a transaction")
        delivered: asyncio.Future[Metadata] = asyncio.get_running_loop().create_future()
        if self.broker.undelivered.get(topic, 0) > 0:
            self.broker.undelivered[topic] -= 1
            delivered.set_exception(KafkaTimeoutError("batch expired before delivery"))
            return delivered
        assert records, "nothing to send"
        written = [
            self.broker.append(topic, partition, key, value, self.txn, timestamp_ms, headers)
            for key, value, timestamp_ms, headers in records
        ]
        delivered.set_result(Metadata(topic, written[0].partition, written[0].offset))
        return delivered

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, **kwargs: Any
    ) -> Metadata:
        return (await self.send(topic, value, **kwargs)).result()

    def add_ahead(self, partitions: Iterable[TopicPartition], group_id: str) -> None:
        """Partitions and a group added to the open transaction before its records."""
        self._check()
        if self.txn is None:
            raise IllegalStateError("nothing to add to outside a transaction")
        self.txn.partitions.update(partitions)  # each gets the end's marker, as in Kafka
        self.txn.groups_ahead.add(group_id)

    async def added_ahead(self) -> None:
        """What add_ahead asked for is in at once here."""
        self._check()

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        self._check()
        assert self.txn is not None, "offsets sent outside a transaction"
        self.txn.offsets.update({(group_id, tp): offset for tp, offset in offsets.items()})

    async def commit_transaction(self) -> None:
        self._check()
        assert self.txn is not None, "commit outside a transaction"
        hold = self.broker.holds.get(self.tid)
        if hold is not None:
            await hold.wait()
        self._check()  # fenced while it waited: the commit fails
        if self.broker.failures.get(self.tid, 0) > 0:
            self.broker.failures[self.tid] -= 1
            raise KafkaError("injected commit failure")
        if self.broker.unmarked.get(self.tid, 0) > 0:
            self.broker.unmarked[self.tid] -= 1
            self.broker.leave_open(self.txn)
        else:
            self.broker.end(self.txn, "committed")
        self.txn = None

    async def abort_transaction(self) -> None:
        self._check()
        if self.txn is not None:
            self.broker.end(self.txn, "aborted")
            self.txn = None

    async def flush(self) -> None:
        pass


class FakeClients:
    """streams.clients.Clients on a FakeBroker; remembers what it made, for the tests."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.consumer: FakeConsumer | None = None  # the latest group consumer
        self.producers: list[FakeProducer] = []

    def group_consumer(self, group_id: str) -> FakeConsumer:
        self.consumer = FakeConsumer(self.broker, group_id)
        return self.consumer

    def reader(self) -> FakeConsumer:
        return FakeConsumer(self.broker, None)

    def producer(self, transactional_id: str | None, *, member: Any = None) -> FakeProducer:
        # The fake broker fences by transactional id only: ``member`` (whose generation a
        # worker's one producer sends with its offsets) is kept for the tests to read.
        self.producers.append(FakeProducer(self.broker, transactional_id))
        self.producers[-1].member = member
        return self.producers[-1]

    async def stable_offsets(
        self, consumer: FakeConsumer, group_id: str, partitions: Any
    ) -> dict[TopicPartition, int | None]:
        """Committed offsets: the fake broker makes a transaction's offsets visible at its
        commit, so none is ever pending."""
        return {tp: self.broker.committed.get((group_id, tp)) for tp in partitions}

    async def committers(self, consumer: FakeConsumer, group_id: str, partitions: Any) -> set[str]:
        """The fake broker keeps no offset metadata: nobody to fence by it."""
        return set()

    def producer_of(self, transactional_id: str) -> FakeProducer:
        """The latest producer made with ``transactional_id``."""
        return next(p for p in reversed(self.producers) if p.transactional_id == transactional_id)
