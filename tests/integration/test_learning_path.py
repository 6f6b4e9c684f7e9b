"""On the real broker: outcomes produced to Kafka change the decisions that follow.

The worker runs the small test program (no exploration, equal priors), so at
first a 30 EUR purchase earns cashback (worth 3) over points (worth 2). Then
users dismiss every cashback and redeem every points reward, through the events
topic like any app would; afterwards a new user's purchase earns points.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafkaio import produce, read
from app.settings import Settings
from harness.workerproc import WorkerProcess

pytestmark = pytest.mark.kafka

TEST_PROGRAM = Path(__file__).parents[1] / "fixtures" / "test-program.yaml"
T0 = 1_772_366_400_000
HOUR = 3_600_000


@pytest.fixture
def learning_worker(
    kafka_settings: Settings, tmp_path: Path
) -> Iterator[tuple[Settings, WorkerProcess]]:
    # The unit-test program, with budgets wide enough for every user of this test.
    text = TEST_PROGRAM.read_text().replace("total: 20", "total: 100000")
    text = text.replace("per_user: 8", "per_user: 1000").replace("limit: 12", "limit: 100000")
    program = tmp_path / "test-program.yaml"
    program.write_text(text)
    settings = dataclasses.replace(kafka_settings, program=str(program), checkpoint_interval_s=1)
    process = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        process.wait_ready(timeout_s=120)
        yield settings, process
    finally:
        process.stop()


class Client:
    """A producer of events that waits for each batch's decisions, as an app would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decisions: dict[str, dict[str, Any]] = {}

    async def send(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await produce(
            self.settings.bootstrap_servers,
            self.settings.topic_events,
            [orjson.dumps(e) for e in events],
        )
        wanted = {e["event_id"] for e in events}
        # read() is an async generator, closed here (so its consumer stops).
        records = read(
            self.settings.bootstrap_servers,
            [self.settings.topic_decisions],
            idle_timeout_s=60.0,
        )
        async with aclosing(records):
            async for record in records:
                decision = record.document()
                self.decisions[str(decision["event_id"])] = decision
                if wanted <= self.decisions.keys():
                    break
        return [self.decisions[e["event_id"]] for e in events]


def purchase(user: str, n: int, ts: int) -> dict[str, Any]:
    return {
        "event_id": f"{user}-p{n}",
        "user_id": user,
        "type": "purchase",
        "ts": ts,
        "amount": 30.0,
        "currency": "EUR",
        "channel": "web",
    }


def outcome(decision: dict[str, Any], kind: str, ts: int) -> dict[str, Any]:
    return {
        "event_id": f"{decision['event_id']}-{kind}",
        "user_id": decision["user_id"],
        "type": kind,
        "ts": ts,
        "decision_id": decision["decision_id"],
    }


async def test_outcomes_on_kafka_change_later_decisions(
    learning_worker: tuple[Settings, WorkerProcess],
) -> None:
    settings, worker = learning_worker
    client = Client(settings)
    [before] = await client.send([purchase("probe-1", 0, T0)])
    assert before["action"] == "cashback"

    for round_ in range(3):
        ts = T0 + (round_ + 1) * 24 * HOUR
        users = [f"u{round_}-{n}" for n in range(15)]
        granted = await client.send([purchase(u, round_, ts) for u in users])
        answers = [
            outcome(
                d, "reward_dismissed" if d["action"] == "cashback" else "reward_redeemed", ts + HOUR
            )
            for d in granted
            if d["status"] == "granted"
        ]
        recorded = await client.send(answers)
        assert {r["reasons"][0] for r in recorded} <= {"outcome.dismissed", "outcome.redeemed"}

    [after] = await client.send([purchase("probe-2", 0, T0 + 10 * 24 * HOUR)])
    assert after["action"] == "points"
    assert after["model_version"] != before["model_version"]
    metrics = worker.get("/metrics")[1].decode()
    labels = 'program="test-program",reward="points",status="granted"'
    assert f"rewardstream_decisions_total{{{labels}}}" in metrics

    # What was learned survives a restart: the checkpoint (every second here) is read back.
    await asyncio.sleep(2.5)
    worker.stop()
    restarted = WorkerProcess(settings, worker.log_path.with_name("restarted.log")).start()
    try:
        restarted.wait_ready(timeout_s=120)
        [again] = await client.send([purchase("probe-3", 0, T0 + 10 * 24 * HOUR)])
    finally:
        restarted.stop()
    same = ("action", "propensity", "explanation", "model_version")
    assert {k: again[k] for k in same} == {k: after[k] for k in same}
