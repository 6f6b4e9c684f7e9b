"""The broker restarts in the middle of the whole traffic: the worker reconnects, nothing is
lost, nothing is decided twice, budgets stay exact, and, as the worker never dies, its
models end up with exactly one learning step per answer its committed decisions learned
(transactions aborted by the outage taught nothing; the batches done again taught once).

If this fails with "decisions published more than once": that was traced (2026-12-02) to a
transaction the outage left hanging. The broker accepted a task's records while its
transaction coordinator, shutting down, failed to log the partition as part of the
transaction (NOT_COORDINATOR); after the restart nothing aborted them, and the task's next
transaction (same producer id, next epoch) committed them with its own marker, so a batch
the worker had redone shows twice to read_committed consumers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess
from tests.conftest import base_settings, start_broker_or_fail
from tests.reliability.helpers import (
    Lives,
    WholeTraffic,
    assert_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Path, localkafka.BrokerInfo]]:
    """A broker of this test alone: restarting the session's would disturb other tests."""
    home = tmp_path / "kafka"
    info = start_broker_or_fail(home)
    yield home, info
    localkafka.stop(home, discard=True)


async def test_broker_restart_mid_stream_loses_nothing(
    own_broker: tuple[Path, localkafka.BrokerInfo],
    test_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    home, info = own_broker
    settings = dataclasses.replace(
        with_own_control_topics(test_settings),
        bootstrap_servers=info.bootstrap_servers,
        checkpoint_interval_s=1,
    )
    base = whole_traffic_base(settings, events=1_500, users=200, seed=41)
    lives = Lives(start_worker)
    worker = lives.start(settings, tmp_path / "worker.log")
    await asyncio.to_thread(worker.wait_ready, 120)
    async with WholeTraffic(settings, base, per_second=50, seed=41) as traffic:
        await asyncio.sleep(8)
        assert traffic.base_task is not None
        assert not traffic.base_task.done()
        defaults = base_settings()
        await asyncio.to_thread(localkafka.stop, home)
        await asyncio.sleep(2)
        await asyncio.to_thread(
            localkafka.start,
            home,
            cache_dir=defaults.cache_dir,
            version=defaults.kafka_version,
            port=info.port,
        )
        await traffic.settle()
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker died with the broker"
    lives.stop(worker)
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())
    assert report.learned > 0, report.summary()
