"""The `rewardstream` command as a user runs it, against real brokers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.settings import Settings
from harness.workerproc import WorkerProcess
from topologies import topic_specs

pytestmark = pytest.mark.kafka


def cli(
    settings: Settings, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **settings.env()}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )


def test_kafka_up_status_down_manage_their_own_broker(
    test_settings: Settings, tmp_path: Path
) -> None:
    home = str(tmp_path / "broker")
    up = cli(test_settings, "kafka", "up", "--port", "0", "--home", home)
    assert up.returncode == 0, up.stderr.decode()
    assert b"is up: bootstrap 127.0.0.1:" in up.stdout
    try:
        status = cli(test_settings, "kafka", "status", "--home", home)
        assert (status.returncode, b"answering" in status.stdout) == (0, True)
        again = cli(test_settings, "kafka", "up", "--port", "0", "--home", home)
        assert again.returncode == 1
        assert b"already runs" in again.stderr
    finally:
        down = cli(test_settings, "kafka", "down", "--home", home)
    assert (down.returncode, down.stdout.strip()) == (0, b"Kafka stopped.")
    assert cli(test_settings, "kafka", "status", "--home", home).returncode == 3


def test_topics_produce_and_tail_round_trip(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    created = cli(kafka_settings, "topics", "create")
    assert created.returncode == 0, created.stderr.decode()
    # The worker created them all at start: the public topics, the stages' internal
    # topics and the tables' changelogs.
    assert created.stdout.count(b"exists") == len(topic_specs(kafka_settings))

    simulated = cli(kafka_settings, "simulate", "--events", "40", "--users", "10", "--out", "-")
    lines = simulated.stdout.splitlines()
    assert len(lines) == 40
    produced = cli(kafka_settings, "produce", "-", stdin=simulated.stdout + b"not json\n")
    assert produced.returncode == 0, produced.stderr.decode()

    decisions = cli(kafka_settings, "tail", "decisions", "--jsonl", "--max", "40", "--idle", "30")
    got = [orjson.loads(line) for line in decisions.stdout.splitlines()]
    assert sorted(d["event_id"] for d in got) == sorted(orjson.loads(x)["event_id"] for x in lines)

    dead = cli(kafka_settings, "tail", "dead-letters", "--max", "1", "--idle", "30")
    assert dead.stdout.startswith(b"DEAD  bad_json  " + kafka_settings.topic_events.encode())


def test_bad_setting_fails_with_the_variable_named(test_settings: Settings) -> None:
    env = {**os.environ, "REWARDSTREAM_PARTITONS": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "topics", "create"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"unknown setting REWARDSTREAM_PARTITONS" in result.stderr


def test_closed_loop_simulation_answers_decisions_through_kafka(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    result = cli(
        kafka_settings,
        "simulate",
        "--closed-loop",
        "--events",
        "1500",
        # Slow enough that decisions come back while events are still sent, even on a
        # busy machine: the answers to them are the loop being tested.
        "--rate",
        "300",
        "--users",
        "100",
        "--days",
        "3",
    )
    assert result.returncode == 0, result.stderr.decode()
    summary = result.stderr.decode()
    produced = int(summary.split("Produced ")[1].split(" events")[0])
    decisions = int(summary.split("; ")[1].split(" decisions seen")[0])
    redeemed = int(summary.split(" redeemed")[0].rsplit(" ", 1)[1])
    assert produced > 1500, summary  # the users' answers are events too
    assert decisions == produced, summary  # every event, answers included, was decided
    assert redeemed > 0, summary
