"""The worker's Kafka clients on librdkafka (confluent-kafka), behind the runtime's seam.

Why librdkafka (docs/decisions.md §18): aiokafka encodes and decodes the Kafka
protocol in Python on the worker's one thread. At 200 events/s the worker spent
about 2.5 ms of CPU per event, about 2 ms of it in aiokafka's fetches, sends and
transaction requests for some thirty input partitions; the engine needs about
0.4 ms. librdkafka does that work in C, in threads of its own.

The runtime is written against a small asyncio interface (the methods of
aiokafka's clients it uses); the classes here give it on librdkafka:

- blocking calls (a poll that waits for records, a transaction's commit) run in
  a thread, where librdkafka releases the GIL; a wait is cut into short slices
  so a stop never waits long for one;
- ``produce()`` queues a record at once; its delivery is known when the
  transaction commits (or the producer flushes);
- rebalance callbacks arrive inside a poll, in that thread: they are handed to
  the event loop and waited for, so the partitions move only once the runtime
  has committed (revocation) or restored (assignment);
- positions past transaction markers, the last stable offset and the high
  watermark come from librdkafka's statistics (``consumer`` lag) and from its
  partition-end events (``reader`` restores), as aiokafka's consumer knew them.

Keys are placed with murmur2, as Java and aiokafka producers place them
(librdkafka's own default is CRC32): an output keyed by a user lands where
that user's events do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as RdPartition

log = logging.getLogger(__name__)
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

# Longest a single poll in a thread may wait: a longer wait is several polls, so a
# cancelled wait (a stop) is noticed within this long.
POLL_SLICE_S = 0.2
# How often librdkafka reports each partition's offsets (the lag gauges, and the
# open-transaction watch, read them once a second).
STATS_INTERVAL_MS = 1000
# A transaction's requests wait this long at most (librdkafka's own default is 5 min).
TRANSACTION_CALL_TIMEOUT_S = 60.0
READER_GROUP = "rewardstream-reader"


class Record:
    """A consumed record, with the attributes the runtime and the handlers read."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, message: Any) -> None:
        self.topic: str = message.topic()
        self.partition: int = message.partition()
        self.offset: int = message.offset()
        self.key: bytes | None = message.key()
        self.value: bytes | None = message.value()
        self.headers: Sequence[tuple[str, bytes]] = message.headers() or ()
        self.timestamp: int = message.timestamp()[1]


class Delivery:
    """Where a produced record landed, known once librdkafka reports its delivery."""

    __slots__ = ("error", "offset")

    def __init__(self) -> None:
        self.offset: int | None = None
        self.error: KafkaError | None = None

    def reported(self, error: KafkaError | None, message: Any) -> None:
        self.error = error
        if error is None:
            self.offset = message.offset()

    def result(self) -> Delivery:
        if self.error is not None:
            raise KafkaException(self.error)
        if self.offset is None:
            raise RuntimeError("the record's delivery has not been reported yet")
        return self


def rdkafka_config(bootstrap_servers: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka's settings: the connection (``app.kafkaio.rdkafka_options``), and its
    log lines through Python's logging."""
    return {"bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA_LOG, **options}


class _Wakeable:
    """What both clients share: a loop to hand callbacks to, a lock around librdkafka
    calls made from threads, and errors librdkafka reports on its own threads."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def _on_error(self, error: KafkaError) -> None:
        # Transport errors (a broker restarting, a connection refused) are retried by
        # librdkafka itself; only a fatal error ends the client, and the next call says so.
        log.warning("kafka.client_error fatal=%s error=%s", error.fatal(), error.str())


class RdConsumer(_Wakeable):
    """A consumer with aiokafka's methods that the runtime uses.

    With a ``group.id`` it is the runtime's group consumer (subscribe, rebalance
    listener, committed offsets, lag from statistics); without one it is a reader
    for restores and views (assign, seek, read to the end).
    """

    def __init__(self, config: Mapping[str, Any], *, grouped: bool) -> None:
        super().__init__()
        self.config = dict(config)
        self.grouped = grouped
        self.consumer: Consumer | None = None
        self.listener: Any = None
        self.closing = False
        # From librdkafka's statistics, per partition: (last stable offset, high
        # watermark, next offset to fetch when nothing fetched is waiting for the app).
        self.offsets: dict[TopicPartition, tuple[int, int, int | None]] = {}
        # A reader's own view of where it stands: set by seeks, moved by each record
        # and by partition-end events (which step over transaction markers).
        self.positions: dict[TopicPartition, int] = {}
        self.wanted: dict[TopicPartition, int | None] = {}
        self.assigned_as: dict[TopicPartition, int] | None = None
        self.paused_now: set[TopicPartition] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = {
            **self.config,
            "error_cb": self._on_error,
            "enable.partition.eof": not self.grouped,
        }
        if self.grouped:
            config |= {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self._on_stats}
        self.consumer = Consumer(config)

    async def stop(self) -> None:
        self.closing = True
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await asyncio.to_thread(self._locked, consumer.close)

    def _locked(self, call: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return call(*args)

    def _client(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("the consumer is not started")
        return self.consumer

    # ------------------------------------------------------------ group

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.listener = listener
        self._client().subscribe(
            topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, consumer: Consumer, partitions: list[RdPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if self.listener is not None and not self.closing:
            self._on_loop(self.listener.on_partitions_assigned(tps))

    def _revoked(self, consumer: Consumer, partitions: list[RdPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        for tp in tps:
            self.offsets.pop(tp, None)
        if self.listener is not None and not self.closing:
            self._on_loop(self.listener.on_partitions_revoked(tps))

    def _on_loop(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run a listener's coroutine on the event loop and wait for it (this thread is
        inside a poll; the partitions move when the callback returns)."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def _on_stats(self, text: str) -> None:
        try:
            report = orjson.loads(text)
            for topic, about in report.get("topics", {}).items():
                for key, p in about.get("partitions", {}).items():
                    if key == "-1" or p.get("fetch_state") != "active":
                        continue
                    idle = p.get("fetchq_cnt", 0) == 0
                    fetch = p.get("next_offset", -1) if idle else None
                    tp = TopicPartition(topic, int(key))
                    self.offsets[tp] = (p.get("ls_offset", -1), p.get("hi_offset", -1), fetch)
        except Exception:  # statistics only feed gauges: never fail a poll over them
            log.exception("kafka.stats_unreadable")

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        found = self.offsets.get(tp)
        return None if found is None or found[0] < 0 else found[0]

    def highwater(self, tp: TopicPartition) -> int | None:
        found = self.offsets.get(tp)
        return None if found is None or found[1] < 0 else found[1]

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        marks = [RdPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        await asyncio.to_thread(self._client().commit, offsets=marks, asynchronous=False)

    async def committed(self, tp: TopicPartition) -> int | None:
        found = await asyncio.to_thread(
            self._client().committed, [RdPartition(tp.topic, tp.partition)], 10.0
        )
        return found[0].offset if found and found[0].offset >= 0 else None

    def consumer_group_metadata(self) -> Any:
        return self._client().consumer_group_metadata()

    def pause(self, *tps: TopicPartition) -> None:
        if tps:
            self._client().pause([RdPartition(tp.topic, tp.partition) for tp in tps])

    def resume(self, *tps: TopicPartition) -> None:
        if tps:
            self._client().resume([RdPartition(tp.topic, tp.partition) for tp in tps])

    # ------------------------------------------------------------ positions

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer will hand out."""
        if not self.grouped:
            if tp not in self.positions:
                raise KeyError(f"no position for {tp} yet")
            return self.positions[tp]
        found = self._client().position([RdPartition(tp.topic, tp.partition)])
        handed = found[0].offset if found else -1
        stats = self.offsets.get(tp)
        fetched = stats[2] if stats is not None and stats[2] is not None else -1
        position = max(handed, fetched)
        if position < 0:
            raise KeyError(f"no position for {tp} yet")
        return position

    # ------------------------------------------------------------ reader

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self.wanted = dict.fromkeys(partitions)
        self.positions = {tp: p for tp, p in self.positions.items() if tp in self.wanted}
        self.assigned_as = None  # applied at the next read

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self.grouped:
            self._client().seek(RdPartition(tp.topic, tp.partition, offset))
            self.offsets.pop(tp, None)
            return
        self.wanted[tp] = offset
        self.positions[tp] = offset
        self.assigned_as = None

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's end: its last stable offset (the consumer reads committed)."""
        return {tp: (await self._watermarks(tp))[1] for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: (await self._watermarks(tp))[0] for tp in tps}

    async def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        partition = RdPartition(tp.topic, tp.partition)
        found = await asyncio.to_thread(
            self._client().get_watermark_offsets, partition, timeout=10.0, cached=False
        )
        if found is None:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no offsets for {tp}"))
        return int(found[0]), int(found[1])

    def _apply_assignment(self, only: Sequence[TopicPartition]) -> None:
        """Hand librdkafka the reader's partitions at their sought offsets, and read only
        ``only`` of them (when given)."""
        consumer = self._client()
        wanted = {tp: self.positions.get(tp, OFFSET_BEGINNING) for tp in self.wanted}
        if self.assigned_as is None:
            consumer.assign([RdPartition(tp.topic, tp.partition, o) for tp, o in wanted.items()])
            self.assigned_as = wanted
            self.paused_now = set()
        hold = set(self.wanted) - set(only) if only else set()
        if hold != self.paused_now:
            if self.paused_now - hold:
                consumer.resume([RdPartition(t.topic, t.partition) for t in self.paused_now - hold])
            if hold - self.paused_now:
                consumer.pause([RdPartition(t.topic, t.partition) for t in hold - self.paused_now])
            self.paused_now = hold

    # ------------------------------------------------------------ reading

    async def getmany(
        self, *only: TopicPartition, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Record]]:
        """What arrives within ``timeout_ms`` (returning at the first records), by partition."""
        if not self.grouped:
            if not self.wanted:
                await asyncio.sleep(timeout_ms / 1000)
                return {}
            self._apply_assignment(only)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            wait = max(0.0, min(deadline - time.monotonic(), POLL_SLICE_S))
            messages = await asyncio.to_thread(self._locked, self._fetch, wait, max_records)
            found = self._sorted(messages)
            if found or time.monotonic() >= deadline:
                return found

    def _fetch(self, wait_s: float, max_records: int) -> list[Any]:
        consumer = self.consumer
        if consumer is None:
            return []
        messages: list[Any] = consumer.consume(max_records, 0)
        if not messages and wait_s > 0:
            first = consumer.poll(wait_s)
            if first is not None:
                messages = [first, *consumer.consume(max_records - 1, 0)]
        return messages

    def _sorted(self, messages: list[Any]) -> dict[TopicPartition, list[Record]]:
        found: dict[TopicPartition, list[Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._failed(message, error)
                continue
            record = Record(message)
            tp = TopicPartition(record.topic, record.partition)
            found.setdefault(tp, []).append(record)
        if not self.grouped:
            for tp, records in found.items():
                self.positions[tp] = records[-1].offset + 1
        return found

    def _failed(self, message: Any, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            # The reader stands at the partition's end: past any transaction marker.
            tp = TopicPartition(message.topic(), message.partition())
            self.positions[tp] = max(self.positions.get(tp, 0), message.offset())
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka.consume_error topic=%s error=%s", message.topic(), error.str())


class RdProducer(_Wakeable):
    """A producer with aiokafka's methods that the runtime uses; transactional when it
    has a ``transactional.id``. ``group_metadata`` gives the group consumer's metadata
    that a transaction's offsets are sent with (the broker fences a producer whose
    consumer has left the group's generation)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        group_metadata: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = dict(config)
        self.group_metadata = group_metadata
        self.producer: Producer | None = None
        self.transactional = "transactional.id" in self.config

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        producer = Producer({**self.config, "error_cb": self._on_error})
        if self.transactional:
            await asyncio.to_thread(producer.init_transactions, TRANSACTION_CALL_TIMEOUT_S)
        self.producer = producer

    async def stop(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, 10.0)

    def _client(self) -> Producer:
        if self.producer is None:
            raise RuntimeError("the producer is not started")
        return self.producer

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Delivery:
        """Queue a record; its :class:`Delivery` fills in when librdkafka reports it."""
        producer = self._client()
        delivery = Delivery()
        options: dict[str, Any] = {"on_delivery": delivery.reported}
        if partition is not None:
            options["partition"] = partition
        if timestamp_ms is not None:
            options["timestamp"] = timestamp_ms
        if headers:
            options["headers"] = list(headers)
        while True:
            try:
                producer.produce(topic, value, key, **options)
                return delivery
            except BufferError:  # the local queue is full: let deliveries drain it
                await asyncio.to_thread(producer.poll, 0.05)

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Delivery:
        delivery = await self.send(topic, value, key=key)
        await self.flush()
        return delivery.result()

    async def flush(self) -> None:
        producer = self._client()
        left = await asyncio.to_thread(producer.flush, TRANSACTION_CALL_TIMEOUT_S)
        if left:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, f"{left} not delivered"))

    async def begin_transaction(self) -> None:
        self._client().begin_transaction()

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        if self.group_metadata is None:
            raise RuntimeError(f"no group consumer to send {group_id}'s offsets with")
        marks = [RdPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        await asyncio.to_thread(
            self._client().send_offsets_to_transaction,
            marks,
            self.group_metadata(),
            TRANSACTION_CALL_TIMEOUT_S,
        )

    async def commit_transaction(self) -> None:
        producer = self._client()
        await asyncio.to_thread(self._commit, producer)

    @staticmethod
    def _commit(producer: Producer) -> None:
        producer.commit_transaction(TRANSACTION_CALL_TIMEOUT_S)
        producer.poll(0)  # every delivery report of the transaction, served now

    async def abort_transaction(self) -> None:
        await asyncio.to_thread(self._client().abort_transaction, TRANSACTION_CALL_TIMEOUT_S)


class RdKafkaClients:
    """The runtime's clients on librdkafka, with the deployment's connection settings."""

    def __init__(
        self,
        bootstrap_servers: str,
        options: Mapping[str, Any],
        *,
        fetch_max_wait_ms: int,
        linger_ms: int,
    ) -> None:
        self.common = rdkafka_config(bootstrap_servers, options)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms
        self.group: RdConsumer | None = None

    def group_consumer(self, group_id: str) -> RdConsumer:
        """The consumer of every stage's inputs. The range assignor gives one member the
        same partition numbers of every input topic (they have as many partitions): the
        partitions of one task (streams.task) never part."""
        self.group = RdConsumer(
            {
                **self.common,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": self.fetch_max_wait_ms,
            },
            grouped=True,
        )
        return self.group

    def reader(self) -> RdConsumer:
        """A consumer with no group, for restores and views: committed records only."""
        return RdConsumer(
            {
                **self.common,
                # librdkafka wants a group id even for assign(); it never joins the
                # group nor commits.
                "group.id": READER_GROUP,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": self.fetch_max_wait_ms,
            },
            grouped=False,
        )

    def producer(self, transactional_id: str | None) -> RdProducer:
        """A transactional producer with ``transactional_id``, or (None) a plain idempotent one."""
        config = {
            **self.common,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "partitioner": "murmur2_random",
        }
        if transactional_id is None:
            return RdProducer(config)
        config["transactional.id"] = transactional_id
        return RdProducer(config, self._group_metadata)

    def _group_metadata(self) -> Any:
        if self.group is None:
            raise RuntimeError("no group consumer yet")
        return self.group.consumer_group_metadata()
