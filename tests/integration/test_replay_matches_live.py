"""Offline replay and the live worker are the same engine: same input log, same decisions.

The decide stage's input is the ``linked`` topic: events after the link stage, in
the order they met in each user partition, with their link facts. Replaying that
log offline must give every live decision (ids, rewards, budgets left per
partition, propensities, reasons, sentences) byte for byte. Without outcome
events nothing is learned, so how partitions interleave cannot matter.
"""

from __future__ import annotations

from contextlib import aclosing

import orjson
import pytest

from app.assembly import build_engine
from app.kafkaio import produce, read
from app.replay import replay_decide_log
from app.settings import Settings
from app.simulation import EventSimulator, SimulatorConfig
from app.workerproc import WorkerProcess

pytestmark = pytest.mark.kafka


async def test_replay_reproduces_the_live_decisions(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    # A day of traffic (event time), so accounts get past the program's pending period.
    simulator = EventSimulator(
        SimulatorConfig(users=40, seed=21, program=kafka_settings.program, events_per_second=0.004)
    )
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

    linked = kafka_settings.topic_names()["linked"]
    log: list[tuple[int, bytes]] = []
    async for record in read(kafka_settings.bootstrap_servers, [linked], idle_timeout_s=3.0):
        log.append((record.partition, record.value))
    offline = {
        orjson.loads(value)["decision_id"]: value
        for value in replay_decide_log(
            build_engine(kafka_settings),
            log,
            max_event_bytes=kafka_settings.max_event_bytes,
            state_ttl_ms=kafka_settings.state_ttl_ms,
        )
        if b'"kind":"decision"' in value
    }
    assert len(live) == len(lines)
    differing = sorted(k for k in live if live[k] != offline.get(k))
    first = differing[0] if differing else None
    assert not differing, (
        f"{len(differing)} decisions differ; first, live then offline:\n"
        f"{live.get(first or '')!r}\n{offline.get(first or '')!r}"
    )
    granted = [orjson.loads(v) for v in live.values() if b'"status":"granted"' in v]
    assert granted, "the comparison must include rewards, not only refusals"
