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
from tests.unit.whatif_traffic import EXCLUDING_RULE, program, traffic, write_program
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


def test_whatif_fails_a_program_that_leaves_a_country_out_naming_its_rule(
    test_settings: Settings, tmp_path: Path
) -> None:
    """No broker needed: the two programs are replayed in the command's own process."""
    current = write_program(tmp_path / "current.yaml", program())
    candidate = write_program(tmp_path / "candidate.yaml", program(excluding=True))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in traffic()))
    paths = ("--current", str(current), "--in", str(events))

    flagged = cli(test_settings, "whatif", *paths, "--candidate", str(candidate))
    assert flagged.returncode == 1, flagged.stderr.decode()
    assert (
        b"FAIL: group FR is granted at 0.00 of the rate of DE (under 0.8); "
        b"responsible: cashback:rule." + EXCLUDING_RULE.encode() + b":failed"
    ) in flagged.stdout

    same = cli(test_settings, "whatif", *paths, "--candidate", str(current), "--json")
    assert same.returncode == 0, same.stderr.decode()
    document = orjson.loads(same.stdout)
    assert document["failed"] is False
    assert set(document["differences"].values()) == {0}


def test_whatif_refuses_a_program_with_a_threshold_out_of_range(
    test_settings: Settings, tmp_path: Path
) -> None:
    strict = program()
    strict["audit"]["min_ratio"] = 80
    candidate = write_program(tmp_path / "strict.yaml", strict)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in traffic(users_per_country=2)))
    result = cli(test_settings, "whatif", "--candidate", str(candidate), "--in", str(events))
    assert result.returncode == 1
    assert b"strict.yaml, line " in result.stderr
    assert b"audit \xe2\x86\x92 min_ratio" in result.stderr
    assert b"(0.8 is the four-fifths rule), got 80" in result.stderr
