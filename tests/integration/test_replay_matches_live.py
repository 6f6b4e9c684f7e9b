"""Offline replay and the live worker are the same engine: same events, same decisions.

Without outcome events nothing is learned, so the order in which partitions are
interleaved cannot matter, and every decision (ids, rewards, budgets spent per
partition, propensities, reasons, sentences) must be byte-for-byte identical.
"""

from __future__ import annotations

from contextlib import aclosing

import orjson
import pytest

from app.assembly import build_engine
from app.kafkaio import produce, read
from app.replay import replay
from app.settings import Settings
from app.simulation import EventSimulator, SimulatorConfig
from app.workerproc import WorkerProcess

pytestmark = pytest.mark.kafka


async def test_replay_reproduces_the_live_decisions(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    simulator = EventSimulator(SimulatorConfig(users=40, seed=21, program=kafka_settings.program))
    lines = []
    while len(lines) < 400:
        line = simulator.next_message()
        if not orjson.loads(line)["type"].startswith("reward_"):
            lines.append(line)
    await produce(kafka_settings.bootstrap_servers, kafka_settings.topic_events, lines)
    live: dict[str, bytes] = {}
    records = read(
        kafka_settings.bootstrap_servers, [kafka_settings.topic_decisions], idle_timeout_s=20.0
    )
    async with aclosing(records):
        async for record in records:
            live[orjson.loads(record.value)["decision_id"]] = record.value
            if len(live) == len(lines):
                break

    offline = {
        orjson.loads(value)["decision_id"]: value
        for value in replay(
            build_engine(kafka_settings),
            lines,
            source_name="test",
            max_event_bytes=kafka_settings.max_event_bytes,
        )
    }
    assert len(live) == len(lines)
    assert live == offline
    granted = [orjson.loads(v) for v in live.values() if b'"status":"granted"' in v]
    assert granted, "the comparison must include rewards, not only refusals"
