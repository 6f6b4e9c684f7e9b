"""Two workers and a rebalance in the middle of the whole traffic: a second worker joins
and takes half the partitions, then the first is killed and the second takes them all.
Still one decision per event, each published once, budgets exact, no reward granted
twice; and the survivor, stopped cleanly, checkpoints exactly what it started from plus
one learning step per answer learned in the decisions it committed."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess
from tests.reliability.helpers import (
    Lives,
    WholeTraffic,
    assert_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

pytestmark = [pytest.mark.kafka]


# One producer per task, or one per worker: then the killed worker's open transaction
# is ended by the survivor fencing its producer's id, read beside the offsets it
# committed (streams.writers.Writers.stable_offsets).
@pytest.mark.parametrize(
    "producers", [pytest.param("task", marks=pytest.mark.producers_per_task), "worker"]
)
async def test_rebalance_mid_stream_keeps_every_decision_once(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    producers: str,
) -> None:
    settings = dataclasses.replace(
        with_own_control_topics(kafka_settings),
        checkpoint_interval_s=1,
        transactional_producers=producers,
        worker_id="first",
    )
    base = whole_traffic_base(settings, events=2_000, users=250, seed=43)
    lives = Lives(start_worker)
    first = lives.start(settings, tmp_path / "first.log")
    await asyncio.to_thread(first.wait_ready, 120)
    async with WholeTraffic(settings, base, per_second=40, seed=43) as traffic:
        await asyncio.sleep(5)
        second_settings = dataclasses.replace(
            settings, web_port=localkafka.free_port(), worker_id="second"
        )
        second = lives.start(second_settings, tmp_path / "second.log")
        await asyncio.to_thread(second.wait_ready, 120)
        await asyncio.sleep(8)
        assert traffic.base_task is not None
        assert not traffic.base_task.done(), "the stream ended before the kill; slow the pace"
        lives.kill(first)
        await traffic.settle()
    lives.stop(second)
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())
    # Both workers really shared the stream, and the second took the first's partitions.
    shared = (tmp_path / "second.log").read_text().count("tasks.assigned")
    assert shared >= 2
    assert report.per_life["first"][1] > 0, report.summary()  # both learned
    assert report.per_life["second"][1] > 0, report.summary()
