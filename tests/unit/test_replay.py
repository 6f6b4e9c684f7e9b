"""Offline replay: the worker's pipeline over a file, deterministic for a seed."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import fastjsonschema
import orjson
import pytest

import app.replay
from app.assembly import build_engine
from app.contract.schemas import load_schema
from app.replay import kafka_partitioner
from app.settings import Settings
from app.simulation import EventSimulator, SimulatorConfig

checks = {
    name: fastjsonschema.compile(load_schema(name))
    for name in ("decision", "dead_letter", "fraud_alert")
}


def replay(events: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "replay", "--in", str(events), "--out", str(out), *extra],
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_replay_decides_every_event_and_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    # Two days of traffic: new accounts wait out their pending period, then earn rewards.
    simulator = EventSimulator(
        SimulatorConfig(users=80, seed=5, invalid_ratio=0.05, events_per_second=0.01)
    )
    lines = [simulator.next_message() for _ in range(1500)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")

    first, second, other_seed = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    result = replay(events, first, "--seed", "3")
    assert result.returncode == 0, result.stderr.decode()
    assert b"Replayed 1500 lines" in result.stderr
    replay(events, second, "--seed", "3")
    replay(events, other_seed, "--seed", "4")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()

    records = [orjson.loads(line) for line in first.read_bytes().splitlines()]
    kinds = Counter(r["kind"] for r in records)
    assert kinds["decision"] + kinds["dead_letter"] == 1500
    assert 30 < kinds["dead_letter"] < 130
    for record in records:
        checks[record["kind"]](record)
    assert any(r["kind"] == "decision" and r["status"] == "granted" for r in records)


def test_replay_places_users_on_the_partitions_kafka_would() -> None:
    # Test vectors from Apache Kafka's own Java code, 4.3.1:
    # Utils.toPositive(Utils.murmur2(key.getBytes(UTF_8))) % partitions
    keys = ["u-1", "user-42", "", "ユーザー"]
    assert [kafka_partitioner(4)(k.encode()) for k in keys] == [3, 0, 1, 3]
    assert [kafka_partitioner(12)(k.encode()) for k in keys] == [7, 4, 9, 7]


def test_replay_of_a_bad_program_names_the_problem(tmp_path: Path) -> None:
    program = tmp_path / "bad.yaml"
    program.write_text("id: bad\nname: Bad\ncurrency: EUR\ntriggers: [signup]\nrewards: []\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = replay(events, tmp_path / "out.jsonl", "--program", str(program))
    assert result.returncode == 1
    assert b"bad.yaml" in result.stderr
    assert b"rewards" in result.stderr
    assert b"Traceback" not in result.stderr


def test_worker_with_a_bad_program_stops_at_once_naming_the_problem(tmp_path: Path) -> None:
    program = tmp_path / "typo.yaml"
    program.write_text(
        "id: typo\nname: Typo\ncurrency: EUR\ntriggers: [signup]\nrewards:\n"
        "  - id: r\n    kind: points\n    value: 1\n    cots: 1\n    channels: [web]\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "REWARDSTREAM_PROGRAM": str(program),
        "REWARDSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }  # nothing listens: never reached
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    message = result.stderr.decode()
    assert message.startswith("rewardstream: ")
    assert "typo.yaml" in message
    assert "unknown key 'cots' (did you mean 'cost'?)" in message
    assert "Traceback" not in message


def test_replay_output_does_not_depend_on_how_often_changed_rows_are_written_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker writes decoded rows back once per batch, and batches vary with load: a
    decision must never depend on where a batch happened to end."""
    simulator = EventSimulator(SimulatorConfig(users=40, seed=11, events_per_second=0.05))
    lines = [simulator.next_message() for _ in range(1200)]

    def outputs(batch_lines: int) -> list[bytes]:
        monkeypatch.setattr(app.replay, "BATCH_LINES", batch_lines)
        engine = build_engine(Settings.from_env({}), program="retail-loyalty")
        return list(app.replay.replay(engine, lines, source_name="t", max_event_bytes=65536))

    every_line, per_batch = outputs(1), outputs(1000)
    assert len(every_line) >= 1200
    assert per_batch == every_line
    assert outputs(7) == every_line
