"""Crashes on the real broker: a worker killed with SIGKILL mid-stream, several times, and
restarted each time, must give every event exactly one decision, published once;
count each event once in its user's state; and keep its budgets exact to the unit.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from app.workerproc import WorkerProcess
from tests.reliability.helpers import assert_exactly_once, produce_paced, simulated_stream

pytestmark = [pytest.mark.kafka]

EVENTS = 2_000
KILLS = 3


async def test_sigkill_mid_stream_loses_no_decision_and_double_spends_nothing(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    lines = simulated_stream(kafka_settings, events=EVENTS, users=300, seed=31)
    rng = random.Random(5)
    log = tmp_path / "worker.log"
    worker = start_worker(kafka_settings, log)
    await asyncio.to_thread(worker.wait_ready, 120)
    # About 65 s of stream: every kill lands while events are still arriving.
    producing = asyncio.create_task(
        produce_paced(
            kafka_settings.bootstrap_servers, kafka_settings.topic_events, lines, per_second=30
        )
    )
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(1.0, 6.0))
        worker.kill()
        worker = start_worker(kafka_settings, log)
        await asyncio.to_thread(worker.wait_ready, 120)
    assert not producing.done(), "the stream ended before the last kill; slow the pace"
    await producing
    try:
        await assert_exactly_once(kafka_settings, lines)
    finally:
        worker.stop()
    # The kills really interrupted work: each restart restored state that was committed.
    # (A rebalance that only confirms the worker's tasks logs nothing: not a restore.)
    lines = log.read_text().splitlines()
    restores = [line for line in lines if "tasks.assigned" in line]
    assert len(restores) == KILLS + 1
