"""The stream runtime on an in-memory Kafka (tests/unit/fakekafka.py): what users rely on.

A toy topology counts records per key, per partition, in one table; each input
record becomes one output ``partition:offset:count``. Exactly-once shows as each
input offset in exactly one visible output, with counts 1, 2, 3... per key: a
count handled twice, lost or restored wrong breaks the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.settings import Settings, SettingsError
from streams import health as health_module
from streams import housekeeping as housekeeping_module
from streams import runtime as runtime_module
from streams import task as task_module
from streams.runtime import Hooks, Runtime, RuntimeConfig
from streams.task import Committed, TaskState
from streams.topology import Batch, Stage, Topology
from tests.unit.fakekafka import (
    FakeBroker,
    FakeClients,
    FakeConsumer,
    FakeProducer,
    Out,
    Record,
    Txn,
)

GROUP = "toy"
IN, OUT, CHANGELOG = "toy-in", "toy-out", "toy-counts-changelog"
KEYS = (b"k0", b"k1", b"k2")


class Mode:
    """Which producers the workers of a test commit with (the ``mode`` fixture): one per
    task, or one for all of a worker's tasks (RuntimeConfig.one_producer). Every test runs
    both ways but those marked ``per_task``, which say what one task's own transaction does
    while another's goes on."""

    one_producer = False


def tid(partition: int) -> str:
    """The transactional id that commits ``partition``'s task."""
    return f"{GROUP}-worker-0" if Mode.one_producer else f"{GROUP}-task-{partition}"


per_task = pytest.mark.per_task  # see pytest_generate_tests
one_producer_only = pytest.mark.one_producer


def tp_in(partition: int) -> TopicPartition:
    return TopicPartition(IN, partition)


class HandlingClock:
    """What streams.runtime sees as its ``time`` module (see :func:`handling_costs`):
    ``perf_counter()`` moves only as the toy stage handles records, ``per_record_s`` for
    each, so the runtime measures its handling at exactly that cost whatever the machine's
    speed. Everything else is the real module: commit deadlines run on the real clock."""

    def __init__(self, per_record_s: float) -> None:
        self.per_record_s = per_record_s
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Toy:
    """A counter stage: table ``counts`` holds each key's count on the partition."""

    def __init__(self, commit_within_ms: int) -> None:
        self.seen: list[tuple[int, int]] = []  # (partition, offset) of every record handled
        self.batches: list[int] = []  # how many records each batch handed to the stage had
        self.effects: list[tuple[int, int]] = []  # (partition, offset) of every effect run
        self.explode: set[int] = set()  # offsets whose effect raises
        self.broken: set[int] = set()  # offsets the stage itself raises on (a bug)
        self.clock: HandlingClock | None = None  # advanced by each record handled
        stage = Stage("count", ("in",), ("counts",), self.count, commit_within_ms)
        self.topology = Topology(stages=(stage,), changelog_of=lambda t: f"toy-{t}-changelog")

    def count(self, batch: Batch) -> Sequence[Out]:
        table = batch.tables["counts"]
        self.batches.append(len(batch.messages))
        outputs = []
        for message in batch.messages:
            if self.clock is not None:
                self.clock.now += self.clock.per_record_s
            if message.offset in self.broken:
                raise RuntimeError(f"a stage's bug at offset {message.offset}")
            self.seen.append((message.partition, message.offset))
            assert message.key is not None
            n = int(table.get(message.key) or 0) + 1
            table[message.key] = str(n).encode()
            value = f"{message.partition}:{message.offset}:{n}".encode()
            outputs.append(Out("out", message.key, value))
            batch.effects.append(functools.partial(self.effect, message.partition, message.offset))
        return outputs

    def effect(self, partition: int, offset: int) -> None:
        if offset in self.explode:
            raise RuntimeError("an effect's bug")
        self.effects.append((partition, offset))


class Worker:
    """One Runtime on the shared fake broker, with its loop run as an asyncio task."""

    def __init__(
        self,
        broker: FakeBroker,
        *,
        transactional: bool = True,
        commit_within_ms: int = 0,
        hooks: Hooks | None = None,
        wall_ms: Callable[[], int] = lambda: 0,
        changelog_roll_s: float = 0.0,
        blocked_not_ready_s: float = 60.0,
    ) -> None:
        self.toy = Toy(commit_within_ms)
        self.clients = FakeClients(broker)
        self.registry = CollectorRegistry()
        config = RuntimeConfig(
            group_id=GROUP,
            transactional=transactional,
            partitions=len(broker.logs[IN]),
            batch_max_records=100,
            topic_of_role={"in": IN, "out": OUT},
            snapshot_dir=None,
            snapshot_interval_s=0,
            changelog_roll_s=changelog_roll_s,
            blocked_not_ready_s=blocked_not_ready_s,
            one_producer=Mode.one_producer,
        )
        metrics = Metrics(self.registry)
        self.runtime = Runtime(
            config, self.toy.topology, self.clients, metrics, hooks=hooks, wall_ms=wall_ms
        )
        self.stopping = asyncio.Event()
        self.loop: asyncio.Task[None] | None = None
        self.stopped = False

    @property
    def consumer(self) -> FakeConsumer:
        assert self.clients.consumer is not None
        return self.clients.consumer

    async def start(self, *partitions: int) -> Worker:
        """Start, take ``partitions`` (as the group would assign them), run the loop."""
        await self.runtime.start()
        await self.assign(*partitions)
        self.loop = asyncio.create_task(self.runtime.run(self.stopping))
        return self

    async def assign(self, *partitions: int) -> None:
        await self.consumer.rebalance({tp_in(p) for p in partitions})

    @property
    def halted(self) -> bool:
        return self.stopping.is_set()

    async def halt(self) -> None:
        """Stop the loop (the runtime stays started)."""
        self.stopping.set()
        if self.loop is not None:
            await asyncio.wait_for(self.loop, 2)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.halt()
            await self.runtime.stop()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(f"rewardstream_{name}", labels)


class World:
    def __init__(self, partitions: int) -> None:
        self.broker = FakeBroker()
        self.broker.create_topic(IN, partitions)
        self.broker.create_topic(OUT, 1)
        self.broker.create_topic(CHANGELOG, partitions)
        self.workers: list[Worker] = []

    def worker(self, **options: object) -> Worker:
        self.workers.append(Worker(self.broker, **options))  # type: ignore[arg-type]
        return self.workers[-1]

    def produce(self, partition: int, n: int) -> None:
        for _ in range(n):
            offset = len(self.broker.logs[IN][partition])
            self.broker.produce(IN, partition, KEYS[offset % len(KEYS)], b"x")

    async def until(self, condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
        """Wait for ``condition``; a loop that crashed fails the test at once."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                for worker in self.workers:
                    if worker.loop is not None and worker.loop.done() and not worker.halted:
                        worker.loop.result()  # raises what it died of
                        raise AssertionError("a runtime loop ended by itself")
                await asyncio.sleep(0.001)

    def committed(self, partition: int) -> int | None:
        return self.broker.committed.get((GROUP, tp_in(partition)))

    def outputs(self) -> list[tuple[int, int, int]]:
        """The visible outputs, as (partition, offset, count)."""
        return [_parse(r) for r in self.broker.records(OUT)]

    def expected(self) -> list[tuple[int, int, int]]:
        """One output per input record, each key counted 1, 2, 3... on its partition."""
        counts: dict[tuple[int, bytes | None], int] = {}
        expected = []
        for record in self.broker.records(IN):
            n = counts[(record.partition, record.key)] = (
                counts.get((record.partition, record.key), 0) + 1
            )
            expected.append((record.partition, record.offset, n))
        return expected

    def changelog(self, partition: int) -> dict[bytes, bytes]:
        """What a restore of ``partition`` reads back: the latest committed value per key."""
        return self.broker.compacted(CHANGELOG, partition)

    def check_exactly_once(self) -> None:
        """Each input in one visible output, its offset committed, its count in the changelog."""
        assert sorted(self.outputs()) == sorted(self.expected())
        partitions = range(len(self.broker.logs[IN]))
        ends = dict.fromkeys(partitions, 0)
        ends |= {r.partition: r.offset + 1 for r in self.broker.records(IN)}
        assert {p: self.committed(p) or 0 for p in partitions} == ends
        for p in partitions:
            final = {key: str(n).encode() for q, _, n, key in self._counted() if q == p}
            assert self.changelog(p) == final

    def _counted(self) -> list[tuple[int, int, int, bytes]]:
        keys = {(r.partition, r.offset): r.key or b"" for r in self.broker.records(IN)}
        return [(p, o, n, keys[(p, o)]) for p, o, n in self.expected()]


def _parse(record: Record) -> tuple[int, int, int]:
    partition, offset, n = (record.value or b"").decode().split(":")
    return int(partition), int(offset), int(n)


@contextlib.asynccontextmanager
async def world(partitions: int = 1) -> AsyncIterator[World]:
    here = World(partitions)
    try:
        yield here
    finally:
        for held in here.broker.holds.values():
            held.set()  # a test that failed early may hold commits that stop() waits for
        for worker in here.workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.stop(), 2)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test with one producer per task and with one per worker, but those marked
    ``per_task`` (what one task's own transaction does while another's goes on)."""
    marked = metafunc.definition.get_closest_marker
    modes = [
        mode
        for mode, other in (("per-task", "one_producer"), ("one-producer", "per_task"))
        if marked(other) is None
    ]
    metafunc.parametrize("mode", modes, indirect=True)


@pytest.fixture(autouse=True)
def mode(request: pytest.FixtureRequest) -> Any:
    Mode.one_producer = request.param == "one-producer"
    yield request.param
    Mode.one_producer = False


@pytest.fixture(autouse=True)
def quick_idle_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle loop polls every few milliseconds, so a test stops it at once."""
    monkeypatch.setattr(runtime_module, "IDLE_FETCH_MS", 5)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the runtime retries (a producer that cannot start yet) is tried again soon."""
    monkeypatch.setattr(runtime_module, "RETRY_DELAYS_S", (0.02,))


def busy(worker: Worker, partition: int) -> bool:
    task = worker.runtime.tasks.get(partition)
    return task is not None and task.busy


# ---------------------------------------------------------------- exactly once


@per_task
async def test_each_input_is_one_output_committed_with_its_offset_and_table_changes() -> None:
    async with world(partitions=2) as w:
        held = w.broker.hold_commits(tid(0))
        w.produce(0, 5)
        w.produce(1, 7)
        a = await w.worker().start(0, 1)
        await w.until(lambda: busy(a, 0) and w.committed(1) == 7)
        # Task 0's transaction is in flight: it holds its outputs, its table changes and
        # its offsets, and none of them shows before it commits.
        txn = w.broker.open[tid(0)]
        assert txn.partitions == {TopicPartition(OUT, 0), TopicPartition(CHANGELOG, 0)}
        assert txn.offsets == {(GROUP, tp_in(0)): 5}
        assert {p for p, _, _ in w.outputs()} == {1}
        assert w.changelog(0) == {}
        assert w.committed(0) is None
        held.set()
        await w.until(lambda: w.committed(0) == 5 and a.sample("commit_seconds_count") == 2)
        w.check_exactly_once()
        assert a.runtime.tasks[0].tables["counts"].rows == w.changelog(0)


@one_producer_only
async def test_one_producer_commits_every_task_in_one_transaction_of_its_own() -> None:
    async with world(partitions=2) as w:
        held = w.broker.hold_commits(tid(0))
        w.produce(0, 5)
        w.produce(1, 7)
        a = await w.worker().start(0, 1)
        await w.until(lambda: busy(a, 0) and busy(a, 1))
        # One transaction holds both tasks' outputs, table changes and offsets, and none
        # of them shows before it commits.
        txn = w.broker.open[tid(0)]
        assert txn.partitions >= {TopicPartition(CHANGELOG, 0), TopicPartition(CHANGELOG, 1)}
        held_records = [
            entry
            for log in w.broker.logs.values()
            for part in log
            for entry in part
            if entry.txn is txn and not entry.marker
        ]
        # An output per input, and each task's rows (3 keys) once: rows go once a commit.
        assert len(held_records) == (5 + 7) + 2 * 3
        assert txn.offsets == {(GROUP, tp_in(0)): 5, (GROUP, tp_in(1)): 7}
        assert w.outputs() == []
        assert w.committed(0) is None
        assert w.committed(1) is None
        held.set()
        await w.until(lambda: w.committed(0) == 5 and w.committed(1) == 7)
        w.check_exactly_once()
        # The worker's one transactional producer, sending its offsets with the group
        # member's generation (streams.fencing): no producer per task.
        transactional = [p for p in a.clients.producers if p.transactional_id is not None]
        assert [p.transactional_id for p in transactional] == [tid(0)]
        assert callable(transactional[0].member)
        for partition in (0, 1):
            assert a.runtime.tasks[partition].tables["counts"].rows == w.changelog(partition)


def opened_ahead(w: World) -> Txn:
    """The transaction of task 0 open now (an empty one if none is)."""
    return w.broker.open.get(tid(0)) or Txn(tid(0))


async def test_the_next_transaction_opens_ahead_with_what_the_task_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.0)
    async with world() as w:
        w.produce(0, 3)
        a = await w.worker().start(0)
        # Committed, and the next transaction is already open with the partitions and the
        # group in it, nothing written: the next commit skips two round trips.
        await w.until(lambda: w.committed(0) == 3 and bool(opened_ahead(w).groups_ahead))
        ahead = w.broker.open[tid(0)]
        assert ahead.partitions == {TopicPartition(OUT, 0), TopicPartition(CHANGELOG, 0)}
        assert ahead.groups_ahead == {GROUP}
        assert not ahead.offsets
        assert len(w.outputs()) == 3
        w.produce(0, 2)
        await w.until(lambda: w.committed(0) == 5)
        assert ahead.state == "committed"
        assert ahead.offsets == {(GROUP, tp_in(0)): 5}
        w.check_exactly_once()
        # Left idle, it is ended (well before the coordinator's timeout would abort it
        # and fence the producer) and the next one opened.
        idle = w.broker.open[tid(0)]
        # Longer than the add-ahead delay: a limit of 0 would end each one opened before
        # its partitions could be added, and the test would wait for a state never seen.
        monkeypatch.setattr(task_module, "OPEN_AHEAD_MAX_S", 0.05)
        await w.until(lambda: idle.state == "committed" and bool(opened_ahead(w).groups_ahead))
        assert w.broker.open[tid(0)].partitions == ahead.partitions
        # Stopping aborts the one open ahead: nothing is left open for the next owner.
        monkeypatch.setattr(task_module, "OPEN_AHEAD_MAX_S", 60.0)
        task = a.runtime.tasks[0]
        await w.until(
            lambda: not busy(a, 0) and task.pending.due_s is None and tid(0) in w.broker.open
        )
        last = w.broker.open[tid(0)]
        await a.stop()
        assert last.state == "aborted"
        assert tid(0) not in w.broker.open
        w.produce(0, 1)
        b = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 6)
        w.check_exactly_once()
        assert b.toy.seen == [(0, 5)]


# ---------------------------------------------------------------- failures


async def test_a_failed_commit_shows_nothing_and_the_task_is_restored_and_rewound() -> None:
    async with world() as w:
        w.produce(0, 5)
        a = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 5)
        first = a.clients.producer_of(tid(0))
        held = w.broker.hold_commits(tid(0))
        w.broker.fail_next_commit(tid(0))
        w.produce(0, 5)
        await w.until(lambda: busy(a, 0))
        held.set()  # the commit of offsets 5-9 fails
        await w.until(lambda: w.committed(0) == 10)
        # Its records were written but aborted: never visible.
        assert len(w.broker.records(OUT, committed=False)) == 15
        w.check_exactly_once()  # counted on the restored table: 5-9 counted once
        assert a.toy.seen.count((0, 7)) == 2  # handled again after the rewind
        assert a.sample("commit_failures_total") == 1
        # The task was taken again: a new producer with the same id, the old one stopped.
        assert first.stopped
        assert a.clients.producer_of(tid(0)) is not first


async def test_a_failed_commit_while_the_broker_is_away_is_recovered_once_it_answers(
    quick_retries: None,
) -> None:
    # A broker restart fails the commit in flight, and the producer that takes the id
    # again cannot start until the broker answers: the worker waits and retries (it is
    # a fault of the cluster, not of the input), then commits every record once.
    async with world(2) as w:
        w.produce(0, 3)
        w.produce(1, 3)
        a = await w.worker().start(0, 1)
        await w.until(lambda: w.committed(0) == 3 and w.committed(1) == 3)
        held = w.broker.hold_commits(tid(0))
        w.broker.fail_next_commit(tid(0))
        w.broker.fail_next_starts(3)
        w.produce(0, 4)
        await w.until(lambda: busy(a, 0))
        held.set()
        await w.until(lambda: w.broker.unreachable_starts == 0)
        w.produce(1, 2)
        await w.until(lambda: w.committed(0) == 7 and w.committed(1) == 5)
        assert a.loop is not None
        assert not a.loop.done()  # the loop never gave up
        assert a.sample("recovery_failures_total") == 3
        w.check_exactly_once()


async def test_an_assignment_taken_while_the_broker_is_away_is_taken_once_it_answers(
    quick_retries: None,
) -> None:
    # The group assigns partitions while the broker restarts: taking their tasks fails
    # until it answers. The worker keeps trying instead of leaving them unhandled.
    async with world(2) as w:
        w.produce(0, 3)
        w.produce(1, 3)
        w.broker.fail_next_starts(2)
        a = await w.worker().start(0, 1)
        await w.until(lambda: w.committed(0) == 3 and w.committed(1) == 3 and a.runtime.healthy)
        assert a.sample("recovery_failures_total") == 2
        assert a.runtime.problems() == []
        # What a failed try started is stopped: only the producers in use are left running.
        running = [p for p in a.clients.producers if p.started and not p.stopped]
        in_use = {id(t.producer) for t in a.runtime.tasks.values()}
        assert {id(p) for p in running if p.transactional_id is not None} == in_use
        w.check_exactly_once()


async def test_the_worker_is_unready_and_says_why_while_the_broker_stays_away(
    quick_retries: None,
) -> None:
    async with world(1) as w:
        w.produce(0, 2)
        a = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 2)
        w.broker.fail_next_commit(tid(0))
        w.broker.fail_next_starts(1_000)
        w.produce(0, 2)
        await w.until(lambda: not a.runtime.healthy and w.broker.unreachable_starts < 998)
        [problem] = [p for p in a.runtime.problems() if "has failed for" in p]
        assert "Unable to bootstrap" in problem
        assert re.match(
            r"(renewing the producer \S+|recovering task 0) has failed for \d+ s", problem
        )
        w.broker.unreachable_starts = 0  # the broker answers again
        await w.until(lambda: w.committed(0) == 4 and a.runtime.healthy)
        w.check_exactly_once()


@one_producer_only
async def test_two_live_workers_given_one_worker_id_are_unready_and_told_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each start of one producer fences the other's: both keep failing their rounds. The
    # outputs stay exactly once (each failed round is aborted), and /ready names the cause
    # until a while without fencing has passed.
    monkeypatch.setattr(health_module, "FENCED_WINDOW_S", 1.0)
    async with world(2) as w:
        a = await w.worker().start(0)
        b = await w.worker().start(1)
        for _ in range(40):
            w.produce(0, 1)
            w.produce(1, 1)
            await asyncio.sleep(0.01)
            if any("given to another live worker" in p for p in a.runtime.problems()):
                break
        problems = a.runtime.problems() + b.runtime.problems()
        assert any(
            re.fullmatch(
                r"the producer toy-worker-0 was fenced 3 times in the last \d+ s by another "
                r"producer of "
                r"the same id: is this worker id \(0\) given to another live worker too\?",
                p,
            )
            for p in problems
        ), problems
        await b.stop()  # the duplicate goes: the other takes its partition and catches up
        await a.assign(0, 1)
        sent = len(w.broker.logs[IN][0])
        await w.until(lambda: w.committed(0) == sent and w.committed(1) == sent, timeout_s=5)
        await w.until(lambda: a.runtime.healthy)
        w.check_exactly_once()


@pytest.mark.parametrize("topic", [OUT, CHANGELOG])
async def test_a_record_not_delivered_aborts_its_transaction_and_the_batch_comes_again(
    topic: str,
) -> None:
    # aiokafka would commit such a transaction without the record (tests/unit/fakekafka.py
    # fail_next_deliveries): its offsets would skip an output or a table change for good.
    async with world() as w:
        a = await w.worker().start(0)
        w.broker.fail_next_deliveries(topic)  # after the start's fencing transaction
        w.produce(0, 5)
        # Effects run once the commit's task has ended, a moment after the broker took it.
        await w.until(lambda: w.committed(0) == 5 and len(a.toy.effects) == 5)
        w.check_exactly_once()
        assert a.sample("commit_failures_total") == 1
        assert len(a.toy.seen) == 10  # the whole batch handled again after the rewind
        assert sorted(a.toy.effects) == [(0, n) for n in range(5)]  # once each


async def test_at_least_once_commits_no_offset_past_a_record_not_delivered() -> None:
    async with world() as w:
        a = await w.worker(transactional=False).start(0)
        w.broker.fail_next_deliveries(OUT)
        w.produce(0, 5)
        await w.until(lambda: w.committed(0) == 5)
        assert a.sample("commit_failures_total") == 1
        # Every input has its output (some twice: at least once), the lost one included.
        assert {_parse(r)[:2] for r in w.broker.records(OUT)} == {(0, n) for n in range(5)}


async def test_at_least_once_writes_no_table_change_before_the_outputs_are_delivered() -> None:
    # Tables ahead of the outputs would make an input handled again look like one the
    # stage has seen (the engine's repeat check publishes nothing for it): a lost output.
    async with world() as w:
        a = await w.worker(transactional=False).start(0)
        w.broker.fail_next_deliveries(OUT)  # the first of the round's two output batches
        w.produce(0, 5)
        await w.until(lambda: w.committed(0) == 5)
        assert a.sample("commit_failures_total") == 1
        # The failed round wrote no row, so the rewind counted from what was there before:
        # the outputs are the exactly-once ones, some twice, and the counts agree with them.
        assert set(w.outputs()) == set(w.expected())
        assert w.changelog(0) == {key: str(n).encode() for _, _, n, key in w._counted()}
        # In the broker's order: the first row written follows all five outputs.
        records = [item for kind, item in w.broker.history if kind == "record"]
        first_row = next(n for n, r in enumerate(records) if r.topic == CHANGELOG)
        outputs = {_parse(r)[:2] for r in records[:first_row] if r.topic == OUT}
        assert outputs == {(0, n) for n in range(5)}


def waiting(worker: Worker, partition: int) -> int:
    """How many records of task ``partition`` wait for its transaction in flight."""
    task = worker.runtime.tasks.get(partition)
    return 0 if task is None else sum(len(m) for m in task.waiting.values())


async def first_commit_held(
    w: World, on_start: Callable[[Worker], None] = lambda worker: None
) -> tuple[Worker, asyncio.Event]:
    """A worker on partition 0 whose first transaction, of records 0-4, stays in flight
    until the returned event is set (``on_start`` sees the worker before it starts)."""
    held = w.broker.hold_commits(tid(0))
    w.produce(0, 5)
    a = w.worker()
    on_start(a)
    await a.start(0)
    await w.until(lambda: busy(a, 0))
    return a, held


async def test_records_fetched_while_a_commit_is_in_flight_wait_and_go_in_the_next_one() -> None:
    async with world() as w:
        a, held = await first_commit_held(w)
        w.produce(0, 3)
        await w.until(lambda: waiting(a, 0) == 3)
        w.produce(0, 2)
        await w.until(lambda: waiting(a, 0) == 5)  # two fetches, while 0-4 commit
        assert a.toy.seen == [(0, n) for n in range(5)]  # not handled yet
        assert w.outputs() == []
        held.set()
        await w.until(lambda: w.committed(0) == 10)
        w.check_exactly_once()
        offsets = [item[1] for kind, item in w.broker.history if kind == "offset"]
        assert offsets == [5, 10]  # two transactions: 0-4, then 5-9
        assert a.toy.seen == [(0, n) for n in range(10)]
        assert a.toy.batches == [5, 5]  # what waited went to the stage as one batch


async def test_records_waiting_are_handled_at_once_when_a_full_batch_has_come() -> None:
    """However long a transaction takes, at most a batch of records waits per input."""
    async with world() as w:
        a, held = await first_commit_held(w)
        w.produce(0, 150)  # batch_max_records is 100
        await w.until(lambda: len(a.toy.seen) == 105 and waiting(a, 0) == 50)
        assert a.toy.seen == [(0, n) for n in range(105)]
        held.set()
        await w.until(lambda: w.committed(0) == 155)
        w.check_exactly_once()
        assert a.toy.seen == [(0, n) for n in range(155)]


async def test_a_stage_error_on_waiting_records_commits_nothing_past_them() -> None:
    """A stage that raises on records that waited must not lose them: nothing after them
    is committed, and the error stops the loop as it does when met there."""
    async with world() as w:
        a, held = await first_commit_held(w)
        w.produce(0, 5)
        await w.until(lambda: waiting(a, 0) == 5)
        a.toy.broken.add(7)
        held.set()
        with pytest.raises(RuntimeError, match="offset 7"):
            await w.until(lambda: False)
        assert w.committed(0) == 5
        assert (0, 8) not in a.toy.seen


def test_records_come_after_those_already_waiting_even_once_the_commit_has_ended() -> None:
    """Between a transaction's end and the callback that hands on what waited, a fetch may
    bring more: they queue behind, so no record is handled before an earlier one."""
    task = task_module.Task(0, inputs=[tp_in(0)], tables={}, producer=None, transactional=True)
    assert task.wait(tp_in(0), ["a"], most=3) == ["a"]  # nothing in flight: at once
    task.waiting[tp_in(0)] = ["b"]  # left by a transaction that has just ended
    assert task.wait(tp_in(0), ["c"], most=3) == []
    assert task.wait(tp_in(0), ["d"], most=3) == ["b", "c", "d"]  # a full batch: all now
    task.waiting[tp_in(0)] = ["e"]
    assert task.take_waiting() == {tp_in(0): ["e"]}
    assert task.waiting == {}


async def test_records_waiting_when_a_commit_fails_are_dropped_and_handled_once() -> None:
    async with world() as w:
        held = w.broker.hold_commits(tid(0))
        w.broker.fail_next_commit(tid(0))
        w.produce(0, 5)
        a = await w.worker().start(0)
        await w.until(lambda: busy(a, 0))
        w.produce(0, 5)
        await w.until(lambda: waiting(a, 0) == 5)  # waiting while 0-4 commit
        held.set()  # ... and that commit fails: the task rewinds to 0 and reads all again
        await w.until(lambda: w.committed(0) == 10)
        w.check_exactly_once()
        assert a.toy.seen == [(0, n) for n in range(5)] + [(0, n) for n in range(10)]


# ---------------------------------------------------------------- handling a slice per turn

# A slice (HANDLE_SLICE_S) of handling is 20 records at this cost per record (20.5 rather
# than 20: the measure's rounding must not make it 19).
SLICE_OF_20_S = runtime_module.HANDLE_SLICE_S / 20.5


def handling_costs(monkeypatch: pytest.MonkeyPatch, worker: Worker, per_record_s: float) -> None:
    """The runtime measures ``worker``'s handling at ``per_record_s`` a record, exactly.

    It times its handling with ``time.perf_counter()`` of the ``time`` module it imported:
    replacing that name in streams.runtime alone (not ``time.perf_counter`` itself) leaves
    asyncio, pytest and the other modules on the real clocks."""
    clock = HandlingClock(per_record_s)
    monkeypatch.setattr(runtime_module, "time", clock)
    worker.toy.clock = clock


@pytest.mark.parametrize(
    ("per_record_s", "slice_records"),
    [
        (SLICE_OF_20_S, 20),
        (runtime_module.HANDLE_SLICE_S / 1_000, 100),  # never more than batch_max_records
        (runtime_module.HANDLE_SLICE_S * 3, 1),  # longer than a slice: one record a turn
    ],
    ids=["20-a-slice", "cheap", "dear"],
)
async def test_the_loop_takes_about_a_slice_of_handling_per_turn(
    monkeypatch: pytest.MonkeyPatch, per_record_s: float, slice_records: int
) -> None:
    """Between two turns of the event loop the stages get about HANDLE_SLICE_S of work:
    once the runtime has measured what a record costs, it asks the consumer for that many
    records at most (at least one, at most batch_max_records)."""
    records = 100 + 3 * slice_records
    async with world() as w:
        w.produce(0, records)
        # Nothing commits before the stop: no record waits, each fetch goes to the stage.
        a = w.worker(commit_within_ms=60_000)
        handling_costs(monkeypatch, a, per_record_s)
        await a.start(0)
        await w.until(lambda: len(a.toy.seen) == records)
        asked = a.consumer.asked
        assert asked[0] == 100  # nothing measured yet: batch_max_records
        assert set(asked[1:]) == {slice_records}
        assert a.toy.batches == [100] + [slice_records] * 3
        await a.stop()
        w.check_exactly_once()


class CommitWatch(Hooks):
    """What had been handled, and what was visible, when each commit ended."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.handled: Callable[[], int] = lambda: 0
        self.at_commit: list[tuple[int, int]] = []  # (records handled, outputs visible)

    def committed(self, partition: int, done: Committed) -> None:
        self.at_commit.append((self.handled(), len(self.w.outputs())))


async def test_a_commit_in_flight_shows_while_a_large_backlog_is_still_being_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction moves on one step per turn of the event loop, and aiokafka's
    getmany() returns without suspending while it has records buffered: a loop that only
    fetched and handled would hold every commit back until the backlog was gone (seconds
    under load). The loop lets the event loop turn after each slice instead."""
    backlog = 2_000  # a hundred slices
    async with world() as w:
        w.produce(0, backlog)
        watch = CommitWatch(w)
        a = w.worker(hooks=watch)
        watch.handled = lambda: len(a.toy.seen)
        handling_costs(monkeypatch, a, SLICE_OF_20_S)
        await a.start(0)
        a.consumer.turns_when_buffered = False  # as aiokafka (the loop has not run yet)
        await w.until(lambda: w.committed(0) == backlog)
        handled, visible = watch.at_commit[0]
        assert visible > 0
        assert handled < backlog, "the first commit waited for the whole backlog"
        w.check_exactly_once()


async def test_records_fetched_while_a_commit_is_in_flight_go_to_the_stage_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is fetched while a transaction is in flight goes to the stage a slice at a time,
    and what waits for its end, handed on in one batch when it ends (in its callback,
    between two turns of the event loop), is less than a slice, not up to
    batch_max_records."""
    async with world() as w:
        # 0-4 handled: a slice is 20 records now.
        a, held = await first_commit_held(
            w, lambda a: handling_costs(monkeypatch, a, SLICE_OF_20_S)
        )
        w.produce(0, 150)
        await w.until(lambda: len(a.toy.seen) + waiting(a, 0) == 155)
        waited = waiting(a, 0)
        handed = len(a.toy.batches)
        assert 0 < waited < 20
        assert a.toy.batches[1:] == [20] * 7
        held.set()
        await w.until(lambda: w.committed(0) == 155)
        assert a.toy.batches[handed:] == [waited]  # all that waited, in one batch
        assert a.toy.seen == [(0, n) for n in range(155)]
        w.check_exactly_once()


async def test_records_trickling_in_while_a_commit_is_in_flight_wait_a_slice_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records that go to wait for a transaction in flight cost nothing where they are
    fetched: the slice is measured where the stage runs, so a commit during which records
    come a few at a time does not let the slice, or what may wait, grow."""
    async with world() as w:
        # 0-4 handled: a slice is 20 records now.
        a, held = await first_commit_held(
            w, lambda a: handling_costs(monkeypatch, a, SLICE_OF_20_S)
        )

        def all_fetched() -> bool:
            return a.consumer.positions[tp_in(0)] == len(w.broker.logs[IN][0])

        for _ in range(30):
            w.produce(0, 3)  # a few records a fetch, while 0-4 commit
            await w.until(all_fetched)
        held.set()
        await w.until(lambda: w.committed(0) == 95)
        w.check_exactly_once()
        # What waits is handed over once a slice has come: a slice and the fetch that
        # filled it, at most.
        assert set(a.consumer.asked[1:]) == {20}
        assert max(a.toy.batches) <= 20 + 3, f"batches {a.toy.batches}"


# ---------------------------------------------------------------- rebalances


@per_task
async def test_revocation_commits_what_was_handled_and_a_new_owner_takes_over() -> None:
    async with world(partitions=2) as w:
        held = w.broker.hold_commits(tid(1))
        w.produce(0, 4)
        w.produce(1, 5)
        a = await w.worker().start(0, 1)
        await w.until(lambda: busy(a, 1) and w.committed(0) == 4)
        w.produce(1, 3)
        await w.until(lambda: waiting(a, 1) == 3)  # 5-7 wait while 0-4 commit
        producer = a.clients.producer_of(tid(1))
        # The group moves partition 1 away; the revocation waits for the commit in flight.
        moving = asyncio.create_task(a.assign(0))
        await asyncio.sleep(0.02)
        assert not moving.done()
        held.set()
        await asyncio.wait_for(moving, 1)
        assert w.committed(1) == 8  # what waited for that commit is handled and committed too
        w.check_exactly_once()
        assert set(a.runtime.tasks) == {0}
        assert producer.stopped
        # A second worker takes partition 1: its producer, with the same id, fences the
        # first one's, and its table is what the first had committed.
        b = await w.worker().start(1)
        assert b.clients.producer_of(tid(1)).transactional_id == producer.transactional_id
        with pytest.raises(ProducerFenced):
            await producer.begin_transaction()
        assert b.runtime.tasks[1].tables["counts"].rows == {b"k0": b"3", b"k1": b"3", b"k2": b"2"}
        w.produce(1, 4)
        await w.until(lambda: w.committed(1) == 12)
        w.check_exactly_once()  # counts on partition 1 go on where worker a left them
        assert all(p == 1 and offset >= 8 for p, offset in b.toy.seen)


async def test_a_zombie_owner_is_fenced_and_its_transaction_never_shows() -> None:
    async with world() as w:
        w.produce(0, 3)
        a = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 3)
        held = w.broker.hold_commits(tid(0))
        w.produce(0, 2)
        await w.until(lambda: busy(a, 0))
        await a.halt()  # worker a stalls mid-commit; the group gives partition 0 away
        b = await w.worker().start(0)
        held.set()
        await w.until(lambda: w.committed(0) == 5 and not busy(b, 0))
        assert isinstance(await a.runtime.tasks[0].settle(), ProducerFenced)
        w.check_exactly_once()
        assert b.toy.seen == [(0, 3), (0, 4)]


async def test_a_batch_fetched_before_a_recovery_rewind_is_not_handled() -> None:
    async with world() as w:
        a, held = await first_commit_held(w)

        async def fail_the_commit(batches: dict[TopicPartition, list[Record]]) -> None:
            # 5-9 are fetched; before the loop handles them, the commit of 0-4 fails.
            if a.consumer.before_return is fail_the_commit:
                a.consumer.before_return = None
                w.broker.fail_next_commit(tid(0))
                held.set()
                await w.until(lambda: a.runtime.tasks[0].state is TaskState.FAILED)

        a.consumer.before_return = fail_the_commit
        w.produce(0, 5)
        await w.until(lambda: w.committed(0) == 10)
        w.check_exactly_once()  # 5-9 handled on the rewound task only after 0-4


async def test_a_batch_fetched_before_a_reassignment_is_not_handled() -> None:
    async with world() as w:
        a, held = await first_commit_held(w)

        async def rebalance(batches: dict[TopicPartition, list[Record]]) -> None:
            # 5-9 are fetched; before the loop handles them the group rebalances, and the
            # commit the revocation waits for fails: the partition comes back at offset 0.
            if a.consumer.before_return is rebalance:
                a.consumer.before_return = None
                w.broker.fail_next_commit(tid(0))
                held.set()
                await a.assign(0)
                assert await a.consumer.position(tp_in(0)) == 0

        a.consumer.before_return = rebalance
        w.produce(0, 5)
        await w.until(lambda: w.committed(0) == 10)
        w.check_exactly_once()


async def test_a_batch_fetched_before_the_partition_went_and_came_back_is_not_handled() -> None:
    """A client may hand over a batch fetched for an earlier assignment of a partition
    after the partition went and came back: the batch lies wholly behind the new
    position, and must not be handled again (each task expects its committed offsets)."""
    async with world() as w:
        w.produce(0, 5)
        a = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 5)
        b = w.worker()

        async def away_and_back(batches: dict[TopicPartition, list[Record]]) -> None:
            # 5-9 are fetched; before the loop handles them, partition 0 goes to worker b,
            # which handles 5-9, and comes back at offset 10: 5-9 lie behind the position.
            if a.consumer.before_return is away_and_back:
                a.consumer.before_return = None
                await a.assign()
                await b.start(0)
                await w.until(lambda: w.committed(0) == 10)
                await b.assign()
                await a.assign(0)

        a.consumer.before_return = away_and_back
        w.produce(0, 5)
        await w.until(lambda: w.committed(0) == 10 and a.consumer.before_return is None)
        await a.stop()  # commits whatever it handled
        w.check_exactly_once()
        assert a.toy.seen == [(0, n) for n in range(5)]


# ---------------------------------------------------------------- housekeeping


class Sweeper(Hooks):
    def __init__(self) -> None:
        self.expire: set[bytes] = set()
        self.asked_at: set[int] = set()

    def stale(self, table: str, value: bytes | None, now_ms: int) -> bool:
        self.asked_at.add(now_ms)
        return table == "counts" and value in self.expire


async def test_the_sweep_deletes_stale_rows_and_the_deletions_reach_the_changelog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.0)
    monkeypatch.setattr(housekeeping_module, "SWEEP_COMMIT_WITHIN_S", 0.0)
    async with world() as w:
        hooks = Sweeper()
        w.produce(0, 4)  # k0 counted twice, k1 and k2 once
        a = await w.worker(hooks=hooks, wall_ms=lambda: 1_234).start(0)
        await w.until(lambda: w.committed(0) == 4)
        assert w.changelog(0) == {b"k0": b"2", b"k1": b"1", b"k2": b"1"}
        hooks.expire = {b"1"}  # rows counted once have lived too long
        await w.until(lambda: w.changelog(0) == {b"k0": b"2"})
        assert set(a.runtime.tasks[0].tables["counts"]) == {b"k0"}
        assert a.sample("state_swept_total", table="counts") == 2
        assert a.sample("table_rows", table="counts") == 1
        assert hooks.asked_at == {1_234}
        # A new owner restores the table without them.
        await a.stop()
        b = await w.worker().start(0)
        assert b.runtime.tasks[0].tables["counts"].rows == {b"k0": b"2"}


async def test_the_keys_of_outputs_placed_lately_leave_memory_on_the_housekeeping_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Output keys name users, devices and networks: the cache that places them on their
    partitions keeps none past ``PLACEMENTS_KEPT_S`` (an erased user's id must go)."""
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.0)
    task_module.forget_placements()
    async with world() as w:
        w.produce(0, 3)
        a = await w.worker().start(0)
        await w.until(lambda: w.committed(0) == 3)
        assert task_module.placements_kept() > 0  # within the interval: kept
        monkeypatch.setattr(runtime_module, "PLACEMENTS_KEPT_S", 0.0)
        await w.until(lambda: task_module.placements_kept() == 0)
        w.produce(0, 2)  # placed again as they come
        await w.until(lambda: w.committed(0) == 5)
        assert len(w.outputs()) == 5
        await a.stop()


async def test_every_owned_changelog_partition_gets_a_rolling_tombstone_that_deletes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka compacts only closed segments and closes one only at an append: a quiet
    changelog partition would keep a deleted row forever (docs/privacy.md)."""
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.0)
    monkeypatch.setattr(housekeeping_module, "SWEEP_COMMIT_WITHIN_S", 0.0)

    def rolled(partition: int) -> list[bytes | None]:
        return [
            r.value
            for r in w.broker.records(CHANGELOG)
            if r.partition == partition and r.key == housekeeping_module.ROLL_KEY
        ]

    async with world(partitions=2) as w:
        w.produce(0, 3)
        a = await w.worker(changelog_roll_s=0.005).start(0, 1)
        await w.until(lambda: w.committed(0) == 3)
        # Partition 1 never had an input: it is rolled all the same, more than once.
        await w.until(lambda: len(rolled(1)) >= 2 and len(rolled(0)) >= 2)
        assert set(rolled(0) + rolled(1)) == {None}
        assert w.changelog(0) == {b"k0": b"1", b"k1": b"1", b"k2": b"1"}
        await a.stop()
        w.check_exactly_once()
        b = await w.worker().start(0, 1)  # a restore applies them and keeps every row
        assert b.runtime.tasks[0].tables["counts"].rows == w.changelog(0)
        assert b.runtime.tasks[1].tables["counts"].rows == {}


async def test_the_lag_gauge_shows_records_behind_per_owned_partition() -> None:
    async with world(partitions=3) as w:
        for p in range(3):
            w.produce(p, 3)
        a = await w.worker().start(0, 1)
        await w.until(lambda: w.committed(0) == w.committed(1) == 3)
        await a.halt()  # so nothing more is handled
        w.produce(0, 4)
        w.produce(2, 9)  # not ours
        outsider = FakeProducer(w.broker, "outsider")
        await outsider.start()
        await outsider.begin_transaction()
        for _ in range(2):  # not readable yet: lag counts up to the last stable offset
            await outsider.send(IN, b"x", key=b"k0", partition=1)
        a.runtime.inputs.export_lag(a.consumer, a.runtime.tasks)

        def lag(partition: int) -> float | None:
            return a.sample("consumer_lag_records", topic=IN, partition=str(partition))

        assert (lag(0), lag(1), lag(2)) == (4, 0, None)
        await a.assign(1)  # partition 0 goes to another worker: only it reports it now
        a.runtime.inputs.export_lag(a.consumer, a.runtime.tasks)
        assert (lag(0), lag(1), lag(2)) == (None, 0, None)


async def test_a_partition_the_group_took_before_saying_so_is_not_asked_about() -> None:
    """The group can take a partition from the consumer before the revocation reaches the
    tasks (a lost generation; two workers given one id fence each other): the lag gauge,
    the blocked-input watch and the pacing ask nothing of it (aiokafka would assert, and
    the worker would end) and go on for the partitions still held."""
    async with world(partitions=2) as w:
        for p in range(2):
            w.produce(p, 3)
        a = await w.worker().start(0, 1)
        await w.until(lambda: w.committed(0) == w.committed(1) == 3)
        await a.halt()
        w.produce(1, 2)
        a.consumer.lose(tp_in(0))
        a.runtime.inputs.export_lag(a.consumer, a.runtime.tasks)
        a.runtime.inputs.watch_blocked(a.consumer, a.runtime.tasks, 0.0)
        lag = [a.sample("consumer_lag_records", topic=IN, partition=str(p)) for p in range(2)]
        assert lag == [None, 2]
        # Pacing the stage on itself: 2 records behind is past a limit of 1, so it pauses
        # the input it still holds, and only that one.
        watch = a.runtime.inputs
        watch.paced = watch.pacing = frozenset({"count"})
        watch.pause_behind = 1
        watch.pace(a.consumer, a.runtime.tasks)
        assert a.consumer.paused == {tp_in(1)}


# ---------------------------------------------------------------- at least once


async def test_at_least_once_commits_the_offsets_after_the_outputs() -> None:
    async with world(partitions=2) as w:
        w.produce(0, 6)
        w.produce(1, 4)
        a = await w.worker(transactional=False).start(0, 1)
        await w.until(lambda: w.committed(0) == 6 and w.committed(1) == 4)
        w.produce(0, 3)
        await w.until(lambda: w.committed(0) == 9)
        w.check_exactly_once()
        assert [p.transactional_id for p in a.clients.producers] == [None]
        # Every committed offset comes after the outputs of the records before it.
        out: set[tuple[int, int]] = set()
        for kind, item in w.broker.history:
            if kind == "record" and item.topic == OUT:
                out.add(_parse(item)[:2])
            elif kind == "offset":
                (_, tp), offset = item
                assert {(tp.partition, n) for n in range(offset)} <= out


async def test_at_least_once_commits_every_task_in_one_round() -> None:
    async with world(partitions=3) as w:
        for partition in range(3):
            w.produce(partition, 4)
        a = await w.worker(transactional=False).start(0, 1, 2)
        await w.until(lambda: all(w.committed(p) == 4 for p in range(3)))
        w.produce(1, 2)
        w.produce(2, 3)
        await w.until(lambda: w.committed(1) == 6 and w.committed(2) == 7)
        w.check_exactly_once()
        # The tasks' work is flushed and its offsets committed together, a round at a
        # time, as the one transactional producer's rounds do: not one commit per task.
        commits = w.broker.offset_commits
        assert len(commits) == a.sample("commit_seconds_count")
        assert {tp_in(p) for p in range(3)} in commits
        assert len(commits) < 3 + 2  # a commit a task would take at least this many


async def test_at_least_once_revocation_commits_the_round_and_both_owners_go_on() -> None:
    async with world(partitions=2) as w:
        w.produce(0, 4)
        w.produce(1, 5)
        a = await w.worker(transactional=False).start(0, 1)
        await w.until(lambda: w.committed(0) == 4 and w.committed(1) == 5)
        w.produce(1, 3)
        await a.assign(0)  # partition 1 moves away: what was handled of it is committed
        assert set(a.runtime.tasks) == {0}
        b = await w.worker(transactional=False).start(1)
        w.produce(0, 2)
        w.produce(1, 4)
        # Both owners commit on: the revocation's round left the shared producer running.
        await w.until(lambda: w.committed(0) == 6 and w.committed(1) == 12)
        w.check_exactly_once()  # no crash: each input is one output, the counts go on
        assert all(p == 1 and offset >= 5 for p, offset in b.toy.seen)


async def test_stop_commits_what_was_handled() -> None:
    async with world() as w:
        w.produce(0, 3)
        a = await w.worker(commit_within_ms=60_000).start(0)
        await w.until(lambda: len(a.toy.seen) == 3)
        assert w.committed(0) is None
        await a.stop()
        w.check_exactly_once()


# ---------------------------------------------------------------- effects


async def test_effects_run_once_after_their_commit_and_never_for_a_failed_one() -> None:
    async with world() as w:
        held = w.broker.hold_commits(tid(0))
        w.broker.fail_next_commit(tid(0))
        w.produce(0, 3)
        a = await w.worker().start(0)
        await w.until(lambda: busy(a, 0))
        assert a.toy.effects == []  # handled, not committed yet
        held.set()  # the commit fails: the batch is handled again
        await w.until(lambda: w.committed(0) == 3 and len(a.toy.effects) == 3)
        await asyncio.sleep(0.01)  # (were any to run twice)
        assert len(a.toy.seen) == 6
        assert a.toy.effects == [(0, 0), (0, 1), (0, 2)]


async def acknowledged_without_markers(w: World) -> Worker:
    """A worker on task 0 whose commit of offsets 5-7 Kafka acknowledged and left open."""
    w.produce(0, 5)
    a = await w.worker().start(0)
    await w.until(lambda: w.committed(0) == 5)
    w.broker.skip_markers_of_next_commit(tid(0))
    w.produce(0, 3)
    await w.until(lambda: (0, 7) in a.toy.effects)  # acknowledged: their effects ran
    assert w.committed(0) == 5  # ... their offsets pending
    assert len(w.outputs()) == 5  # ... their records open
    return a


async def test_a_commit_kafka_acknowledged_then_aborted_is_handled_again_without_its_effects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lone broker shutting down mid-commit acknowledges it without writing its markers;
    the fencing abort of the task's recovery then aborts its records. They are handled
    again (exactly once visible), but their effects (the models' learning) ran at the
    acknowledgement and do not run a second time."""
    async with world() as w:
        a = await acknowledged_without_markers(w)
        w.broker.fail_next_commit(tid(0))  # the next commit fails: the task recovers
        w.produce(0, 2)
        with caplog.at_level(logging.WARNING, logger="streams.runtime"):
            await w.until(lambda: w.committed(0) == 10 and (0, 9) in a.toy.effects)
        w.check_exactly_once()
        assert a.toy.seen.count((0, 6)) == 2  # handled again after the fencing abort
        await asyncio.sleep(0.01)  # (were any effect to run twice)
        assert a.toy.effects == [(0, offset) for offset in range(10)]
        assert a.sample("transactions_reverted_total") == 1
        assert "transaction.reverted task=0 input=toy-in[0] committed=5 acknowledged=8" in (
            caplog.text
        )


async def test_a_commit_acknowledged_without_markers_shows_with_the_next_commit() -> None:
    async with world() as w:
        a = await acknowledged_without_markers(w)
        w.produce(0, 2)  # the next commit's markers commit what was left open
        await w.until(lambda: w.committed(0) == 10 and (0, 9) in a.toy.effects)
        w.check_exactly_once()
        assert a.toy.effects == [(0, offset) for offset in range(10)]
        assert a.sample("transactions_reverted_total") == 0


@pytest.mark.parametrize("resumed", [True, False])
async def test_a_worker_resumed_from_what_its_predecessor_learned_does_not_learn_it_again(
    resumed: bool,
) -> None:
    """The predecessor died after Kafka acknowledged a commit it then left open; the
    successor's fencing aborts it. Resumed from the positions the predecessor's models
    had learned through (a checkpoint carries them), the successor handles those records
    again without their effects; without them, it cannot know, and runs them again."""
    async with world() as w:
        a = await acknowledged_without_markers(w)
        await a.halt()  # killed: nothing more of it commits
        b = w.worker()
        if resumed:
            b.runtime.resume_from(a.runtime.learned_through())
        assert a.runtime.learned_through() == {"toy-in/0": 8}
        await b.start(0)
        w.produce(0, 2)
        await w.until(lambda: w.committed(0) == 10 and (0, 9) in b.toy.effects)
        w.check_exactly_once()
        assert [offset for _, offset in b.toy.seen] == [5, 6, 7, 8, 9]
        assert b.toy.effects == [(0, offset) for offset in ((8, 9) if resumed else range(5, 10))]
        assert b.sample("transactions_reverted_total") == (1 if resumed else 0)


async def test_positions_resumed_for_an_input_with_no_committed_offset_are_ignored() -> None:
    """A topic deleted and created again loses its committed offsets: a checkpoint's
    positions for it must not keep its new records from having their effects."""
    async with world() as w:
        w.produce(0, 3)
        a = w.worker()
        a.runtime.resume_from({"toy-in/0": 50})
        await a.start(0)
        await w.until(lambda: w.committed(0) == 3 and (0, 2) in a.toy.effects)
        assert a.toy.effects == [(0, 0), (0, 1), (0, 2)]
        assert a.sample("transactions_reverted_total") == 0


async def test_a_failing_effect_is_counted_and_the_others_run() -> None:
    async with world() as w:
        w.produce(0, 3)
        a = w.worker()
        a.toy.explode = {1}
        await a.start(0)
        await w.until(lambda: w.committed(0) == 3 and len(a.toy.effects) == 2)
        assert a.toy.effects == [(0, 0), (0, 2)]
        assert a.sample("effect_failures_total") == 1
        w.produce(0, 1)
        await w.until(lambda: w.committed(0) == 4 and len(a.toy.effects) == 3)
        await asyncio.sleep(0.01)  # (were any to run twice)
        assert a.toy.effects == [(0, 0), (0, 2), (0, 3)]  # each once, over two commits
        w.check_exactly_once()


# ---------------------------------------------------------------- /ready


async def test_an_input_held_behind_an_open_transaction_makes_the_worker_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "SWEEP_EVERY_S", 0.0)
    async with world() as w:
        w.produce(0, 2)
        a = await w.worker(blocked_not_ready_s=0.0).start(0)
        await w.until(lambda: w.committed(0) == 2)
        assert a.runtime.problems() == []
        outsider = FakeProducer(w.broker, "outsider")
        await outsider.start()
        await outsider.begin_transaction()
        await outsider.send(IN, b"x", key=b"k0", partition=0)
        w.produce(0, 1)  # behind the open transaction

        def blocked_s() -> float:
            return a.sample("input_blocked_seconds", topic=IN, partition="0") or 0.0

        await w.until(lambda: blocked_s() > 0)
        [problem] = a.runtime.problems()
        assert problem.startswith(f"{IN}[0] has waited")
        assert not a.runtime.healthy
        await outsider.commit_transaction()
        await w.until(lambda: w.committed(0) == 4 and a.runtime.healthy)
        assert blocked_s() == 0
        w.check_exactly_once()


async def test_a_task_whose_transactions_keep_failing_makes_the_worker_unready() -> None:
    async with world() as w:
        w.broker.fail_next_commit(tid(0), times=1_000)
        w.produce(0, 2)
        a = await w.worker().start(0)
        await w.until(lambda: not a.runtime.healthy)
        [problem] = a.runtime.problems()
        assert re.fullmatch(r"task 0: \d+ transactions in a row failed", problem)
        w.broker.failures.clear()
        await w.until(lambda: w.committed(0) == 2 and a.runtime.healthy)
        w.check_exactly_once()


# ---------------------------------------------------------------- kept from the old file


def test_settings_reject_a_time_to_live_below_a_day() -> None:
    with pytest.raises(SettingsError, match="STATE_TTL_DAYS"):
        Settings.from_env(environ={"REWARDSTREAM_STATE_TTL_DAYS": "0"})
    day_ms = 86_400_000
    assert dataclasses.replace(Settings(), state_ttl_days=2).state_ttl_ms == 2 * day_ms


def test_repeated_client_log_lines_are_held_back_and_counted() -> None:
    from streams.worker import RepeatFilter

    gate = RepeatFilter(every_s=3600)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    assert gate.filter(record("aiokafka", "Unable connect to node %s"))
    assert not gate.filter(record("aiokafka", "Unable connect to node %s"))
    assert gate.filter(record("aiokafka", "Another message"))
    assert gate.filter(record("streams.runtime", "task.recovered"))  # ours: never held
    assert gate.filter(record("streams.runtime", "task.recovered"))
    gate.every_s = 0.0
    again = record("aiokafka", "Unable connect to node %s")
    assert gate.filter(again)
    assert "(1 similar held back)" in again.getMessage()
