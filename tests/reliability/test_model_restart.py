"""What the models learned survives a SIGKILL: after a restart the worker predicts what it
predicted before the kill, not what a cold start would."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.assembly import load_program_setting
from app.kafkaio import event_routes, produce, read
from app.settings import Settings
from app.simulation.closed_loop import ClosedLoopSimulator
from app.simulation.live import closed_loop_on_kafka
from app.workerproc import WorkerProcess

pytestmark = [pytest.mark.kafka]
PROBES = 8


def probes(prefix: str, ts: int) -> list[bytes]:
    """New users who buy alike: the same features, so the same model gives the same scores
    (only exploration, drawn per decision, may differ)."""
    return [
        orjson.dumps(
            {
                "event_id": f"{prefix}-{n}",
                "user_id": f"{prefix}-user-{n}",
                "type": "purchase",
                "amount": 80.0,
                "currency": "EUR",
                "ts": ts,
                "channel": "web",
            }
        )
        for n in range(PROBES)
    ]


async def decisions_for(settings: Settings, users: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    records = read(settings.bootstrap_servers, [settings.topic_decisions], idle_timeout_s=30.0)
    async with aclosing(records):
        async for record in records:
            document = orjson.loads(record.value)
            if document["user_id"] in users:
                found[document["user_id"]] = document
                if len(found) == len(users):
                    break
    return found


def scores(decision: dict[str, Any]) -> tuple[object, ...]:
    features = tuple(r for r in decision["reasons"] if r.startswith("feature."))
    return (decision["action"], decision["propensity"], features)


async def test_models_predict_after_a_sigkill_what_they_predicted_before(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(kafka_settings, checkpoint_interval_s=1)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    await asyncio.to_thread(worker.wait_ready, 120)
    # Users who answer their rewards: the models learn from every answer.
    start_ms = 1_780_000_000_000
    simulator = ClosedLoopSimulator(users=150, seed=47, start_ms=start_ms, days=3)
    program = load_program_setting(settings.program)
    stats = await closed_loop_on_kafka(
        settings.bootstrap_servers,
        (settings.topic_events, settings.topic_decisions),
        simulator,
        {r.id: r.kind for r in program.rewards},
        rate=400,
        total=1_500,
        show_progress=False,
        routes=event_routes(settings),
    )
    assert stats.redeemed > 0
    last_ts = start_ms + 4 * 86_400_000

    before_lines = probes("before", last_ts + 60_000)
    await produce(settings.bootstrap_servers, settings.topic_events, before_lines)
    before = await decisions_for(settings, {f"before-user-{n}" for n in range(PROBES)})
    await asyncio.sleep(3)  # a checkpoint interval passes with nothing new to learn
    worker.kill()

    worker = start_worker(settings, log)
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        after_lines = probes("after", last_ts + 60_000)
        await produce(settings.bootstrap_servers, settings.topic_events, after_lines)
        after = await decisions_for(settings, {f"after-user-{n}" for n in range(PROBES)})
    finally:
        worker.stop()

    versions = {d["model_version"] for d in [*before.values(), *after.values()]}
    assert len(versions) == 1, versions  # one model, and the same one on both sides of the kill
    assert not versions.pop().endswith("+0"), "the models learned nothing; the test proves nothing"
    # Decisions the model made (not exploration draws), compared by what the model said.
    modelled = ("policy.exploit", "policy.below_minimum")
    before_scores = {scores(d) for d in before.values() if d["reasons"][0] in modelled}
    after_scores = {scores(d) for d in after.values() if d["reasons"][0] in modelled}
    assert before_scores, [d["reasons"][:2] for d in before.values()]
    assert after_scores == before_scores
    assert "checkpoint.restored" in log.read_text()
