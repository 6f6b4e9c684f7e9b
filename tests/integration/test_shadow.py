"""A shadow program on the real broker: a worker runs a challenger beside the live
program, and the live decisions are byte for byte what the same worker decides
without it.

``test_replay_matches_live`` shows that replaying each partition's events with the
facts their decisions recorded gives a worker's decisions byte for byte, and that
replay here runs without a shadow. So a worker with a shadow whose live decisions
equal that replay decided exactly as it would have without one. The shadow's own
decisions must equal the same replay's shadow decisions: it is as deterministic and
auditable as the live program.
"""

from __future__ import annotations

import dataclasses
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.assembly import build_engine, load_program_setting
from app.contract.records import decision_id_for
from app.decisioning.engine import Engine
from app.fraud import LinkFacts
from app.fraud.signals import RelatedNote
from app.kafkaio import event_routes, produce, read
from app.pipeline import CONTROL_TYPES
from app.replay import replay_decide_log
from app.settings import Settings
from harness.challenger import write_challenger
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from tests.integration.test_replay_matches_live import read_all, shared_device

pytestmark = pytest.mark.kafka


async def read_until(settings: Settings, topic: str, count: int) -> dict[str, bytes]:
    """``count`` records of ``topic`` by decision id (read committed)."""
    found: dict[str, bytes] = {}
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, [topic], idle_timeout_s=20.0)
    async with aclosing(records):
        async for record in records:
            found[orjson.loads(record.value)["decision_id"]] = record.value
            if len(found) == count:
                break
    return found


async def test_a_shadow_beside_the_live_program_changes_no_live_byte(
    kafka_settings: Settings,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    challenger = write_challenger(kafka_settings.program, tmp_path)
    settings = dataclasses.replace(kafka_settings, shadow_program=str(challenger))
    worker: WorkerProcess = start_worker(settings, tmp_path / "worker.log")
    worker.wait_ready(timeout_s=120)

    simulator = EventSimulator(
        SimulatorConfig(users=40, seed=22, program=settings.program, events_per_second=0.004)
    )
    lines: list[bytes] = []
    while len(lines) < 300:
        line = simulator.next_message()
        kind = orjson.loads(line)["type"]
        if not kind.startswith("reward_") and kind not in CONTROL_TYPES:
            lines.append(line)
    lines[150:150] = shared_device(simulator.config.start_ms + 150 * 250_000)
    await produce(
        settings.bootstrap_servers, settings.topic_events, lines, routes=event_routes(settings)
    )
    live = await read_until(settings, settings.topic_decisions, len(lines))
    shadow = await read_until(settings, settings.topic_shadow_decisions, len(lines))
    assert len(live) == len(shadow) == len(lines)

    # Each partition's events in its order, with what each live decision was given.
    events = await read_all(settings, settings.topic_events)
    events.sort(key=lambda record: (record.partition, record.offset))
    engine = build_engine(settings)
    log: list[tuple[int, bytes, tuple[LinkFacts, ...], tuple[RelatedNote, ...]]] = []
    for record in events:
        event = orjson.loads(record.value)
        decision = orjson.loads(
            live[decision_id_for(engine.program.id, event["user_id"], event["event_id"])]
        )
        facts = tuple(LinkFacts.from_document(document) for document in decision["links"])
        notes = tuple(RelatedNote(**document) for document in decision["related"])
        log.append((record.partition, record.value, facts, notes))

    def replayed(shadow_engine: Engine | None) -> dict[str, bytes]:
        return {
            orjson.loads(value)["decision_id"]: value
            for value in replay_decide_log(
                build_engine(settings),
                log,
                max_event_bytes=settings.max_event_bytes,
                state_ttl_ms=settings.state_ttl_ms,
                shadow=shadow_engine,
            )
            if b'"kind":"decision"' in value or b'"kind":"shadow_decision"' in value
        }

    alone = replayed(None)
    assert live == alone, first_difference(live, alone)

    # The shadow decided every event, under its own ids, exactly as replay decides it.
    challenger_program = load_program_setting(str(challenger))
    both = replayed(build_engine(settings, program=str(challenger)))
    offline_shadow = {k: v for k, v in both.items() if b'"kind":"shadow_decision"' in v}
    assert shadow == offline_shadow, first_difference(shadow, offline_shadow)
    documents = [orjson.loads(value) for value in shadow.values()]
    assert {d["program"] for d in documents} == {challenger_program.id}
    assert not set(shadow) & set(live)
    assert any(d["status"] == "granted" for d in documents)


def first_difference(found: dict[str, bytes], expected: dict[str, bytes]) -> str:
    differing = sorted(set(found) ^ set(expected)) or sorted(
        k for k in found if found[k] != expected.get(k)
    )
    if not differing:
        return ""
    first = differing[0]
    return (
        f"{len(differing)} records differ; first, live then offline:\n"
        f"{found.get(first)!r}\n{expected.get(first)!r}"
    )
