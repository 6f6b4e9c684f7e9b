"""Topic checks that must not mistake a topic still being created for a wrong one."""

from __future__ import annotations

from typing import Any

import pytest

from app.kafkaio import TopicError, TopicRequest, _check_partitions


class SlowMetadataAdmin:
    """Describes a new topic as it appears on a real broker: first empty, then whole."""

    def __init__(self, partitions: int, empty_answers: int) -> None:
        self.partitions, self.empty_answers, self.calls = partitions, empty_answers, 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        visible = self.calls > self.empty_answers
        return [
            {
                "topic": name,
                "error_code": 0 if visible else 3,
                "partitions": [{"partition": p} for p in range(self.partitions)] if visible else [],
            }
            for name in names
        ]


async def test_a_topic_still_being_created_is_waited_for() -> None:
    admin = SlowMetadataAdmin(partitions=4, empty_answers=3)
    await _check_partitions(admin, [TopicRequest("events", 4, 1)], timeout_s=5)
    assert admin.calls == 4


async def test_a_real_mismatch_is_still_an_error_naming_the_setting() -> None:
    admin = SlowMetadataAdmin(partitions=1, empty_answers=0)
    with pytest.raises(TopicError, match="REWARDSTREAM_PARTITIONS"):
        await _check_partitions(admin, [TopicRequest("events", 4, 1)], timeout_s=5)
