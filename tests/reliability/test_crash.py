"""Crashes on the real broker: a worker killed with SIGKILL mid-stream, several times, and
restarted each time, under the whole traffic (answers to its decisions, fraud labels,
consent changes, attacks), must give every event exactly one decision, published once;
count each event once in its user's state; keep its budgets exact; never grant a reward
twice; and never let its models learn an answer twice or one that was not committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from harness.workerproc import WorkerProcess
from tests.reliability.helpers import (
    Lives,
    assert_whole_traffic,
    killed_under_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

pytestmark = [pytest.mark.kafka]

EVENTS = 2_000
KILLS = 3


# One producer per task, or one per worker (its id kept across restarts, as a
# StatefulSet's pod name keeps it, so each life fences the one before at once).
@pytest.mark.parametrize(
    "producers", [pytest.param("task", marks=pytest.mark.producers_per_task), "worker"]
)
async def test_sigkill_mid_stream_loses_no_decision_and_double_spends_nothing(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    producers: str,
) -> None:
    # Checkpoints every second: each life restores what the one before learned.
    settings = dataclasses.replace(
        with_own_control_topics(kafka_settings),
        checkpoint_interval_s=1,
        transactional_producers=producers,
        worker_id="crashing",
    )
    base = whole_traffic_base(settings, events=EVENTS, users=300, seed=31)
    lives = Lives(start_worker)
    # About 65 s of base stream: every kill lands while events are still arriving.
    traffic = await killed_under_whole_traffic(
        settings, base, lives, tmp_path, kills=KILLS, seed=31, pauses_seed=5
    )
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())
    # The kills really interrupted work: each restart restored state that was committed.
    # (A rebalance that only confirms the worker's tasks logs nothing: not a restore.)
    restores = [life for life in lives.lives if "tasks.assigned" in life.log]
    assert len(restores) == KILLS + 1
    # The traffic did what it is for: rewards held and released, answers learned.
    assert report.releases, report.summary()
    assert report.cancels, report.summary()
    assert report.learned > 0, report.summary()
