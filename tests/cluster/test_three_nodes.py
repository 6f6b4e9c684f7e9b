"""A three-node KRaft cluster on loopback (replication 3, min.insync.replicas 2, acks all):
one node, the leader of a partition the worker writes its decisions to, is SIGKILLed in
the middle of the whole traffic (answers to the worker's decisions, fraud labels, consent
changes, attacks) and stays down. The worker never dies: every event is decided once and
published once, budgets stay exact to the cent, no reward is granted twice, and its
models end up with exactly one learning step per answer its committed decisions learned.
Slow (three brokers), so it runs in `make test-cluster`, not `make test`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess
from tests.conftest import base_settings, fail_or_skip
from tests.reliability.helpers import (
    Lives,
    WholeTraffic,
    assert_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

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


async def leader_port(bootstrap_servers: str, topic: str, partition: int) -> int:
    """The port of the node that leads ``topic``'s ``partition`` now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        cluster = consumer._client.cluster
        for _ in range(60):
            await consumer._client.force_metadata_update()
            leader = cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is not None and leader >= 0:
                broker = cluster.broker_metadata(leader)
                assert broker is not None, leader
                return int(broker.port)
            await asyncio.sleep(0.5)
        raise AssertionError(f"{topic}[{partition}] has no leader")
    finally:
        await consumer.stop()


async def test_losing_one_of_three_nodes_mid_stream_loses_nothing(
    cluster: list[localkafka.BrokerInfo],
    test_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(
        with_own_control_topics(test_settings),
        bootstrap_servers=",".join(node.bootstrap_servers for node in cluster),
        replication_factor=3,
        checkpoint_interval_s=1,
    )
    base = whole_traffic_base(settings, events=1_500, users=200, seed=53)
    lives = Lives(start_worker)
    worker = lives.start(settings, tmp_path / "worker.log")
    await asyncio.to_thread(worker.wait_ready, 180)
    # Ready is not yet assigned: on three loaded nodes the group's coordinator may take
    # seconds to come up, and the node must die while the worker is deciding.
    for _ in range(360):
        if "tasks.assigned" in lives.lives[0].log:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"the worker was never given its tasks:\n{worker.log_tail()}")
    # The worker made its topics: kill a node that leads one of its decisions partitions
    # (and so takes part in its transactions), not one that may only hold followers.
    port = await leader_port(settings.bootstrap_servers, settings.topic_decisions, 0)
    victim = next(node for node in cluster if node.port == port)
    # About 40 s of base stream: the node dies with events, answers and labels on the way.
    async with WholeTraffic(settings, base, per_second=40, seed=53) as traffic:
        await asyncio.sleep(10)
        assert traffic.base_task is not None
        assert not traffic.base_task.done(), "the stream ended before the kill; slow it"
        assert traffic.decided, "nothing was decided before the kill"
        os.kill(victim.pid, signal.SIGKILL)
        print(f"killed node {victim.home} with {len(traffic.decided)} messages decided")
        # Two nodes left: leaders move, min.insync.replicas 2 still accepts acks=all.
        await traffic.settle(timeout_s=600)
    assert localkafka.status(Path(victim.home)) is None, "the killed node came back"
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker died with the node"
    lives.stop(worker)
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())
    # The traffic did what it is for: rewards held and released, answers learned.
    assert report.releases, report.summary()
    assert report.learned > 0, report.summary()
