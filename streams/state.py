"""Changelog-backed tables: in memory per partition, written to Kafka in the same transaction
as the outputs and the input offset that produced them.

A table's changelog topic is ``<app_id>-<table>-changelog`` (compacted), with one
partition per partition of the stage's input topic: the state of input partition
``p`` lives in changelog partition ``p`` and nowhere else, so exactly one
transactional producer ever writes it. Restoring a partition reads its
changelog from the beginning to the last stable offset with ``read_committed``:
what an aborted (killed) transaction wrote is never read back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.kafkaio import seek_to_first
from streams import snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    """One state change to write: ``value`` None deletes the key (a tombstone)."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None


class PartitionTable(MutableMapping[bytes, bytes | None]):
    """One table's rows on one partition; remembers which keys changed since the last drain."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.rows: dict[bytes, bytes] = {}
        self.changed: dict[bytes, bytes | None] = {}
        # What a handler derives from these rows and keeps beside them between batches
        # (decoded rows, say): it lives and goes with this partition's table.
        self.memo: dict[str, Any] = {}
        # Called at each drain, before the changes are taken: a handler that keeps rows
        # it changed decoded until the commit (a record cache, as Kafka Streams keeps)
        # writes them here, so a row changed by many batches of one commit is encoded
        # once. What was handled after a drain is written at the next one.
        self.before_drain: list[Callable[[], None]] = []

    def __getitem__(self, key: bytes) -> bytes | None:
        return self.rows[key]

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        return self.rows.get(key, default)

    def __setitem__(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value
        self.changed[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self.rows[key]
        self.changed[key] = None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def drain(self) -> list[ChangelogRecord]:
        """The changes since the last drain, one record per key (the latest value wins),
        once every :attr:`before_drain` writer has written what it kept."""
        for write in self.before_drain:
            write()
        records = [
            ChangelogRecord(self.topic, self.partition, key, value)
            for key, value in self.changed.items()
        ]
        self.changed = {}
        return records

    def apply(self, key: bytes, value: bytes | None) -> None:
        """A record read back from the changelog: applied, not counted as a change."""
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value


class Unavailable(MutableMapping[bytes, bytes | None]):
    """A table a stage did not declare: touching it is a bug in the stage, not bad input."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def _refuse(self) -> RuntimeError:
        return RuntimeError(f"stage {self.stage!r} uses a table it did not declare")

    def __getitem__(self, key: bytes) -> bytes | None:
        raise self._refuse()

    def __setitem__(self, key: bytes, value: bytes | None) -> None:
        raise self._refuse()

    def __delitem__(self, key: bytes) -> None:
        raise self._refuse()

    def __iter__(self) -> Iterator[bytes]:
        raise self._refuse()

    def __len__(self) -> int:
        raise self._refuse()


@dataclass(frozen=True)
class Restored:
    records: int  # changelog records read
    from_snapshots: int  # tables seeded from a local snapshot
    from_views: int  # tables seeded from the rows a view read at start-up
    ends: dict[TopicPartition, int]  # each changelog partition's offset its rows end at


async def restore(
    consumer: AIOKafkaConsumer,
    tables: list[PartitionTable],
    *,
    snapshots: Path | None = None,
    now_s: float = 0.0,
    max_age_s: float = snapshot.MAX_AGE_S,
    batch_records: int = 10_000,
    seeds: Mapping[TopicPartition, tuple[dict[bytes, bytes], int]] | None = None,
) -> Restored:
    """Fill ``tables`` from their changelog partitions, each from its local snapshot in
    ``snapshots`` if it has a usable one (then only the changelog after it is read).

    ``seeds`` are rows a view read of the same changelog partitions, with the offset
    they are complete up to (streams.views.Views.take_seeds): a partition seeded by them
    reads only the changelog after it, and its snapshot is not read.

    ``consumer`` has no group and reads committed records only; it is left unassigned.
    """
    if not tables:
        return Restored(0, 0, 0, {})
    by_partition = {TopicPartition(t.topic, t.partition): t for t in tables}
    partitions = list(by_partition)
    consumer.assign(partitions)
    try:
        # With read_committed this is the last stable offset: nothing after an open
        # transaction is read, and the caller fenced the previous writer beforehand.
        ends = await consumer.end_offsets(partitions)
        starts = await seek_to_first(consumer, partitions)
        seeded = from_views = 0
        for tp, table in by_partition.items():
            seed = (seeds or {}).get(tp)
            if seed is not None and starts[tp] <= seed[1] <= ends[tp]:
                table.rows = seed[0]
                consumer.seek(tp, seed[1])
                from_views += 1
                continue
            found = None
            if snapshots is not None:
                path = snapshot.path_for(snapshots, tp.topic, tp.partition)
                # Off the event loop: a large snapshot takes a second to read.
                found = await asyncio.to_thread(snapshot.read, path, tp.topic, tp.partition)
            usable = found is not None and snapshot.usable(
                found, start=starts[tp], end=ends[tp], now_s=now_s, max_age_s=max_age_s
            )
            if found and usable:  # (found, for the type checker)
                table.rows = found.rows
                consumer.seek(tp, found.offset)
                seeded += 1
        read = 0
        pending = {tp for tp in partitions if ends[tp] > await consumer.position(tp)}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=batch_records)
            for tp, messages in batches.items():
                table = by_partition[tp]
                for message in messages:
                    if message.key is not None:
                        table.apply(message.key, message.value)
                read += len(messages)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return Restored(read, seeded, from_views, dict(ends))
    finally:
        consumer.assign([])
