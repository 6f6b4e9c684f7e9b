"""Restarts from local snapshots under the whole traffic: a worker that keeps its data
directory reads only the changelogs' tail, and what it decides is exactly what a full
restore would have given, even when it is killed between two snapshots.

Run by ``make test-snapshot-restart`` (CI runs it), apart from ``make test``: three
restarts under the whole traffic take about a minute and a half."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from harness.workerproc import WorkerProcess
from tests.reliability.helpers import (
    Lives,
    WholeTraffic,
    assert_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

pytestmark = [pytest.mark.kafka, pytest.mark.snapshot_restart]

EVENTS = 1_500


def restores(log: str) -> list[tuple[int, int]]:
    """(records read, tables seeded from snapshots) of each assignment that gave the worker
    tasks (a later rebalance that only confirms them logs nothing)."""
    pattern = r"tasks\.assigned count=(\d+) tasks=\S+ restored_records=(\d+) from_snapshots=(\d+)"
    found = re.findall(pattern, log)
    return [(int(r), int(s)) for count, r, s in found if int(count)]


async def test_restarts_from_snapshots_read_less_and_decide_exactly_once(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(
        with_own_control_topics(kafka_settings), snapshot_interval_s=2, checkpoint_interval_s=1
    )
    base = whole_traffic_base(settings, events=EVENTS, users=200, seed=57)
    lives = Lives(start_worker)
    worker = lives.start(settings, tmp_path / "life-0.log")
    await asyncio.to_thread(worker.wait_ready, 120)
    # About 60 s of base stream. Killed between snapshots (state changed since the last
    # one), stopped gracefully (a snapshot on the way out), killed again; events arrive
    # all along.
    async with WholeTraffic(settings, base, per_second=25, seed=57) as traffic:
        for life, stop in enumerate((lives.kill, lives.stop, lives.kill), start=1):
            await asyncio.sleep(4.0)
            stop(worker)
            worker = lives.start(settings, tmp_path / f"life-{life}.log")
            await asyncio.to_thread(worker.wait_ready, 120)
        assert traffic.base_task is not None
        assert not traffic.base_task.done(), "the stream ended before the last restart; slow it"
        await traffic.settle()
    lives.stop(worker)
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())
    first, *restarts = [found for life in lives.lives for found in restores(life.log)]
    assert first[1] == 0  # nothing on disk yet
    assert all(seeded > 0 for _, seeded in restarts), restarts
    assert list((settings.data_dir / "snapshots" / settings.app_id).glob("*.snapshot"))
