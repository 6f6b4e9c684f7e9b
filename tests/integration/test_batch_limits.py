"""A topic the worker writes may accept smaller record batches than the worker's
producers would send: the worker reads every topic's ``max.message.bytes`` at start and
keeps its batches within the smallest, so no commit is refused for its size."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from app.kafkaio import ensure_topics, event_routes, message_limits, produce, topic_requests
from app.settings import Settings
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from tests.integration.test_data_path import outputs

pytestmark = pytest.mark.kafka

SMALL_LIMIT = 65_536


async def test_a_decisions_topic_taking_small_batches_still_gets_every_decision(
    kafka_settings: Settings,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    tmp_path: Path,
) -> None:
    servers = kafka_settings.bootstrap_servers
    # Every topic as an operator made them before the worker, the decisions topic with a
    # limit of its own.
    wanted = topic_requests(kafka_settings)
    decisions = next(t for t in wanted if t.name == kafka_settings.topic_decisions)
    small = {**decisions.configs, "max.message.bytes": str(SMALL_LIMIT)}
    await ensure_topics(
        servers, [dataclasses.replace(t, configs=small) if t is decisions else t for t in wanted]
    )
    limits = await message_limits(servers, [decisions.name, kafka_settings.topic_events])
    assert limits[decisions.name] == SMALL_LIMIT
    assert limits[kafka_settings.topic_events] > SMALL_LIMIT  # the broker's default
    # A backlog, so that the first commits carry far more than 64 KiB of decisions a
    # partition (about 1 KB each): in 512 KiB batches the broker would refuse every one.
    simulator = EventSimulator(SimulatorConfig(users=200, seed=5, program=kafka_settings.program))
    valid = [simulator.next_message() for _ in range(1_500)]
    await produce(servers, kafka_settings.topic_events, valid, routes=event_routes(kafka_settings))

    worker = start_worker(kafka_settings, tmp_path / "worker.log")
    worker.wait_ready(timeout_s=120)
    received = await outputs(kafka_settings, expected=len(valid))

    decided = [r for r in received if r.topic == kafka_settings.topic_decisions]
    assert len(decided) == len(valid)
    log = worker.log_path.read_text()
    assert f"producer.batch_lowered bytes={SMALL_LIMIT - 1024} topic={decisions.name}" in log
    assert "transaction.aborted" not in log
