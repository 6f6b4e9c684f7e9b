"""Restarts from local snapshots: a worker that keeps its data directory reads only the
changelogs' tail, and what it decides is exactly what a full restore would have given,
even when it is killed between two snapshots."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from app.workerproc import WorkerProcess
from tests.reliability.helpers import assert_exactly_once, produce_paced, simulated_stream

pytestmark = [pytest.mark.kafka]

EVENTS = 1_500


def restores(log: Path) -> list[tuple[int, int]]:
    """(records read, tables seeded from snapshots) of each assignment that gave the worker
    tasks (a later rebalance that only confirms them logs nothing)."""
    pattern = r"tasks\.assigned count=(\d+) tasks=\S+ restored_records=(\d+) from_snapshots=(\d+)"
    found = re.findall(pattern, log.read_text())
    return [(int(r), int(s)) for count, r, s in found if int(count)]


async def test_restarts_from_snapshots_read_less_and_decide_exactly_once(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(kafka_settings, snapshot_interval_s=2)
    lines = simulated_stream(settings, events=EVENTS, users=200, seed=57)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    await asyncio.to_thread(worker.wait_ready, 120)
    producing = asyncio.create_task(
        produce_paced(settings.bootstrap_servers, settings.topic_events, lines, per_second=25)
    )
    # About 60 s of stream. Killed between snapshots (state changed since the last one),
    # stopped gracefully (a snapshot on the way out), killed again; events arrive all along.
    for stop in (WorkerProcess.kill, WorkerProcess.stop, WorkerProcess.kill):
        await asyncio.sleep(4.0)
        stop(worker)
        worker = start_worker(settings, log)
        await asyncio.to_thread(worker.wait_ready, 120)
    assert not producing.done(), "the stream ended before the last restart; slow the pace"
    await producing
    try:
        await assert_exactly_once(settings, lines)
    finally:
        worker.stop()
    first, *restarts = restores(log)
    assert first[1] == 0  # nothing on disk yet
    assert all(seeded > 0 for _, seeded in restarts), restarts
    assert list((settings.data_dir / "snapshots" / settings.app_id).glob("*.snapshot"))
