"""Views: a read-only copy of a whole table, on every worker, kept from its changelog.

A stage that needs state partitioned by another key than its own (the decide
stage reads the link state of devices and networks) reads it from a view. The
copy follows the changelog with ``read_committed``, so it never shows what an
aborted transaction wrote; it trails the writer by the writer's commit and one
fetch. At start-up the worker reads every view to the end before it handles a
message.

The rows a view reads at start-up are also kept per changelog partition, once
(:meth:`Views.take_seeds`): the worker's first tasks own partitions of the same
tables and would otherwise read them through the broker a second time; they
start from these rows at the view's position and read only the changelog after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import TopicPartition

from app.kafkaio import seek_to_first

log = logging.getLogger(__name__)


class Views:
    """The rows of every view, by table name, filled and then followed by one reader."""

    def __init__(self, reader: Any, changelogs: dict[str, str], *, partitions: int) -> None:
        self.reader = reader
        self.partitions = partitions  # of every changelog (the worker checked at start-up)
        self.changelogs = changelogs  # table name -> changelog topic
        self.rows: dict[str, dict[bytes, bytes]] = {name: {} for name in changelogs}
        self.table_of_topic = {topic: name for name, topic in changelogs.items()}
        self.records = 0
        self._following: asyncio.Task[None] | None = None
        # While loading: every changelog partition's rows apart, and where they end.
        self._seeding = False
        self._seeds: dict[TopicPartition, dict[bytes, bytes]] = {}
        self._seed_ends: dict[TopicPartition, int] = {}

    async def load(self) -> int:
        """Read every view's changelog to its end; return how many records were read."""
        if not self.changelogs:
            return 0
        partitions = [
            TopicPartition(topic, p)
            for topic in self.changelogs.values()
            for p in range(self.partitions)
        ]
        self.reader.assign(partitions)
        ends = await self.reader.end_offsets(partitions)
        await seek_to_first(self.reader, partitions)
        pending = {tp for tp in partitions if ends[tp] > await self.reader.position(tp)}
        self._seeding = True
        self._seeds = {tp: {} for tp in partitions}
        try:
            while pending:
                batches = await self.reader.getmany(*pending, timeout_ms=500, max_records=10_000)
                self._apply(batches)
                for tp in list(pending):
                    if await self.reader.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            self._seeding = False
        self._seed_ends = {tp: await self.reader.position(tp) for tp in partitions}
        return self.records

    def take_seeds(self) -> dict[TopicPartition, tuple[dict[bytes, bytes], int]]:
        """Each changelog partition's rows as the start-up load read them, and the offset
        they are complete up to (exclusive); given once, then forgotten (they are a copy
        of the view's rows, kept only until the first tasks are restored)."""
        seeds = {tp: (rows, self._seed_ends[tp]) for tp, rows in self._seeds.items()}
        self._seeds, self._seed_ends = {}, {}
        return seeds

    def follow(self) -> None:
        """Keep following the changelogs in the background."""
        self._following = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                self._apply(await self.reader.getmany(timeout_ms=1000, max_records=10_000))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker is away: the view waits, then reads on
                log.warning("view.read_failed error=%r", error)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    def _apply(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in batches.items():
            targets = [self.rows[self.table_of_topic[tp.topic]]]
            if self._seeding:
                targets.append(self._seeds[tp])
            for rows in targets:
                for message in messages:
                    if message.key is None:
                        continue
                    if message.value is None:
                        rows.pop(message.key, None)
                    else:
                        rows[message.key] = message.value
            self.records += len(messages)
