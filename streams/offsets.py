"""Offset commits of the tasks with ``at_least_once``, gathered into few requests.

Without transactions each task commits its input offsets through the group
consumer after its records are delivered. aiokafka sends one request at a time
per consumer (its coordinator holds a lock around each), so four tasks that end
their commits together would wait four round trips, the last one for all of
them. Here a commit asked for while one is in flight joins the next request,
which leaves as soon as the one in flight is answered: however many tasks ask,
at most two requests stand between a task and its committed offsets.

The tasks own disjoint partitions, so offsets gathered into one request never
meet; a later offset of a partition replaces an earlier one not yet sent (a
task's offsets only move forward). A request that fails fails every commit
that went into it: each of those tasks is rewound and handles its records
again, as at_least_once allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

Commit = Callable[[dict[TopicPartition, int]], Awaitable[None]]


class OffsetCommits:
    """Commits offsets through ``commit`` (the consumer's), gathering those asked for
    while a request is in flight into the next one."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._next: dict[TopicPartition, int] = {}
        self._next_done: asyncio.Future[None] | None = None
        self._sending: asyncio.Task[None] | None = None
        self.requests = 0  # requests sent: fewer than the commits asked for under load

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Return once ``offsets`` are committed; raise what their request raised."""
        self._next.update(offsets)
        if self._next_done is None:
            self._next_done = asyncio.get_running_loop().create_future()
        done = self._next_done
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_all())
        # A caller cancelled while it waits leaves the request to the others in it.
        await asyncio.shield(done)

    async def _send_all(self) -> None:
        while self._next:
            offsets, self._next = self._next, {}
            done, self._next_done = self._next_done, None
            assert done is not None
            self.requests += 1
            try:
                await self._commit(offsets)
            except asyncio.CancelledError:  # shutting down: no commit is left waiting
                for waiting in (done, self._next_done):
                    if waiting is not None and not waiting.done():
                        waiting.cancel()
                self._next, self._next_done = {}, None
                raise
            except Exception as error:  # every commit in the request learns of it
                if not done.done():
                    done.set_exception(error)
                    done.exception()  # retrieved here too: a caller may be gone
            else:
                if not done.done():
                    done.set_result(None)
