"""The transactional producers a worker's tasks write with, and the fencing of earlier
writers: each producer has fenced every earlier one of its id and closed what they left
open before it writes, and a new owner of inputs waits for (or ends) a dead worker's
transaction over them before it reads their state.

One job: who may write, and that nobody else still does. The runtime decides which
transactional id a task uses (one per task, or the worker's one producer) and when to
take or renew one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition

from streams.clients import Clients
from streams.fencing import Member

log = logging.getLogger(__name__)

# With one producer per worker: how long a new owner waits for a transaction's pending
# offsets to end before it fences their committer (a transaction ends within tens of
# milliseconds; one open this long most likely belongs to a worker that died).
FENCE_AFTER_S = 2.0


class Writers:
    """Starts fenced producers for a group's tasks (or its workers' one producer each)."""

    def __init__(
        self,
        clients: Clients,
        group_id: str,
        *,
        partitions: int,
        outputs: list[str],
        changelogs: list[str],
    ) -> None:
        self.clients = clients
        self.group_id = group_id
        self.partitions = partitions  # of every output topic and changelog
        self.outputs = outputs  # the output topics a task's transactions write
        self.changelogs = changelogs  # the changelogs of the topology's tables

    def task_id(self, partition: int) -> str:
        """The transactional id of the task of ``partition`` (one producer per task)."""
        return f"{self.group_id}-task-{partition}"

    def worker_id(self, worker: str) -> str:
        """The transactional id of worker ``worker``'s one producer."""
        return f"{self.group_id}-worker-{worker}"

    def writable(self, partition: int | None) -> list[tuple[str, int]]:
        """Every (topic, partition) a task's transaction may write: each output topic's
        partitions (outputs are placed by key) and its own partition of each changelog
        (None: every partition of each, for the worker's one producer)."""
        every = range(self.partitions)
        own = every if partition is None else (partition,)
        return [(topic, p) for topic in self.outputs for p in every] + [
            (changelog, p) for changelog in self.changelogs for p in own
        ]

    async def producer(
        self, transactional_id: str, partition: int | None, *, member: Member | None = None
    ) -> Any:
        """A started producer for ``transactional_id`` (writing ``partition``'s task, or
        None: every task's) that has fenced every earlier one and closed whatever an
        earlier one left open.

        start() initialises the transactional id: the broker aborts the previous producer's
        open transaction and fences it for good. If the transaction coordinator failed over
        while that transaction was open, it may not know every partition the transaction
        wrote, and records of it stay open there; the next commit of this id would then
        commit them too (seen after a broker restart: a decision published twice). So the
        new producer first runs one transaction over every partition a task may write and
        aborts it: its abort markers close anything left open there.
        """
        producer = (
            self.clients.producer(transactional_id)
            if member is None
            else self.clients.producer(transactional_id, member=member)
        )
        try:
            await producer.start()
            await producer.begin_transaction()
            try:
                for topic, target in self.writable(partition):
                    await producer.send(topic, b"", key=b"rewardstream.close", partition=target)
            finally:
                await producer.abort_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def stable_offsets(
        self, consumer: Any, inputs: list[TopicPartition], *, own_id: str
    ) -> Mapping[TopicPartition, int | None]:
        """The committed offsets of ``inputs`` once no transaction's offsets for them are
        pending. One still pending after :data:`FENCE_AFTER_S` most likely belongs to a
        worker that died mid-round: its producer's id (written beside the offsets it last
        committed) is taken, which aborts that transaction at once instead of at the
        coordinator's timeout. A live worker fenced so only recovers its tasks; ``own_id``
        is never taken."""
        group = self.group_id
        waiting = asyncio.ensure_future(self.clients.stable_offsets(consumer, group, inputs))
        done, _ = await asyncio.wait({waiting}, timeout=FENCE_AFTER_S)
        if not done:
            for committer in sorted(await self.clients.committers(consumer, group, inputs)):
                if committer != own_id:
                    await self.fence(committer)
        return await waiting

    async def fence(self, transactional_id: str) -> None:
        """Take ``transactional_id``: the coordinator aborts its open transaction and the
        producer that holds it can write no more."""
        log.warning(
            "producer.fenced id=%s: its open transaction held offsets this worker takes",
            transactional_id,
        )
        producer = self.clients.producer(transactional_id)
        try:
            await producer.start()
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()
