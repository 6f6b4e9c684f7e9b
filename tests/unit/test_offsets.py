"""streams.offsets: the at_least_once offset commits gathered into few requests."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from streams.offsets import OffsetCommits


def tp(partition: int) -> TopicPartition:
    return TopicPartition("in", partition)


class Coordinator:
    """Answers each request when the test says so, or fails it."""

    def __init__(self) -> None:
        self.requests: list[dict[TopicPartition, int]] = []
        self.answers: asyncio.Queue[Exception | None] = asyncio.Queue()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.requests.append(dict(offsets))
        error = await self.answers.get()
        if error is not None:
            raise error


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_commits_asked_for_during_a_request_go_together_in_the_next() -> None:
    coordinator = Coordinator()
    offsets = OffsetCommits(coordinator.commit)
    first = asyncio.ensure_future(offsets.commit({tp(0): 5}))
    await settle()
    second = asyncio.ensure_future(offsets.commit({tp(1): 3}))
    third = asyncio.ensure_future(offsets.commit({tp(1): 4, tp(2): 1}))
    await settle()
    assert coordinator.requests == [{tp(0): 5}]
    coordinator.answers.put_nowait(None)
    await first
    assert not second.done()  # its request has only just left
    coordinator.answers.put_nowait(None)
    await asyncio.gather(second, third)
    # The later offset of partition 1 replaced the earlier one not yet sent.
    assert coordinator.requests == [{tp(0): 5}, {tp(1): 4, tp(2): 1}]
    assert offsets.requests == 2


async def test_a_failed_request_fails_every_commit_in_it_and_the_next_one_goes_on() -> None:
    coordinator = Coordinator()
    offsets = OffsetCommits(coordinator.commit)
    first = asyncio.ensure_future(offsets.commit({tp(0): 5}))
    await settle()
    second = asyncio.ensure_future(offsets.commit({tp(1): 3}))
    third = asyncio.ensure_future(offsets.commit({tp(2): 1}))
    await settle()
    coordinator.answers.put_nowait(None)
    coordinator.answers.put_nowait(RuntimeError("the group rebalanced"))
    await first
    for commit in (second, third):
        with pytest.raises(RuntimeError, match="rebalanced"):
            await commit
    coordinator.answers.put_nowait(None)
    await offsets.commit({tp(1): 3})
    assert coordinator.requests[-1] == {tp(1): 3}


async def test_a_caller_cancelled_while_it_waits_leaves_the_request_to_the_others() -> None:
    coordinator = Coordinator()
    offsets = OffsetCommits(coordinator.commit)
    first = asyncio.ensure_future(offsets.commit({tp(0): 5}))
    await settle()
    gone = asyncio.ensure_future(offsets.commit({tp(1): 3}))
    stays = asyncio.ensure_future(offsets.commit({tp(2): 1}))
    await settle()
    gone.cancel()
    coordinator.answers.put_nowait(None)
    coordinator.answers.put_nowait(None)
    await asyncio.gather(first, stays)
    assert coordinator.requests == [{tp(0): 5}, {tp(1): 3, tp(2): 1}]
