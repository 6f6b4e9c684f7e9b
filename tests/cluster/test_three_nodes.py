"""A three-node KRaft cluster on loopback (replication 3, min.insync.replicas 2, acks all):
one node is SIGKILLed mid-stream, and still every event is decided once, counted once and
charged once. Slow (three brokers), so it runs in `make test-cluster`, not `make test`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app import localkafka
from app.settings import Settings
from app.workerproc import WorkerProcess
from tests.conftest import base_settings, fail_or_skip
from tests.reliability.helpers import assert_exactly_once, produce_paced, simulated_stream

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[localkafka.BrokerInfo]]:
    settings = base_settings()
    try:
        nodes = localkafka.start_cluster(
            tmp_path / "cluster",
            nodes=3,
            cache_dir=settings.cache_dir,
            version=settings.kafka_version,
            heap="384m",
        )
    except localkafka.BrokerError as error:
        fail_or_skip(f"the Kafka cluster could not start: {error}")
        raise
    yield nodes
    for node in nodes:
        localkafka.stop(Path(node.home))


async def test_losing_one_of_three_nodes_mid_stream_loses_nothing(
    cluster: list[localkafka.BrokerInfo],
    test_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(
        test_settings,
        bootstrap_servers=",".join(node.bootstrap_servers for node in cluster),
        replication_factor=3,
    )
    lines = simulated_stream(settings, events=1_500, users=200, seed=53)
    worker = start_worker(settings, tmp_path / "worker.log")
    await asyncio.to_thread(worker.wait_ready, 180)
    producing = asyncio.create_task(
        produce_paced(settings.bootstrap_servers, settings.topic_events, lines, per_second=40)
    )
    await asyncio.sleep(10)
    assert not producing.done()
    victim = cluster[1]
    os.kill(victim.pid, signal.SIGKILL)
    await producing
    try:
        await assert_exactly_once(settings, lines)
        assert worker.process is not None
        assert worker.process.poll() is None, "the worker died with the node"
    finally:
        worker.stop()
