"""The worker's fetch, handle and commit loop, on aiokafka.

One consumer group reads every input of the topology. Partition ``p`` of all
inputs forms a task (:mod:`streams.task`): the loop hands each fetched batch to
its stage's handler, and what the tasks handled (outputs, table changes, input
offsets) is committed in the background, when the oldest of it has waited its
stage's ``commit_within_ms``: all tasks together, in one transaction a round of
the worker's one producer (``RuntimeConfig.one_producer``, fenced through the
group: :mod:`streams.fencing`), or each task in a transaction of its own.
The loop never waits for a commit: it fetches on, and a task's records fetched
meanwhile wait for the end of its transaction, when they are handled in one
batch. If a transaction fails, the task drops everything not committed, restores
its tables from their changelogs and reads on from its committed offsets.

With ``at_least_once`` one plain idempotent producer writes everything and the
offsets are committed after delivery, for all tasks together in rounds as the one
transactional producer's are; a crash may then decide an event again
(docs/reliability.md).

The runtime drives parts with one job each: the tasks (:mod:`streams.task`), the
producers they write with and the fencing of earlier writers (:mod:`streams.writers`),
the restore of their tables (:mod:`streams.state`), views every handler can read
(:mod:`streams.views`), and on the clock, off the handling path, the time-to-live
sweep, changelog rolls and local snapshots (:mod:`streams.housekeeping`) and the
watch over its inputs' lag and pacing (:mod:`streams.inputs`). Nothing here knows
rewards: the topology (:mod:`streams.topology`) declares the stages, tables and
handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ProducerFenced

from app.kafkaio import seek_to_first
from streams import snapshot
from streams.clients import Clients
from streams.fencing import group_member
from streams.health import Health
from streams.housekeeping import ChangelogRoller, Snapshots, Sweeper
from streams.inputs import InputWatch
from streams.state import PartitionTable, restore
from streams.task import Committed, Task, TaskState, forget_placements
from streams.topology import Batch, Stage, Topology
from streams.views import Views
from streams.writers import Writers

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# Housekeeping (the sweep, changelog rolls, the input watch) ticks this often.
SWEEP_EVERY_S = 1.0
# The keys of records sent lately are kept for their partition (murmur2 is pure Python)
# no longer than this: they name users, devices and networks, and an erased user's must
# leave memory (docs/privacy.md). Placing them again costs a few µs a key.
PLACEMENTS_KEPT_S = 10.0
# How long the loop waits for records when no task has anything to commit soon.
IDLE_FETCH_MS = 100
# The loop hands at most about this much work to the stages between two turns of the
# event loop: a transaction in flight advances one step (a request sent, a response
# read) per turn, so a turn spent on a thousand records would hold every commit back.
HANDLE_SLICE_S = 0.02
# Backoff while the broker cannot take a transaction (restarting, unreachable).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime needs of the deployment's settings."""

    group_id: str
    transactional: bool
    partitions: int  # of every input topic, output topic and changelog
    batch_max_records: int
    topic_of_role: Mapping[str, str]
    snapshot_dir: Any  # a Path, or None for no snapshots
    snapshot_interval_s: int
    # A snapshot older than this is neither trusted nor kept (streams.snapshot.prune).
    snapshot_max_age_s: float = snapshot.MAX_AGE_S
    # Write a tombstone of a key no row has to every changelog partition this often (0:
    # never): Kafka closes a segment only at an append, and compacts only closed ones,
    # so a quiet partition would keep a deleted row's last value indefinitely.
    changelog_roll_s: float = 0.0
    # Pause the inputs of ``paced`` stages while a stage of ``pacing`` on this worker is
    # more than ``pause_behind`` records behind (resume under ``resume_behind``).
    paced: frozenset[str] = frozenset()
    pacing: frozenset[str] = frozenset()
    pause_behind: int = 5_000
    resume_behind: int = 1_000
    # The roles a task's transactions write to (besides changelogs).
    output_roles: frozenset[str] = frozenset()
    # The time-to-live sweep passes over every row about once in this long.
    sweep_pass_s: float = 3_600.0
    # /ready says 503 while an input has been held behind an open transaction this long.
    blocked_not_ready_s: float = 60.0
    # One transactional producer for every task of the worker, ``<group_id>-worker-
    # <worker_id>``, its transactions' offsets fenced through the group
    # (streams.fencing), instead of one producer per task (docs/decisions.md §35).
    one_producer: bool = False
    worker_id: str = "0"


class Hooks:
    """What the topology's side learns from the runtime; all no-ops by default."""

    def committed(self, partition: int, done: Committed) -> None:
        """A task's transaction committed (its outputs are visible now)."""

    def stale(self, table: str, value: bytes | None, now_ms: int) -> bool:
        """Whether the sweep may delete a row of ``table`` (its time to live is over)."""
        return False

    def housekeeping(self) -> None:
        """Called on every sweep tick, off the handling path."""


class Runtime:
    """Runs a topology's stages for the tasks this worker is assigned."""

    def __init__(
        self,
        config: RuntimeConfig,
        topology: Topology,
        clients: Clients,
        metrics: Any,
        *,
        hooks: Hooks | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.config = config
        self.topology = topology
        self.clients = clients
        self.metrics = metrics
        self.hooks = hooks or Hooks()
        self.wall_ms = wall_ms
        self.stage_of_topic: dict[str, tuple[Stage, str]] = {
            config.topic_of_role[role]: (stage, role)
            for role, stage in topology.stage_of_role().items()
        }
        self.tasks: dict[int, Task] = {}
        self.ready = False
        self.rebalancing = False
        self.assignments = 0
        self.batches_committed = 0
        # Seconds of handling per record, smoothed: how many records fit a slice.
        self.seconds_per_record = 0.0
        now_s = time.monotonic()
        self.last_tick_s = now_s
        self.placements_forgotten_s = now_s
        self.sweeper = Sweeper(
            self.hooks.stale,
            metrics,
            tick_s=SWEEP_EVERY_S,
            pass_s=config.sweep_pass_s,
            wall_ms=wall_ms,
        )
        self.roller = ChangelogRoller(config.changelog_roll_s, now_s=now_s)
        self.snapshots = Snapshots(
            config.snapshot_dir,
            interval_s=config.snapshot_interval_s,
            max_age_s=config.snapshot_max_age_s,
            now_s=now_s,
        )
        self.writers = Writers(
            clients,
            config.group_id,
            partitions=config.partitions,
            outputs=[config.topic_of_role[role] for role in sorted(config.output_roles)],
            changelogs=[topology.changelog_of(table) for table in topology.tables()],
        )
        self.inputs = InputWatch(
            {topic: stage.name for topic, (stage, _) in self.stage_of_topic.items()},
            metrics,
            paced=config.paced,
            pacing=config.pacing,
            pause_behind=config.pause_behind,
            resume_behind=config.resume_behind,
        )
        self.health = Health(self.writers.worker_id(config.worker_id), config.worker_id)
        # The next offset of each input after the last commit Kafka acknowledged to this
        # worker. Committed offsets only move forward; one found lower means Kafka aborted
        # a transaction after acknowledging its commit (_note_reverted).
        self.acknowledged: dict[TopicPartition, int] = {}
        # The same, as saved with the effects' state by an earlier worker (resume_from).
        self.resumed: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._consumer: Any = None
        self._restorer: Any = None
        self._plain: Any = None
        self.views: Views | None = None
        # With config.one_producer: the worker's producer and the transaction it opened
        # ahead, held by a task of no partition whose commits carry every task's work
        # (Task.start_round); and whether a commit of everything is under way. Without
        # transactions the tasks commit in rounds too, through the one plain producer:
        # each commit flushes the producer and commits offsets, and a commit a task made
        # two to three times as many, at about 15% more CPU an event (docs/decisions.md
        # §37, the same batches either way).
        self.rounds = config.one_producer or not config.transactional
        self.fenced_rounds = self.rounds and config.transactional
        self._shared: Task | None = None
        self._committing_all = False
        self._closing: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the clients, read every view to its end, then join the group."""
        self._plain = self.clients.producer(None)
        await self._plain.start()
        if self.rounds and not self.fenced_rounds:
            self._shared = Task(-1, inputs=(), tables={}, producer=self._plain, transactional=False)
            self._shared.state = TaskState.RUNNING
        self._restorer = self.clients.reader()
        await self._restorer.start()
        changelogs = {name: self.topology.changelog_of(name) for name in self.topology.views}
        view_reader = self.clients.reader()
        await view_reader.start()
        self.views = Views(view_reader, changelogs, partitions=self.config.partitions)
        started = time.monotonic()
        records = await self.views.load()
        if changelogs:
            log.info("views.loaded records=%d seconds=%.2f", records, time.monotonic() - started)
        self.views.follow()
        self._consumer = self.clients.group_consumer(self.config.group_id)
        # Every input has ``config.partitions`` partitions (the worker's start-up checks
        # its topics): partition p of each is one task.
        await self._consumer.start()
        self._consumer.subscribe(list(self.stage_of_topic), listener=_Rebalance(self))

    async def commit_handled(self) -> None:
        """Commit everything handled so far and wait for it (its effects have run)."""
        async with self._lock:
            await self._commit_all()

    async def stop(self) -> None:
        """Commit what was handled, leave the group (so partitions move at once), close."""
        self.ready = False
        async with self._lock:
            await self._commit_all()
            with contextlib.suppress(Exception):  # a restart then reads more, nothing else
                await self.snapshots.write(self.tasks)
            if self._consumer is not None:
                await self._consumer.stop()
            for task in self.tasks.values():
                if self._shared is None:
                    with contextlib.suppress(Exception):
                        await task.close_ahead()
                        await task.producer.stop()
            if self._shared is not None:
                with contextlib.suppress(Exception):
                    await self._shared.close_ahead()
                    await self._shared.producer.stop()
            if self.views is not None:
                await self.views.stop()
                with contextlib.suppress(Exception):
                    await self.views.reader.stop()
            for client in (self._restorer, self._plain):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()

    def problems(self) -> list[str]:
        """Why the worker is not doing its job right now (empty: it is)."""
        found = [] if self.ready else ["not assigned, restoring or rebalancing"]
        now = time.monotonic()
        found += self.inputs.blocked_for(now, self.config.blocked_not_ready_s)
        return found + self.health.problems(now)

    @property
    def healthy(self) -> bool:
        """What /ready answers: assigned and restored, no input held behind an open
        transaction for long, no task whose transactions keep failing."""
        return not self.problems()

    def learned_through(self) -> dict[str, int]:
        """Per input (``"<topic>/<partition>"``), the next offset after the last commit
        Kafka acknowledged to this worker: whose effects a snapshot of their state,
        taken now, holds."""
        learned = self.resumed | self.acknowledged
        return {f"{tp.topic}/{tp.partition}": n for tp, n in learned.items()}

    def resume_from(self, learned: Mapping[str, int]) -> None:
        """Take ``learned`` (from :meth:`learned_through`, saved with the state the effects
        built): should Kafka hold a lower committed offset, the records up to it are
        handled without their effects (:meth:`_note_reverted`). Only where the group has
        a committed offset: a topic deleted and created again loses its offsets, and its
        records are all new."""
        for name, offset in learned.items():
            topic, _, partition = name.rpartition("/")
            if topic and partition.isdigit():
                self.resumed[TopicPartition(topic, int(partition))] = offset

    @property
    def side_producer(self) -> Any:
        """A non-transactional producer for records outside the stages (model checkpoints)."""
        return self._require(self._plain)

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch, handle and commit until ``stopping`` is set."""
        consumer = self._require(self._consumer)
        while not stopping.is_set():
            self.inputs.pace(consumer, self.tasks)
            assignments = self.assignments
            batches = await consumer.getmany(
                timeout_ms=self._fetch_wait_ms(), max_records=self._slice_records()
            )
            async with self._lock:
                if self.rebalancing:
                    continue  # nothing is handled between a revocation and the assignment
                if assignments != self.assignments:
                    batches = await self._fetched_since(batches)
                # A batch fetched before its task was rewound comes again: drop it here.
                for partition in await self._recover_failed():
                    for tp in [tp for tp in batches if tp.partition == partition]:
                        del batches[tp]
                if batches:
                    self._handle(batches)
                self._commit_due()
                await self._housekeeping()
            # getmany returns at once while records are buffered: without this the loop
            # would never let a commit in flight move on.
            await asyncio.sleep(0)

    def _slice_records(self) -> int:
        """How many records to take in one turn: about :data:`HANDLE_SLICE_S` of handling."""
        most = self.config.batch_max_records
        if self.seconds_per_record <= 0.0:
            return most
        return max(1, min(most, int(HANDLE_SLICE_S / self.seconds_per_record)))

    def _handled_in(self, started: float, records: int) -> None:
        """A stage took from ``started`` until now over ``records`` records."""
        per_record = (time.perf_counter() - started) / records
        previous = self.seconds_per_record
        self.seconds_per_record = (
            per_record if previous <= 0.0 else 0.8 * previous + 0.2 * per_record
        )

    async def _fetched_since(
        self, batches: Mapping[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """The batches still valid after a rebalance that happened while they were fetched.

        A new assignment resets each partition's position to its committed offset, at or
        before the first offset of a batch fetched earlier: that batch comes again. A
        batch fetched after the reset lies behind the position.
        """
        consumer = self._require(self._consumer)
        return {
            tp: messages
            for tp, messages in batches.items()
            if tp.partition in self.tasks and await consumer.position(tp) > messages[-1].offset
        }

    def _fetch_wait_ms(self) -> int:
        """Until the next commit is due. A task with a transaction in flight is not
        waited for: the end of that transaction starts its next one (_commit_ended)."""
        now = time.monotonic()
        wait = IDLE_FETCH_MS
        for task in self.tasks.values():
            if not task.busy and task.pending.due_s is not None:
                wait = min(wait, max(int((task.pending.due_s - now) * 1000), 0))
        return wait

    # ------------------------------------------------------------ handling

    def _handle(self, batches: Mapping[TopicPartition, list[Any]]) -> None:
        """Hand each batch to its stage, or keep it waiting while its task commits."""
        now = time.monotonic()
        views = self.views.rows if self.views is not None else {}
        # What waits for a transaction is handled as one batch when it ends (in its
        # callback, between two turns of the loop): a slice at most.
        most_waiting = self._slice_records()
        for tp, messages in batches.items():
            task = self.tasks.get(tp.partition)
            if task is None or task.state is not TaskState.RUNNING or tp not in task.inputs:
                continue  # not ours (any more): it is fetched again by its owner
            messages = task.wait(tp, messages, most_waiting, hold=self._round_in_flight())
            if messages:
                messages = task.fresh(tp, messages)
            if not messages:
                continue
            before = task.effects_taken_before.get(tp)
            if before is not None:
                again = [m for m in messages if m.offset < before]
                if again:
                    self._handle_batch(task, tp, again, views, now, effects=False)
                if len(again) < len(messages):
                    del task.effects_taken_before[tp]  # past the reverted records
                messages = messages[len(again) :]
                if not messages:
                    continue
            self._handle_batch(task, tp, messages, views, now)

    def _handle_batch(
        self,
        task: Task,
        tp: TopicPartition,
        messages: list[Any],
        views: Mapping[str, Any],
        now: float,
        *,
        effects: bool = True,
    ) -> None:
        """Hand ``messages`` to their stage; what it asked to run after the commit is kept
        only with ``effects`` (records whose effects ran already are handled without)."""
        stage, role = self.stage_of_topic[tp.topic]
        batch = Batch(
            stage.name,
            role,
            tp.partition,
            messages,
            {name: task.tables[name] for name in stage.tables},
            views,
        )
        started = time.perf_counter()
        outputs = stage.handler(batch)
        self._handled_in(started, len(messages))
        due_s = now + stage.commit_within_ms / 1000
        task.handled(tp, messages[-1].offset + 1, outputs, due_s, batch.effects if effects else ())

    def _handle_waiting(self, task: Task) -> None:
        """Handle what waited for the task's transaction to end (a task no longer owned or
        failed drops it: its inputs are read again from the committed offsets)."""
        if not task.waiting or task.busy or self.tasks.get(task.partition) is not task:
            return
        try:
            self._handle(task.take_waiting())
        except Exception:
            # Here, in a commit's callback, a stage's error would vanish with the records
            # taken, and later records would commit past them. The task fails instead: it
            # is recovered from its committed offsets, and the loop meets the error again.
            log.exception("waiting.handle_failed task=%d", task.partition)
            task.state = TaskState.FAILED

    def _commit_due(self) -> None:
        if self.rounds:
            self._round_over()
            return
        now = time.monotonic()
        for task in self.tasks.values():
            if task.due(now):
                self._start_commit(task)

    # With one producer (config.one_producer) the tasks commit in rounds: one transaction
    # carries every task's pending work, records fetched meanwhile wait for its end (as a
    # task's own do for its own transaction), and the next round starts when it ends.

    def _round_in_flight(self) -> bool:
        shared = self._shared
        return shared is not None and shared.busy

    def _round_over(self) -> None:
        """No round in flight: handle what waited, then start the next round if a task's
        work is due, or call back when the first will be."""
        if not self.rounds or self._round_in_flight() or self._committing_all:
            return
        for task in list(self.tasks.values()):
            self._handle_waiting(task)
        if self.rebalancing:
            return
        now = time.monotonic()
        running = [t for t in self.tasks.values() if t.state is TaskState.RUNNING]
        if any(task.due(now) for task in running):
            self._start_round([t for t in running if t.pending.due_s is not None])
            return
        first = min((t.pending.due_s for t in running if t.pending.due_s is not None), default=None)
        if first is not None:
            asyncio.get_running_loop().call_later(max(first - now, 0.0), self._round_over)

    def _start_round(self, tasks: list[Task]) -> None:
        shared = self._require(self._shared)
        resolve = self.config.topic_of_role.__getitem__
        commit = shared.start_round(tasks, resolve, self.config.group_id, self._commit_offsets)
        commit.add_done_callback(functools.partial(self._round_ended, tasks))

    def _round_ended(self, tasks: list[Task], done: asyncio.Task[Committed]) -> None:
        if done.cancelled() or done.exception() is not None:
            error = None if done.cancelled() else done.exception()
            partitions = ",".join(str(t.partition) for t in tasks)
            log.warning("transaction.aborted tasks=%s error=%r", partitions, error, exc_info=error)
            if _fenced(error):
                self.health.fenced(time.monotonic())
            self.metrics.commit_failures.inc()
            for task in tasks:
                if task.state is TaskState.RUNNING:
                    task.state = TaskState.FAILED
                self.health.commit_failed(task.partition)
        else:
            for task in tasks:
                self.health.committed(task.partition)
            self._took_effect(done.result(), [t.partition for t in tasks])
        self._round_over()

    def _commit_next(self, task: Task) -> None:
        """After a task's transaction ended: start its next one when it is due, so the
        loop never polls for a transaction to end. Nothing starts while the group
        rebalances (the revocation commits what is pending itself)."""
        if self.rebalancing or self.tasks.get(task.partition) is not task:
            return
        now = time.monotonic()
        if task.due(now):
            self._start_commit(task)
        elif task.pending.due_s is not None and not task.busy:
            loop = asyncio.get_running_loop()
            loop.call_later(task.pending.due_s - now, self._commit_next, task)

    def _start_commit(self, task: Task) -> None:
        resolve = self.config.topic_of_role.__getitem__
        commit = task.start_commit(resolve, self.config.group_id, self._commit_offsets)
        commit.add_done_callback(functools.partial(self._commit_ended, task))

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        await self._require(self._consumer).commit(offsets)

    def _commit_ended(self, task: Task, done: asyncio.Task[Committed]) -> None:
        if done.cancelled() or done.exception() is not None:
            error = None if done.cancelled() else done.exception()
            log.warning(
                "transaction.aborted task=%d error=%r", task.partition, error, exc_info=error
            )
            if task.state is TaskState.RUNNING:
                task.state = TaskState.FAILED
            self.metrics.commit_failures.inc()
            self.health.commit_failed(task.partition)
            return
        self.health.committed(task.partition)
        self._took_effect(done.result(), [task.partition])
        self._handle_waiting(task)
        self._commit_next(task)

    def _took_effect(self, committed: Committed, partitions: list[int]) -> None:
        """What follows a commit Kafka acknowledged: its effects run, its counts move."""
        self.acknowledged.update(committed.positions)
        for effect in committed.effects:
            try:
                effect()
            except Exception:  # an effect's bug must not cost the task; it is counted
                log.exception("effect.failed tasks=%s", ",".join(map(str, partitions)))
                self.metrics.effect_failures.inc()
        self.batches_committed += 1
        self.snapshots.committed(committed.changelog_ends)
        self.metrics.commit_seconds.observe(committed.seconds)
        # Tasks of one round share the commit; the hook learns it once (-1: several).
        self.hooks.committed(partitions[0] if len(partitions) == 1 else -1, committed)

    async def _commit_all(self) -> None:
        """Commit everything handled so far and wait for it (before a snapshot, a stop or a
        revocation); recover the tasks whose commit fails."""
        if self.rounds:
            self._committing_all = True
            try:
                await self._commit_all_in_a_round()
            finally:
                self._committing_all = False
            if not self.rebalancing:
                await self._recover_failed()
            return
        for task in list(self.tasks.values()):
            await task.settle()
            self._handle_waiting(task)
            if task.state is TaskState.RUNNING and task.pending.due_s is not None:
                self._start_commit(task)
            await task.settle()
        if not self.rebalancing:
            await self._recover_failed()

    async def _commit_all_in_a_round(self) -> None:
        if self._shared is not None:
            await self._shared.settle()
        for task in list(self.tasks.values()):
            await task.settle()
            self._handle_waiting(task)
        pending = [
            t
            for t in self.tasks.values()
            if t.state is TaskState.RUNNING and t.pending.due_s is not None
        ]
        if pending:
            self._start_round(pending)
            await self._require(self._shared).settle()
            for task in pending:
                await task.settle()

    # ------------------------------------------------------------ recovery

    async def _recover_failed(self) -> set[int]:
        """Recover the tasks whose transaction failed; return their partitions."""
        failed = [t for t in self.tasks.values() if t.state is TaskState.FAILED]
        if failed and self.fenced_rounds:
            # Whatever failed the round may have left the producer fenced or in error: the
            # next one takes the same id, aborting what the last left open.
            await self._renew_shared()
        for task in failed:
            await self._recover(task)
        return {task.partition for task in failed}

    async def _recover(self, task: Task) -> None:
        """Forget what was not committed for ``task``: its state and its read positions."""
        await task.settle()
        task.drop_pending()
        if self.rebalancing:
            # Its partitions may belong to another worker already: taking them back would
            # fence the new owner. The assignment takes them again if they are still ours.
            await self._drop({task.partition})
            return
        inputs = set(task.inputs)
        failures = self.health.failures(task.partition)

        async def take_again() -> None:
            await self._drop({task.partition})
            self.health.carry_failures(task.partition, failures)  # the drop forgot them
            fresh = await self._take({task.partition: inputs})
            await self._rewind(fresh[task.partition])

        await self._retrying(f"recovering task {task.partition}", take_again)
        log.info("task.recovered task=%d", task.partition)

    async def _rewind(self, task: Task) -> None:
        """Read every input of ``task`` on from its committed offset."""
        consumer = self._require(self._consumer)
        self.inputs.pace_anew()
        for tp in task.inputs:
            committed = await consumer.committed(tp)
            self._note_reverted(task, tp, committed)
            if committed is None:
                await seek_to_first(consumer, [tp])
            else:
                consumer.seek(tp, committed)
                task.next_offsets[tp] = committed

    def _note_reverted(self, task: Task, tp: TopicPartition, committed: int | None) -> None:
        """If ``tp``'s committed offset is below one Kafka acknowledged to this worker,
        its records in between are handled again without their effects.

        Kafka can abort a transaction after acknowledging its commit: a lone broker that
        shuts down while it writes a commit's markers finds its partitions without a
        leader, takes them for deleted and skips their markers (KAFKA-5202); the records
        stay open until the next marker of the same transactional id on each partition,
        and the abort that fences a recovered task's old producer (Writers.producer)
        aborts them. The records are read again from the older committed offset: their
        outputs and table changes are made again, but the models learned their answers
        when the commit was acknowledged, and must not learn them twice.
        """
        acknowledged = self.acknowledged.get(tp)
        if acknowledged is None and committed is not None:
            acknowledged = self.resumed.get(tp)
        if acknowledged is None or (committed or 0) >= acknowledged:
            return
        task.effects_taken_before[tp] = acknowledged
        self.metrics.transactions_reverted.inc()
        log.warning(
            "transaction.reverted task=%d input=%s[%d] committed=%s acknowledged=%d: Kafka "
            "aborted a transaction whose commit it had acknowledged; its records are "
            "handled again without their effects",
            task.partition,
            tp.topic,
            tp.partition,
            committed,
            acknowledged,
        )

    # ------------------------------------------------------------ tasks

    async def _take_until_taken(self, wanted: Mapping[int, set[TopicPartition]]) -> dict[int, Task]:
        """:meth:`_take`, tried again until it works. An assignment that fails to take its
        tasks (a broker restarting while the group settles: a producer that cannot start,
        a restore that cannot read) would otherwise leave partitions assigned to this
        worker that nobody handles until the next rebalance."""
        tasks = ",".join(str(p) for p in sorted(wanted))
        return await self._retrying(f"taking tasks {tasks}", lambda: self._take(wanted))

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()`` until it works, waiting longer after each failure (RETRY_DELAYS_S);
        meanwhile /ready says what fails (:meth:`problems`)."""
        for tried in range(10_000):
            try:
                done = await attempt()
            except Exception as error:
                delay = RETRY_DELAYS_S[min(tried, len(RETRY_DELAYS_S) - 1)]
                log.warning(
                    "retrying what=%r error=%r retry_in=%.1f", what, error, delay, exc_info=error
                )
                self.health.failed_trying(what, error, time.monotonic())
                self.metrics.recovery_failures.inc()
                await asyncio.sleep(delay)
            else:
                self.health.done_trying(what)
                return done
        raise RuntimeError(f"gave up {what}")

    async def _take(self, wanted: Mapping[int, set[TopicPartition]]) -> dict[int, Task]:
        """Own the tasks ``wanted`` (partition -> its input partitions): fence their
        previous writers, then restore their tables. If that fails, the producers it
        started for them are stopped (the worker's one producer stays)."""
        fresh: dict[int, Task] = {}
        try:
            return await self._take_into(wanted, fresh)
        except BaseException:
            if self.config.transactional and not self.rounds:
                for task in fresh.values():
                    with contextlib.suppress(Exception):
                        await task.producer.stop()
            raise

    async def _take_into(
        self, wanted: Mapping[int, set[TopicPartition]], fresh: dict[int, Task]
    ) -> dict[int, Task]:
        for partition, inputs in sorted(wanted.items()):
            if not self.config.transactional:
                producer = self.side_producer
            elif self.rounds:
                producer = (await self._shared_unit()).producer
            else:
                producer = await self.writers.producer(self.writers.task_id(partition), partition)
            tables = {
                name: PartitionTable(self.topology.changelog_of(name), partition)
                for name in self.topology.tables()
            }
            fresh[partition] = Task(
                partition,
                inputs=inputs,
                tables=tables,
                producer=producer,
                transactional=self.config.transactional,
            )
        stable: dict[TopicPartition, int | None] = {}
        if self.fenced_rounds and fresh:
            # Before the changelogs are read: a zombie's last transaction over these
            # partitions has ended (committed or aborted) once their offsets are stable.
            stable = dict(
                await self.writers.stable_offsets(
                    self._require(self._consumer),
                    [tp for task in fresh.values() for tp in task.inputs],
                    own_id=self._shared_id(),
                )
            )
        views = [table for task in fresh.values() for table in task.tables.values()]
        started = time.monotonic()
        restored = await restore(
            self._require(self._restorer),
            views,
            snapshots=self.config.snapshot_dir,
            now_s=time.time(),
            max_age_s=self.config.snapshot_max_age_s,
            # The first tasks' tables that a view read at start-up: not read twice.
            seeds=self.views.take_seeds() if self.views is not None else None,
        )
        self.snapshots.committed(restored.ends)
        for task in fresh.values():
            task.state = TaskState.RUNNING
        self.tasks.update(fresh)
        if stable or (self.fenced_rounds and fresh):
            await self._seek_to(fresh.values(), stable)
        else:
            await self._expect_committed(fresh.values())
        if fresh:
            log.info(
                "tasks.assigned count=%d tasks=%s restored_records=%d from_snapshots=%d "
                "seconds=%.2f from_views=%d",
                len(fresh),
                ",".join(str(p) for p in sorted(fresh)),
                restored.records,
                restored.from_snapshots,
                time.monotonic() - started,
                restored.from_views,
            )
        return fresh

    def _shared_id(self) -> str:
        return self.writers.worker_id(self.config.worker_id)

    async def _expect_committed(self, tasks: Iterable[Task]) -> None:
        """Each input of ``tasks`` is read on from its committed offset, where a new
        assignment resets the consumer: a batch fetched for an earlier assignment of the
        partition, handed over only now, is cut to what comes after it (Task.fresh), even
        when it lies wholly behind the position the reset gave."""
        consumer = self._require(self._consumer)
        for task in tasks:
            for tp in task.inputs:
                committed = await consumer.committed(tp)
                if committed is not None:
                    task.next_offsets[tp] = committed

    async def _seek_to(self, tasks: Any, offsets: Mapping[TopicPartition, int | None]) -> None:
        """Read each input of ``tasks`` on from its offset in ``offsets`` (absent or None:
        its first record)."""
        consumer = self._require(self._consumer)
        for task in tasks:
            for tp in task.inputs:
                offset = offsets.get(tp)
                if offset is None:
                    await seek_to_first(consumer, [tp])
                else:
                    consumer.seek(tp, offset)
                    task.next_offsets[tp] = offset

    async def _shared_unit(self) -> Task:
        """The worker's one producer (config.one_producer), started and fenced at first use."""
        if self._shared is None:
            producer = await self.writers.producer(self._shared_id(), None, member=self._member)
            self._shared = Task(-1, inputs=(), tables={}, producer=producer, transactional=True)
            self._shared.state = TaskState.RUNNING
        return self._shared

    def _member(self) -> tuple[int, str]:
        return group_member(self._require(self._consumer))()

    async def _renew_shared(self) -> None:
        """Replace the worker's producer with one that takes the same id. A failed round
        is often a broker going away: the new producer cannot start until it answers, so
        this waits and retries, as a task's recovery does."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.settle()
            with contextlib.suppress(Exception):
                await shared.close_ahead()
                await shared.producer.stop()
        unit = await self._retrying(f"renewing the producer {self._shared_id()}", self._shared_unit)
        for task in self.tasks.values():
            task.producer = unit.producer

    async def _drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            task = self.tasks.pop(partition, None)
            if task is None:
                continue
            task.state = TaskState.REVOKED
            self.health.forget(partition)
            for tp in task.inputs:
                self.inputs.forget(tp)
            for table in task.tables.values():
                self.snapshots.forget(TopicPartition(table.topic, partition))
                self.sweeper.forget(table.topic, partition)
            if self.config.transactional and not self.rounds:
                with contextlib.suppress(Exception):
                    await task.close_ahead()
                    await task.producer.stop()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self.assignments += 1
            self.rebalancing = False
            self.inputs.pace_anew()  # a new assignment reads every partition
            wanted: dict[int, set[TopicPartition]] = {}
            for tp in assigned:
                wanted.setdefault(tp.partition, set()).add(tp)
            kept = {
                p for p, task in self.tasks.items() if task.inputs == frozenset(wanted.get(p, ()))
            }
            await self._drop(set(self.tasks) - kept)
            # Positions are reset to the committed offsets, which are a kept task's next
            # offsets (everything it handled was committed at the revocation).
            fresh = await self._take_until_taken(
                {p: tps for p, tps in wanted.items() if p not in kept}
            )
            known = self.acknowledged.keys() | self.resumed.keys()
            if known:
                consumer = self._require(self._consumer)
                for task in fresh.values():
                    for tp in task.inputs & known:
                        self._note_reverted(task, tp, await consumer.committed(tp))
            self.ready = True

    async def on_revoked(self) -> None:
        """Eager rebalancing revokes everything first: what was handled is committed now
        (the tasks that come back keep their state, which is then exactly what was
        committed), and nothing is handled until the next assignment."""
        self.ready = False
        self.rebalancing = True
        await self._commit_all()
        for task in [t for t in self.tasks.values() if t.state is TaskState.FAILED]:
            task.drop_pending()
            await self._drop({task.partition})

    # ------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self.last_tick_s >= SWEEP_EVERY_S:
            self.last_tick_s = now
            self.sweeper.sweep(self.tasks, now)
            self.roller.roll(self.tasks, now)
            self._end_idle_ahead(now)
            self._count_rows()
            consumer = self._require(self._consumer)
            await self.inputs.refresh(consumer, self.tasks)
            self.inputs.export_lag(consumer, self.tasks)
            self.inputs.watch_blocked(consumer, self.tasks, now)
            self.hooks.housekeeping()
            if now - self.placements_forgotten_s >= PLACEMENTS_KEPT_S:
                self.placements_forgotten_s = now
                forget_placements()
        if self.snapshots.due(now):
            await self._commit_all()
            await self.snapshots.write(self.tasks)

    def _end_idle_ahead(self, now_s: float) -> None:
        """Commit the transactions opened ahead that waited too long with nothing in them
        (the task opens the next at once): the coordinator would abort them at its
        timeout and fence the producer."""
        for task in self.tasks.values():
            if task.idle_ahead(now_s):
                task.touched(now_s)
        shared = self._shared
        if shared is not None and shared.idle_ahead(now_s):
            running = [t for t in self.tasks.values() if t.state is TaskState.RUNNING]
            if running:
                running[0].touched(now_s)  # a round, empty or not, ends it and opens the next
            else:
                self._closing = asyncio.ensure_future(shared.close_ahead())

    def _count_rows(self) -> None:
        for name in self.topology.tables():
            rows = sum(len(task.tables[name]) for task in self.tasks.values())
            self.metrics.table_rows.labels(name).set(rows)

    @staticmethod
    def _require(client: Any) -> Any:
        if client is None:
            raise RuntimeError("the runtime is not started")
        return client


def _fenced(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) says a newer producer took the same id."""
    while error is not None:
        if isinstance(error, ProducerFenced):
            return True
        error = error.__cause__
    return False


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.runtime._lock:
            await self.runtime.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.runtime.on_assigned(set(assigned))
