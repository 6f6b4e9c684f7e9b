"""The worker's consume-process-produce loop, on aiokafka.

One consumer group reads the input topic of every stage. For each partition in
a fetched batch, the stage's pure handler turns the messages into outputs and
state changes; then, with ``exactly_once``, one Kafka transaction writes the
outputs, the state changes (to the tables' changelogs) and the input offset
together. Either all three are visible to ``read_committed`` readers or none
is: a worker killed at any point leaves nothing half-done, and its successor
restores the state as of the last committed batch and reads on from the
offset committed with it.

Each input partition has its own transactional producer, with the id
``<app_id>-<topic>-<partition>``: when a partition moves to another worker (or a
killed worker restarts), the new owner's producer fences the old one, so a
zombie can never commit for a partition it lost.

With ``at_least_once`` one plain idempotent producer writes everything and
offsets are committed after delivery; a crash may then decide an event again
(docs/reliability.md).

Nothing here knows rewards: stages are (topic, tables, handler) triples
declared in :mod:`topologies` and handled by :class:`app.pipeline.Pipeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from app.contract.records import SourcePosition
from app.kafkaio import seek_to_first
from app.pipeline import Output, Pipeline, Tables
from app.replay import kafka_partitioner
from app.settings import Settings
from streams import snapshot
from streams.packing import PackError, items_of, pack
from streams.state import ChangelogRecord, PartitionTable, Unavailable, restore
from topologies import (
    TABLE_LEDGER,
    TABLE_LINK_STATE,
    TABLE_USER_STATE,
    TABLE_WAITING,
    StageSpec,
    changelog_topic,
)

log = logging.getLogger(__name__)

Handler = Callable[[Pipeline, Tables, Any], list[Output]]
# Which field of app.pipeline.Tables each declared table fills.
TABLE_FIELDS = {
    TABLE_USER_STATE: "users",
    TABLE_LEDGER: "ledgers",
    TABLE_LINK_STATE: "links",
    TABLE_WAITING: "waiting",
}
# How many rows of a table the background sweep looks at per batch of its partition.
SWEEP_SLICE = 256
# Retry backoff of the transactional producers (see _open_producer).
TRANSACTION_RETRY_BACKOFF_MS = 10
# Topic roles between the worker's own stages, whose records are packed (streams.packing).
PACKED_ROLES = frozenset({"links", "linked"})
# Intake pauses while one of this worker's partitions of a later stage is more than this
# many offsets behind its end, and resumes at the second figure: read without a brake,
# intake runs ahead of the link stage through a backlog, and users' events queue up
# waiting for their link facts (see app.pipeline.MAX_WAITING).
INTAKE_PAUSE_BEHIND = 64
INTAKE_RESUME_BEHIND = 16
# How often the loop looks for partitions whose commit ended while it holds their batches.
HELD_POLL_MS = 5
# Backoff while the broker cannot take a transaction (restarting, unreachable).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


def position(message: Any) -> SourcePosition:
    return SourcePosition(
        message.topic, message.partition, message.offset, message.key, message.timestamp
    )


def handle_intake(pipeline: Pipeline, tables: Tables, message: Any) -> list[Output]:
    return pipeline.intake(position(message), message.value)


def handle_link(pipeline: Pipeline, tables: Tables, message: Any) -> list[Output]:
    at = position(message)
    try:
        items = items_of(message.key, message.value)
    except PackError as error:
        return [pipeline.unreadable(at, message.value, error)]
    return [out for key, value in items for out in pipeline.link(tables, key, value, at)]


def handle_decide(pipeline: Pipeline, tables: Tables, message: Any) -> list[Output]:
    at = position(message)
    try:
        items = items_of(message.key, message.value)
    except PackError as error:
        return [pipeline.unreadable(at, message.value, error)]
    return [out for _, value in items for out in pipeline.decide(tables, at.partition, value, at)]


HANDLERS: dict[str, Handler] = {
    "intake": handle_intake,
    "link": handle_link,
    "decide": handle_decide,
}


@dataclass(frozen=True)
class Stage:
    """A stage bound to this deployment's topic names."""

    name: str
    topic: str
    tables: tuple[str, ...]
    handler: Handler


class StageRunner:
    """Runs every stage of the topology for the partitions this worker is assigned."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        specs: Sequence[StageSpec],
        *,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.group_id = settings.app_id
        self.transactional = settings.processing_guarantee == "exactly_once"
        self.client_options = dict(client_options or {})
        names = settings.topic_names()
        self.topic_of_role = names
        self.stages = {
            names[spec.reads]: Stage(spec.name, names[spec.reads], spec.tables, HANDLERS[spec.name])
            for spec in specs
        }
        self.tables: dict[tuple[str, int], PartitionTable] = {}
        self.sweeps: dict[tuple[str, int], _Sweep] = {}
        self.watermarks: dict[TopicPartition, int] = {}
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.owned: set[TopicPartition] = set()
        # Each partition's last transaction, committing in the background, and what was
        # fetched for a partition while it was (see _pipeline).
        self.committing: dict[TopicPartition, asyncio.Task[bool]] = {}
        self.held: dict[TopicPartition, list[Any]] = {}
        self.assignments = 0  # how many assignments this worker has had
        self.rebalancing = False  # between a revocation and the next assignment
        # Per changelog partition, the offset up to which this worker's rows hold everything
        # (after its restore, then after each record it committed): a snapshot's offset.
        self.changelog_ends: dict[TopicPartition, int] = {}
        self.snapshots = settings.data_dir / "snapshots" / settings.app_id
        self.snapshotted: dict[TopicPartition, int] = {}  # the offset of each one written
        self.last_snapshot_s = time.monotonic()
        # The next offset to handle per partition, for backpressure (see _pace_intake).
        self.next_offsets: dict[TopicPartition, int] = {}
        self.intake_paused = False
        self.idle = False  # the last fetch brought nothing and nothing is held
        self.lag_shown: set[tuple[str, str]] = set()  # the lag series now exported
        # How to place a key on each packed topic, as Kafka's default partitioner would.
        self.placers: dict[str, Callable[[bytes], int]] = {}
        self.ready = False
        self.batches_committed = 0
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._plain: AIOKafkaProducer | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        common = {"bootstrap_servers": self.settings.bootstrap_servers, **self.client_options}
        self._plain = AIOKafkaProducer(
            acks="all", enable_idempotence=True, linger_ms=self.settings.linger_ms, **common
        )
        await self._plain.start()
        self._restorer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # if compaction removes the start mid-restore
            isolation_level="read_committed",
            **common,
        )
        await self._restorer.start()
        self._consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            # How long aiokafka's background fetcher may sleep between fetches when it
            # has nothing to do; its 200 ms default added up to 200 ms to every hop.
            consumer_timeout_ms=self.settings.fetch_max_wait_ms,
            **common,
        )
        await self._consumer.start()
        self._consumer.subscribe(list(self.stages), listener=_Rebalance(self))

    async def stop(self) -> None:
        """Leave the group (so partitions move at once), then close every client."""
        self.ready = False
        async with self._lock:
            await self.settle()
            with contextlib.suppress(Exception):  # a restart then reads more, nothing else
                await self._snapshot()
            if self._consumer is not None:
                await self._consumer.stop()
            for producer in self.producers.values():
                with contextlib.suppress(Exception):
                    await producer.stop()
            self.producers.clear()
            for client in (self._restorer, self._plain):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch, process and commit batches until ``stopping`` is set."""
        consumer = self._require(self._consumer)
        while not stopping.is_set():
            behind = self._behind(consumer)
            self._pace_intake(consumer, behind)
            self._export_lag(behind)
            assignments = self.assignments
            # Held batches wait for their partition's commit: look again soon.
            batches = await consumer.getmany(
                timeout_ms=HELD_POLL_MS if self.held else 200,
                max_records=self.settings.batch_max_records,
            )
            self.idle = not batches and not self.held
            async with self._lock:
                if self.rebalancing:
                    continue  # nothing is handled between a revocation and the assignment
                if assignments != self.assignments:
                    batches = await self._fetched_since(batches)
                # A batch fetched before its partition was recovered is dropped: recovery
                # seeks back to the committed offset, so it is fetched again.
                for tp in await self._recover_failed():
                    batches.pop(tp, None)
                    self.held.pop(tp, None)
                if batches or self.held:
                    await self._process(batches)
                # Last in the round: a partition the snapshot's settle recovers is read
                # again from its committed offset by the next fetch, not by this one's.
                await self._snapshot_if_due()

    async def _fetched_since(
        self, batches: Mapping[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """The batches still valid after a rebalance that happened while they were fetched.

        A new assignment resets each partition's position to its committed offset, at or
        before the first offset of a batch fetched earlier: that batch comes again. A
        batch fetched after the reset lies behind the position (which can be further
        still: a transaction's commit marker takes an offset).
        """
        consumer = self._require(self._consumer)
        valid = {}
        for tp, messages in batches.items():
            if tp in self.owned and await consumer.position(tp) > messages[-1].offset:
                valid[tp] = messages
        return valid

    @property
    def side_producer(self) -> AIOKafkaProducer:
        """A non-transactional producer for records outside the stages (model checkpoints)."""
        return self._require(self._plain)

    # ------------------------------------------------------------ batches

    async def _process(self, batches: Mapping[TopicPartition, list[Any]]) -> None:
        work = [(tp, messages) for tp, messages in batches.items() if tp in self.owned]
        if self.transactional:
            await self._pipeline(work)
            return
        committed: dict[TopicPartition, int] = {}
        written: dict[TopicPartition, Any] = {}
        for tp, messages in work:
            outputs, changes = self._handle(tp, messages)
            written |= await self._send(self.side_producer, outputs, changes)
            committed[tp] = messages[-1].offset + 1
        try:
            await self.side_producer.flush()
            self._wrote(written)
            await self._require(self._consumer).commit(committed)
            self.batches_committed += len(committed)
        except Exception:
            log.exception("batch.not_committed partitions=%d", len(committed))
            for tp in committed:
                await self._recover(tp)

    def _handle(
        self, tp: TopicPartition, messages: list[Any]
    ) -> tuple[list[Output], list[ChangelogRecord]]:
        stage = self.stages[tp.topic]
        tables = self._tables_for(stage, tp.partition)
        if messages:
            self.next_offsets[tp] = messages[-1].offset + 1
        outputs: list[Output] = []
        for message in messages:
            outputs.extend(stage.handler(self.pipeline, tables, message))
        self.pipeline.flush(tables)
        self.watermarks[tp] = max(self.watermarks.get(tp, 0), self.pipeline.newest_ts)
        self._sweep(stage, tp)
        self._count_rows(stage)
        changes = [
            record
            for table in stage.tables
            for record in self.tables[(table, tp.partition)].drain()
        ]
        return outputs, changes

    async def _pipeline(self, work: list[tuple[TopicPartition, list[Any]]]) -> None:
        """Handle each partition's batch and leave its transaction committing in the
        background: the loop goes on with the other partitions and the next fetch while
        the broker commits, instead of waiting for the slowest commit of the round.

        A partition whose previous transaction is still open (committing, or within
        ``commit_interval_ms`` of its start) holds what was fetched for it, and the
        next round handles all of it in one transaction: under load, transactions grow
        instead of multiplying, and the broker's work per event falls. If the previous
        commit failed, the partition is recovered here and what it held is dropped:
        recovery seeks back to the committed offset, so it is fetched again.
        """
        for tp, messages in work:
            self.held.setdefault(tp, []).extend(messages)
        for tp in list(self.held):
            if not self._free(tp):
                continue
            messages = self.held.pop(tp)
            if not await self._committed(tp):
                await self._recover(tp)
                continue
            if tp not in self.owned:
                continue
            outputs, changes = self._handle(tp, messages)
            self.committing[tp] = asyncio.create_task(
                self._transact(tp, messages, outputs, changes)
            )

    def _behind(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Per partition this worker owns and has handled: how many offsets lie between the
        next one to handle and its end (last stable offset, or high watermark before the
        first read_committed fetch says it)."""
        assigned = consumer.assignment()  # owned can be ahead of it during a rebalance
        behind = {}
        for tp in self.owned:
            if tp not in assigned or tp not in self.next_offsets:
                continue
            end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            if end is not None:
                behind[tp] = max(end - self.next_offsets[tp], 0)
        return behind

    def _pace_intake(
        self, consumer: AIOKafkaConsumer, behind: Mapping[TopicPartition, int]
    ) -> None:
        """Pause intake while a later stage on this worker is far behind; resume after.

        A stage with nothing to fetch never holds intake back, whatever its offsets say:
        records of aborted transactions and commit markers take offsets a read_committed
        consumer never receives, and a paused intake would wait for them forever.
        """
        later = [n for tp, n in behind.items() if self.stages[tp.topic].name != "intake"]
        limit = INTAKE_RESUME_BEHIND if self.intake_paused else INTAKE_PAUSE_BEHIND
        self.intake_paused = max(later, default=0) > limit and not self.idle
        assigned = consumer.assignment()
        intake = [
            tp for tp in self.owned if tp in assigned and self.stages[tp.topic].name == "intake"
        ]
        if self.intake_paused:
            consumer.pause(*intake)
        else:
            consumer.resume(*intake)
        self.pipeline.metrics.intake_paused.set(int(self.intake_paused))

    def _export_lag(self, behind: Mapping[TopicPartition, int]) -> None:
        """``rewardstream_consumer_lag_records`` per partition of ``behind``; the series of
        a partition no longer in it is removed, so after a rebalance only its new owner
        reports it (an autoscaler sums these)."""
        gauge = self.pipeline.metrics.consumer_lag
        shown = {(tp.topic, str(tp.partition)): n for tp, n in behind.items()}
        for labels, lag in shown.items():
            gauge.labels(*labels).set(lag)
        for labels in self.lag_shown - shown.keys():
            gauge.remove(*labels)
        self.lag_shown = set(shown)

    def _free(self, tp: TopicPartition) -> bool:
        task = self.committing.get(tp)
        return task is None or task.done()

    async def _committed(self, tp: TopicPartition) -> bool:
        """Wait for ``tp``'s transaction in flight; whether it committed (or none was open)."""
        task = self.committing.pop(tp, None)
        return True if task is None else await task

    async def _recover_failed(self) -> set[TopicPartition]:
        """Recover the partitions whose transaction in flight has failed by now."""
        failed = {tp for tp, task in self.committing.items() if task.done() and not task.result()}
        for tp in failed:
            del self.committing[tp]
            await self._recover(tp)
        return failed

    async def settle(self) -> None:
        """Wait until no transaction is in flight; recover the partitions whose failed."""
        for tp in list(self.committing):
            if not await self._committed(tp):
                await self._recover(tp)

    async def _transact(
        self,
        tp: TopicPartition,
        messages: list[Any],
        outputs: list[Output],
        changes: list[ChangelogRecord],
    ) -> bool:
        """Commit one batch of ``tp``: outputs, state changes and offset in one transaction.
        On failure the transaction is aborted and False returned; the caller recovers.
        A success returns no sooner than ``commit_interval_ms`` after the start."""
        producer = self.producers[tp]
        started = time.monotonic()
        try:
            await producer.begin_transaction()
            try:
                written = await self._send(producer, outputs, changes)
                offsets = {tp: messages[-1].offset + 1}
                await producer.send_offsets_to_transaction(offsets, self.group_id)
                await producer.commit_transaction()
                self._wrote(written)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
                raise
            self.batches_committed += 1
            self.pipeline.metrics.commit_seconds.observe(time.monotonic() - started)
            rest = self.settings.commit_interval_ms / 1000 - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)
            return True
        except Exception as error:
            log.warning(
                "transaction.aborted topic=%s partition=%d error=%s",
                tp.topic,
                tp.partition,
                type(error).__name__,
            )
            return False

    async def _send(
        self, producer: AIOKafkaProducer, outputs: list[Output], changes: list[ChangelogRecord]
    ) -> dict[TopicPartition, Any]:
        """Queue the batch's records; return the last changelog delivery per partition."""
        # send() queues the record and returns its delivery future, which is not awaited
        # here: the transaction commit (or the flush) waits for every delivery at once.
        packs: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        written: dict[TopicPartition, Any] = {}
        for output in outputs:
            topic = self.topic_of_role[output.role]
            if output.role in PACKED_ROLES:
                key = output.key or b""
                place = self.placers.get(topic) or await self._placer(producer, topic)
                packs.setdefault((topic, place(key)), []).append((key, output.value))
            else:
                await producer.send(topic, output.value, key=output.key)
        for (topic, partition), items in packs.items():
            for value in pack(items):
                await producer.send(topic, value, partition=partition)
        for change in changes:
            written[TopicPartition(change.topic, change.partition)] = await producer.send(
                change.topic, change.value, key=change.key, partition=change.partition
            )
        return written

    def _wrote(self, written: Mapping[TopicPartition, Any]) -> None:
        """After a commit (or flush): where each changelog partition's rows now end."""
        for tp, delivery in written.items():
            self.changelog_ends[tp] = delivery.result().offset + 1

    async def _placer(self, producer: AIOKafkaProducer, topic: str) -> Callable[[bytes], int]:
        partitions = await producer.partitions_for(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} has no partitions the producer can see")
        placer = self.placers[topic] = kafka_partitioner(len(partitions))
        return placer

    def _count_rows(self, stage: Stage) -> None:
        for table in stage.tables:
            rows = sum(len(t) for (name, _), t in self.tables.items() if name == table)
            self.pipeline.metrics.table_rows.labels(table).set(rows)

    def _sweep(self, stage: Stage, tp: TopicPartition) -> None:
        """Delete a slice of the rows no event can read any more (their time to live is
        over): the deletions commit with the batch, like any other change.

        "Now" is the newest event time this worker's link and decide stages saw, but never
        later than the wall clock: one event stamped 2099 cannot make everybody expire.
        """
        wall_ms = int(time.time() * 1000)
        now_ms = min(self.watermarks.get(tp, 0), wall_ms)
        for table in stage.tables:
            field = TABLE_FIELDS[table]
            rows = self.tables[(table, tp.partition)]
            sweep = self.sweeps.get((table, tp.partition))
            if sweep is None or sweep.done:
                sweep = self.sweeps[(table, tp.partition)] = _Sweep(list(rows.rows))
            for key in sweep.next_slice():
                if self.pipeline.stale(field, rows.get(key), now_ms):
                    del rows[key]
                    self.pipeline.metrics.state_swept.labels(table).inc()

    # ------------------------------------------------------------ state and partitions

    def _tables_for(self, stage: Stage, partition: int) -> Tables:
        views: dict[str, Any] = {field: Unavailable(stage.name) for field in TABLE_FIELDS.values()}
        for table in stage.tables:
            views[TABLE_FIELDS[table]] = self.tables[(table, partition)]
        return Tables(**views)

    async def _take(self, tps: set[TopicPartition]) -> None:
        """Own ``tps``: fence their previous writers, then restore their state."""
        for tp in sorted(tps):
            await self._open_producer(tp)
        fresh: list[PartitionTable] = []
        for tp in tps:
            for table in self.stages[tp.topic].tables:
                view = PartitionTable(changelog_topic(self.settings.app_id, table), tp.partition)
                self.tables[(table, tp.partition)] = view
                fresh.append(view)
        loop = asyncio.get_running_loop()
        started = loop.time()
        restored = await restore(
            self._require(self._restorer), fresh, snapshots=self.snapshots, now_s=time.time()
        )
        self.changelog_ends.update(restored.ends)
        self.owned |= tps
        log.info(
            "partitions.assigned count=%d restored_records=%d from_snapshots=%d seconds=%.2f",
            len(tps),
            restored.records,
            restored.from_snapshots,
            loop.time() - started,
        )

    async def _snapshot_if_due(self) -> None:
        interval = self.settings.snapshot_interval_s
        if interval and time.monotonic() - self.last_snapshot_s >= interval:
            await self.settle()
            await self._snapshot()

    async def _snapshot(self) -> None:
        """Write every owned table partition to a local snapshot (the caller holds the lock
        and has settled: no transaction is in flight, so the rows are all committed)."""
        self.last_snapshot_s = time.monotonic()
        jobs = []
        for view in self.tables.values():
            changelog = TopicPartition(view.topic, view.partition)
            end = self.changelog_ends.get(changelog)
            if end is None or view.changed:
                continue  # not restored yet, or changes not committed: never a guess
            if self.snapshotted.get(changelog) == end:
                continue  # nothing committed since its last snapshot
            jobs.append((changelog, end, dict(view.rows)))
        if not jobs:
            return
        started = time.monotonic()
        written = await asyncio.to_thread(self._write_snapshots, jobs, time.time())
        self.snapshotted.update((tp, end) for tp, end, _ in jobs)
        log.info(
            "snapshot.written tables=%d bytes=%d seconds=%.2f",
            len(jobs),
            written,
            time.monotonic() - started,
        )

    def _write_snapshots(
        self, jobs: list[tuple[TopicPartition, int, dict[bytes, bytes]]], now_s: float
    ) -> int:
        return sum(
            snapshot.write(
                snapshot.path_for(self.snapshots, tp.topic, tp.partition),
                tp.topic,
                tp.partition,
                end,
                rows,
                now_s,
            )
            for tp, end, rows in jobs
        )

    async def _drop(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.owned.discard(tp)
            self.next_offsets.pop(tp, None)
            for table in self.stages[tp.topic].tables:
                view = self.tables.pop((table, tp.partition), None)
                if view is not None:
                    changelog = TopicPartition(view.topic, tp.partition)
                    self.changelog_ends.pop(changelog, None)
                    self.snapshotted.pop(changelog, None)
                self.sweeps.pop((table, tp.partition), None)
            producer = self.producers.pop(tp, None)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def _open_producer(self, tp: TopicPartition) -> None:
        if not self.transactional:
            return
        old = self.producers.pop(tp, None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            transactional_id=f"{self.settings.app_id}-{tp.topic}-{tp.partition}",
            linger_ms=self.settings.linger_ms,
            # The broker refuses to add partitions to a transaction while the previous
            # commit of the same producer is still completing, and the producer retries
            # after this backoff: aiokafka's 100 ms default was most of the latency.
            retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
            **self.client_options,
        )
        # start() initialises the transactional id: it aborts what the previous producer
        # with this id left open and fences that producer from committing anything more.
        await producer.start()
        self.producers[tp] = producer

    async def _recover(self, tp: TopicPartition) -> None:
        """Forget what was not committed for ``tp``: its state and its read position."""
        self.held.pop(tp, None)  # fetched after the failed batch: it comes again
        if self.rebalancing:
            # The partition may belong to another worker already: taking it back would
            # fence its new owner. The assignment takes it again if it is still ours.
            await self._drop({tp})
            return
        for attempt in range(10_000):
            if tp not in self.owned:
                return
            try:
                await self._drop({tp})
                await self._take({tp})
                await self._rewind(tp)
                log.info("partition.recovered topic=%s partition=%d", tp.topic, tp.partition)
                return
            except Exception as error:
                self.owned.add(tp)  # still ours until a rebalance says otherwise
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                log.warning(
                    "partition.recovery_failed topic=%s partition=%d error=%s retry_in=%.1f",
                    tp.topic,
                    tp.partition,
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _rewind(self, tp: TopicPartition) -> None:
        """Read ``tp`` on from its committed offset."""
        consumer = self._require(self._consumer)
        committed = await consumer.committed(tp)
        if committed is None:
            await seek_to_first(consumer, [tp])
        else:
            consumer.seek(tp, committed)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self.assignments += 1
            # Positions are reset to the committed offsets: what was held comes again.
            self.held.clear()
            await self.settle()
            self.rebalancing = False
            await self._drop(self.owned - assigned)
            await self._take(assigned - self.owned)
            self.ready = True

    async def on_revoked(self) -> None:
        """Eager rebalancing revokes everything first. Nothing is handled until the next
        assignment; the transactions in flight end first. State is kept for the partitions
        that come back (it is exactly what was committed) and dropped in on_assigned for
        the ones that do not."""
        self.ready = False
        self.rebalancing = True
        self.held.clear()
        await self.settle()

    @staticmethod
    def _require(client: Any) -> Any:
        if client is None:
            raise RuntimeError("the stage runner is not started")
        return client


class _Sweep:
    """A pass over the keys a table had when the pass began, a slice at a time."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.keys)

    def next_slice(self) -> list[bytes]:
        keys = self.keys[self.position : self.position + SWEEP_SLICE]
        self.position += len(keys)
        return keys


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batches in flight: their transactions commit before the partitions go.
        async with self.runner._lock:
            await self.runner.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.runner.on_assigned(set(assigned))
