"""The tables' housekeeping, on the clock and off the handling path: the time-to-live
sweep, the tombstones that keep quiet changelogs rolling, and local snapshots.

Each part has one job and its own memory of what it did; the runtime calls them from
its housekeeping tick with the tasks it owns, and tells them when a partition leaves.
What a row's time to live is, only the topology knows (``Hooks.stale``): nothing here
reads a row.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streams import snapshot
from streams.task import Task, TaskState

log = logging.getLogger(__name__)

# The sweep looks at enough rows of each table partition per tick to pass over all of
# them about once per pass, and at least SWEEP_MIN_SLICE. Each row it looks at is decoded
# by the topology's hook, and a tick's rows are looked at in one go: a larger slice than
# the pass needs is a stall of the loop every tick.
SWEEP_MIN_SLICE = 8
# Deletions by the sweep, and the roll's tombstones, are committed within this long.
SWEEP_COMMIT_WITHIN_S = 1.0
# The key of the tombstones that keep quiet changelog partitions rolling: longer than any
# key a stage can write (ids are at most 128 characters), so restoring its tombstone
# removes nothing.
ROLL_KEY = b"\x00rewardstream:roll:" + b"\x00" * 1024

Stale = Callable[[str, bytes | None, int], bool]  # (table, row, wall ms) -> deletable


class Sweeper:
    """Deletes the rows whose time to live is over, a slice of each table partition per
    tick, so that every row is looked at about once per ``pass_s``; the deletions commit
    with the task's next transaction."""

    def __init__(
        self,
        stale: Stale,
        metrics: Any,
        *,
        tick_s: float,
        pass_s: float,
        wall_ms: Callable[[], int],
    ) -> None:
        self.stale = stale
        self.metrics = metrics
        self.share = tick_s / pass_s  # of each table partition's rows, per tick
        self.wall_ms = wall_ms
        # The keys still to look at in this pass, per (changelog, partition), and how many
        # a tick takes: a share of the rows there were when the pass began, so a pass
        # takes ``pass_s`` however many of them it deletes.
        self.left: dict[tuple[str, int], list[bytes]] = {}
        self.slice: dict[tuple[str, int], int] = {}

    def sweep(self, tasks: Mapping[int, Task], now_s: float) -> int:
        """One tick of the sweep over the running tasks; how many rows it deleted."""
        now_ms = self.wall_ms()
        deleted = 0
        for task in tasks.values():
            if task.state is not TaskState.RUNNING:
                continue
            swept = 0
            for name, table in task.tables.items():
                where = (table.topic, task.partition)
                keys = self.left.get(where)
                if not keys:
                    keys = self.left[where] = list(table.rows)
                    self.slice[where] = max(SWEEP_MIN_SLICE, math.ceil(len(keys) * self.share))
                size = self.slice[where]
                slice_, self.left[where] = keys[:size], keys[size:]
                for row in slice_:
                    if self.stale(name, table.get(row), now_ms):
                        del table[row]
                        self.metrics.state_swept.labels(name).inc()
                        swept += 1
            if swept:
                task.touched(now_s + SWEEP_COMMIT_WITHIN_S)
            deleted += swept
        return deleted

    def forget(self, topic: str, partition: int) -> None:
        """The partition left this worker: its pass starts over if it comes back."""
        self.left.pop((topic, partition), None)
        self.slice.pop((topic, partition), None)


class ChangelogRoller:
    """Appends a tombstone of :data:`ROLL_KEY` to every owned changelog partition once per
    ``every_s`` (0: never), with the task's next transaction. Kafka closes a segment only
    at an append and compacts only closed ones: a quiet partition would keep a deleted
    row's last value indefinitely."""

    def __init__(self, every_s: float, *, now_s: float) -> None:
        self.every_s = every_s
        self.last_s = now_s

    def roll(self, tasks: Mapping[int, Task], now_s: float) -> None:
        if not self.every_s or now_s - self.last_s < self.every_s:
            return
        self.last_s = now_s
        for task in tasks.values():
            if task.state is not TaskState.RUNNING:
                continue
            for table in task.tables.values():
                table[ROLL_KEY] = None
            task.touched(now_s + SWEEP_COMMIT_WITHIN_S)


class Snapshots:
    """Local snapshots of the owned tables, each at the changelog offset it holds, so a
    restart reads only the changelog after it (:mod:`streams.snapshot`). Knows where each
    changelog partition ends as last committed or restored: a table is written only when
    every change to it is committed, and again only once something more was."""

    def __init__(
        self, directory: Path | None, *, interval_s: int, max_age_s: float, now_s: float
    ) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.last_s = now_s
        self.ends: dict[TopicPartition, int] = {}  # each changelog's next offset, committed
        self.written: dict[TopicPartition, int] = {}  # the offset its last snapshot holds

    def due(self, now_s: float) -> bool:
        return bool(self.interval_s) and now_s - self.last_s >= self.interval_s

    def committed(self, ends: Mapping[TopicPartition, int]) -> None:
        """Changelogs end here now (a commit, or a restore)."""
        self.ends.update(ends)

    def forget(self, changelog: TopicPartition) -> None:
        """The changelog partition left this worker."""
        self.ends.pop(changelog, None)
        self.written.pop(changelog, None)

    async def write(self, tasks: Mapping[int, Task]) -> None:
        """Write every owned table partition whose rows are all committed (every commit
        has ended and nothing is pending) and changed since its last snapshot."""
        self.last_s = time.monotonic()
        directory = self.directory
        if directory is None:
            return
        jobs = []
        for task in tasks.values():
            for table in task.tables.values():
                changelog = TopicPartition(table.topic, table.partition)
                end = self.ends.get(changelog)
                if end is None or table.changed or task.pending.due_s is not None:
                    continue  # not restored yet, or changes not committed: never a guess
                if self.written.get(changelog) == end:
                    continue  # nothing committed since its last snapshot
                jobs.append((changelog, end, dict(table.rows)))
        if not jobs:
            await asyncio.to_thread(_prune, directory, self.max_age_s)
            return
        started = time.monotonic()
        written = await asyncio.to_thread(_write, directory, jobs, time.time(), self.max_age_s)
        self.written.update((tp, end) for tp, end, _ in jobs)
        log.info(
            "snapshot.written tables=%d bytes=%d seconds=%.2f",
            len(jobs),
            written,
            time.monotonic() - started,
        )


def _prune(directory: Path, max_age_s: float) -> int:
    if not directory.is_dir():
        return 0
    return snapshot.prune(directory, max_age_s=max_age_s, now_s=time.time())


def _write(
    directory: Path,
    jobs: list[tuple[TopicPartition, int, dict[bytes, bytes]]],
    now_s: float,
    max_age_s: float,
) -> int:
    _prune(directory, max_age_s)
    return sum(
        snapshot.write(
            snapshot.path_for(directory, tp.topic, tp.partition),
            tp.topic,
            tp.partition,
            end,
            rows,
            now_s,
        )
        for tp, end, rows in jobs
    )
