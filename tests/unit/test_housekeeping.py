"""The tables' housekeeping on its own: the time-to-live sweep, changelog rolls and local
snapshots, over real tables and tasks, without a broker (streams.housekeeping)."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from streams import snapshot
from streams.housekeeping import ROLL_KEY, ChangelogRoller, Snapshots, Sweeper
from streams.state import PartitionTable
from streams.task import Task, TaskState

CHANGELOG = "app-counts-changelog"


def task_with(partition: int, rows: dict[bytes, bytes], *, running: bool = True) -> Task:
    table = PartitionTable(CHANGELOG, partition)
    table.rows.update(rows)
    task = Task(partition, inputs=(), tables={"counts": table}, producer=None, transactional=True)
    task.state = TaskState.RUNNING if running else TaskState.RESTORING
    return task


def table_of(task: Task) -> PartitionTable:
    return task.tables["counts"]


def sweeper(stale_below: int, *, pass_ticks: int, looked: list[bytes]) -> Sweeper:
    """A sweeper whose rows are integers, stale below ``stale_below``, that passes over
    every row in ``pass_ticks`` ticks and notes each row it looks at."""

    def stale(table: str, value: bytes | None, now_ms: int) -> bool:
        assert table == "counts"
        assert now_ms == 1_000  # the worker's clock, as given
        looked.append(value or b"")
        return value is not None and int(value) < stale_below

    metrics = Metrics(CollectorRegistry())
    return Sweeper(stale, metrics, tick_s=1.0, pass_s=float(pass_ticks), wall_ms=lambda: 1_000)


def test_the_sweep_looks_at_every_row_once_a_pass_and_deletes_the_stale_ones() -> None:
    rows = {f"k{i:03}".encode(): str(i).encode() for i in range(100)}
    task = task_with(0, rows)
    looked: list[bytes] = []
    sweep = sweeper(30, pass_ticks=4, looked=looked)
    deleted = [sweep.sweep({0: task}, now_s=float(tick)) for tick in range(4)]
    # A quarter of the rows a tick; each row looked at once in the pass.
    assert [len(looked[i * 25 : (i + 1) * 25]) for i in range(4)] == [25] * 4
    assert sorted(looked) == sorted(rows.values())
    assert sum(deleted) == 30
    assert set(table_of(task).rows) == {f"k{i:03}".encode() for i in range(30, 100)}
    # The deletions are tombstones for the next commit, due within a second.
    assert table_of(task).changed == {f"k{i:03}".encode(): None for i in range(30)}
    assert task.pending.due_s is not None
    assert task.pending.due_s <= 4.0


def test_a_sweep_pass_starts_over_with_the_rows_there_are_then() -> None:
    task = task_with(0, {b"a": b"50", b"b": b"50"})
    looked: list[bytes] = []
    sweep = sweeper(10, pass_ticks=1, looked=looked)
    sweep.sweep({0: task}, now_s=0.0)
    table_of(task)[b"c"] = b"5"  # written after the pass began: the next pass sees it
    sweep.sweep({0: task}, now_s=1.0)
    assert looked == [b"50", b"50", b"50", b"50", b"5"]
    assert b"c" not in table_of(task).rows


def test_the_sweep_leaves_a_task_that_is_not_running_alone() -> None:
    task = task_with(0, {b"a": b"1"}, running=False)
    looked: list[bytes] = []
    assert sweeper(10, pass_ticks=1, looked=looked).sweep({0: task}, now_s=0.0) == 0
    assert looked == []
    assert table_of(task).rows == {b"a": b"1"}


def test_a_partition_that_leaves_and_comes_back_is_swept_from_its_start() -> None:
    rows = {f"k{i}".encode(): b"50" for i in range(16)}
    looked: list[bytes] = []
    sweep = sweeper(10, pass_ticks=2, looked=looked)
    sweep.sweep({0: task_with(0, rows)}, now_s=0.0)  # 8 of 16 looked at
    sweep.forget(CHANGELOG, 0)
    looked.clear()
    sweep.sweep({0: task_with(0, rows)}, now_s=1.0)
    sweep.sweep({0: task_with(0, rows)}, now_s=2.0)
    assert len(looked) == 16  # a whole pass again, not the half left over


def test_the_roller_writes_one_tombstone_a_table_partition_each_period() -> None:
    tasks = {0: task_with(0, {b"a": b"1"}), 1: task_with(1, {})}
    roller = ChangelogRoller(10.0, now_s=0.0)
    roller.roll(tasks, now_s=5.0)
    assert all(table_of(t).changed == {} for t in tasks.values())
    roller.roll(tasks, now_s=10.0)
    assert all(table_of(t).changed == {ROLL_KEY: None} for t in tasks.values())
    assert table_of(tasks[0]).rows == {b"a": b"1"}  # the roll's key is no row's
    assert all(t.pending.due_s is not None for t in tasks.values())
    never = ChangelogRoller(0.0, now_s=0.0)
    idle = task_with(2, {})
    never.roll({2: idle}, now_s=1e9)
    assert table_of(idle).changed == {}


async def test_a_snapshot_holds_only_committed_rows_and_is_written_again_only_after_a_commit(
    tmp_path: Path,
) -> None:
    task = task_with(0, {b"a": b"1"})
    snaps = Snapshots(tmp_path, interval_s=5, max_age_s=3600.0, now_s=0.0)
    assert not snaps.due(4.0)
    assert snaps.due(5.0)
    changelog = TopicPartition(CHANGELOG, 0)
    path = snapshot.path_for(tmp_path, CHANGELOG, 0)

    await snaps.write({0: task})  # never restored: where its changelog ends is unknown
    assert not path.exists()

    snaps.committed({changelog: 7})
    table_of(task)[b"b"] = b"2"  # not committed yet
    await snaps.write({0: task})
    assert not path.exists()

    table_of(task).drain()  # committed, at offset 9
    snaps.committed({changelog: 9})
    await snaps.write({0: task})
    written = snapshot.read(path, CHANGELOG, 0)
    assert written is not None
    assert (written.offset, written.rows) == (9, {b"a": b"1", b"b": b"2"})

    path.unlink()
    await snaps.write({0: task})  # nothing committed since: not written again
    assert not path.exists()
    snaps.forget(changelog)  # the partition left: nothing is known of it any more
    await snaps.write({0: task})
    assert not path.exists()


async def test_without_a_directory_no_snapshot_is_written(tmp_path: Path) -> None:
    task = task_with(0, {b"a": b"1"})
    snaps = Snapshots(None, interval_s=0, max_age_s=3600.0, now_s=0.0)
    snaps.committed({TopicPartition(CHANGELOG, 0): 1})
    assert not snaps.due(1e9)  # an interval of 0: never due
    await snaps.write({0: task})
    assert list(tmp_path.iterdir()) == []
