"""The broker restarts in the middle of a stream: the worker reconnects, nothing is lost,
nothing is decided twice, budgets stay exact."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app import localkafka
from app.settings import Settings
from app.workerproc import WorkerProcess
from tests.conftest import base_settings, start_broker_or_fail
from tests.reliability.helpers import assert_exactly_once, produce_paced, simulated_stream

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Path, localkafka.BrokerInfo]]:
    """A broker of this test alone: restarting the session's would disturb other tests."""
    home = tmp_path / "kafka"
    info = start_broker_or_fail(home)
    yield home, info
    localkafka.stop(home)


async def test_broker_restart_mid_stream_loses_nothing(
    own_broker: tuple[Path, localkafka.BrokerInfo],
    test_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    home, info = own_broker
    settings = dataclasses.replace(test_settings, bootstrap_servers=info.bootstrap_servers)
    lines = simulated_stream(settings, events=1_500, users=200, seed=41)
    worker = start_worker(settings, tmp_path / "worker.log")
    await asyncio.to_thread(worker.wait_ready, 120)
    producing = asyncio.create_task(
        produce_paced(settings.bootstrap_servers, settings.topic_events, lines, per_second=50)
    )
    await asyncio.sleep(8)
    assert not producing.done()
    base = base_settings()
    await asyncio.to_thread(localkafka.stop, home)
    await asyncio.sleep(2)
    await asyncio.to_thread(
        localkafka.start,
        home,
        cache_dir=base.cache_dir,
        version=base.kafka_version,
        port=info.port,
    )
    await producing
    try:
        await assert_exactly_once(settings, lines)
        assert worker.process is not None
        assert worker.process.poll() is None, "the worker died with the broker"
    finally:
        worker.stop()
