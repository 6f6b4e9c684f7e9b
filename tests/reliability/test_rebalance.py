"""Two workers and a rebalance mid-stream: a second worker joins and takes half the
partitions, then the first is killed and the second takes them all. Still one decision
per event, each published once, and budgets exact."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from app import localkafka
from app.settings import Settings
from app.workerproc import WorkerProcess
from tests.reliability.helpers import assert_exactly_once, produce_paced, simulated_stream

pytestmark = [pytest.mark.kafka]


async def test_rebalance_mid_stream_keeps_every_decision_once(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    lines = simulated_stream(kafka_settings, events=2_000, users=250, seed=43)
    first = start_worker(kafka_settings, tmp_path / "first.log")
    await asyncio.to_thread(first.wait_ready, 120)
    producing = asyncio.create_task(
        produce_paced(
            kafka_settings.bootstrap_servers, kafka_settings.topic_events, lines, per_second=40
        )
    )
    await asyncio.sleep(5)
    second_settings = dataclasses.replace(kafka_settings, web_port=localkafka.free_port())
    second = start_worker(second_settings, tmp_path / "second.log")
    await asyncio.to_thread(second.wait_ready, 120)
    await asyncio.sleep(8)
    assert not producing.done(), "the stream ended before the kill; slow the pace"
    first.kill()
    await producing
    try:
        await assert_exactly_once(kafka_settings, lines)
    finally:
        second.stop()
    # Both workers really shared the stream, and the second took the first's partitions.
    shared = (tmp_path / "second.log").read_text().count("tasks.assigned")
    assert shared >= 2
