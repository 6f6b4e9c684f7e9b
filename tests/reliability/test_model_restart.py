"""What the models learned survives a SIGKILL: after a restart the worker predicts what it
predicted before the kill, not what a cold start would; and, the kill coming after a
checkpoint with nothing new to learn, the restarted worker starts from exactly one
learning step per answer its committed decisions learned from, the whole traffic's
(answers, labels, consent changes, attacks)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.replay import kafka_partitioner
from app.settings import Settings
from harness.simulation.events import START_MS
from harness.workerproc import WorkerProcess
from tests.reliability.helpers import (
    Lives,
    WholeTraffic,
    assert_whole_traffic,
    whole_traffic_base,
    with_own_control_topics,
)

pytestmark = [pytest.mark.kafka]
PROBES = 8


def probes(prefix: str, ts: int) -> list[dict[str, Any]]:
    """New users who buy alike: the same features, so the same model gives the same scores
    (only exploration, drawn per decision, may differ)."""
    return [
        {
            "event_id": f"{prefix}-{n}",
            "user_id": f"{prefix}-user-{n}",
            "type": "purchase",
            "amount": 80.0,
            "currency": "EUR",
            "ts": ts,
            "channel": "web",
        }
        for n in range(PROBES)
    ]


def clock_ticks(partitions: int, ts: int) -> list[dict[str, Any]]:
    """A page view at ``ts`` on every partition: each partition's event time reaches ``ts``,
    so the offers whose response window is over by then time out (and are learned from,
    app.timers) before the probes come, not at the first of them."""
    place = kafka_partitioner(partitions)
    users: dict[int, str] = {}
    n = 0
    while len(users) < partitions:
        users.setdefault(place(f"tick-user-{n}".encode()), f"tick-user-{n}")
        n += 1
    return [
        {"event_id": f"tick-{p}", "user_id": user, "type": "page_view", "ts": ts}
        for p, user in sorted(users.items())
    ]


def scores(decision: dict[str, Any]) -> tuple[object, ...]:
    features = tuple(r for r in decision["reasons"] if r.startswith("feature."))
    return (decision["action"], decision["propensity"], features)


async def test_models_predict_after_a_sigkill_what_they_predicted_before(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(with_own_control_topics(kafka_settings), checkpoint_interval_s=1)
    days = 4
    base = whole_traffic_base(settings, events=1_500, users=150, seed=47, days=days)
    lives = Lives(start_worker)
    worker = lives.start(settings, tmp_path / "before.log")
    await asyncio.to_thread(worker.wait_ready, 120)
    last_ts = START_MS + (days + 6) * 86_400_000  # after every answer and label
    async with WholeTraffic(settings, base, per_second=150, seed=47) as traffic:
        # Users who answer their rewards: the models learn from every answer.
        await traffic.settle()
        traffic.answering = False  # the probes are only looked at
        await traffic.send(clock_ticks(settings.partitions, last_ts))
        await traffic.settle()
        await traffic.send(probes("before", last_ts))
        await traffic.settle()
        before = {n: traffic.decisions[f"before-{n}"] for n in range(PROBES)}
        await asyncio.sleep(3)  # a checkpoint interval passes with nothing new to learn
        lives.kill(worker)

        worker = lives.start(settings, tmp_path / "after.log")
        await asyncio.to_thread(worker.wait_ready, 120)
        await traffic.send(probes("after", last_ts))
        await traffic.settle()
        after = {n: traffic.decisions[f"after-{n}"] for n in range(PROBES)}
    lives.stop(worker)
    report = await assert_whole_traffic(settings, traffic, lives)
    print(report.summary())

    versions = {d["model_version"] for d in [*before.values(), *after.values()]}
    assert len(versions) == 1, versions  # one model, and the same one on both sides of the kill
    assert not versions.pop().endswith("+0"), "the models learned nothing; the test proves nothing"
    # Decisions the model made (not exploration draws), compared by what the model said.
    modelled = ("policy.exploit", "policy.below_minimum")
    before_scores = {scores(d) for d in before.values() if d["reasons"][0] in modelled}
    after_scores = {scores(d) for d in after.values() if d["reasons"][0] in modelled}
    assert before_scores, [d["reasons"][:2] for d in before.values()]
    assert after_scores == before_scores
    assert "checkpoint.restored" in (tmp_path / "after.log").read_text()
    # Nothing was lost to the kill: the restart began from every step the first worker
    # took, one per answer its committed decisions learned from.
    killed, restarted = lives.lives
    assert restarted.restored == report.per_life[killed.name][1] > 0, report.summary()
