"""Offline replay: the worker's pipeline over a file, deterministic for a seed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest

import app.pipeline
import app.replay
from app.assembly import build_engine
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.fraud import LinkFacts
from app.fraud.signals import RelatedNote
from app.programs import load_builtin
from app.replay import kafka_partitioner, replay_decide_log
from app.settings import Settings
from harness.simulation import EventSimulator, SimulatorConfig

# One event of the decide stage's log: its partition, its bytes, the facts it was given.
Record = (
    tuple[int, bytes, tuple[LinkFacts, ...]]
    | tuple[int, bytes, tuple[LinkFacts, ...], tuple[RelatedNote, ...]]
)
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


def test_decisions_do_not_depend_on_which_rows_were_kept_decoded_between_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row decoded in an earlier batch is reused while it is unchanged
    (app.rows.DecodedRows): what the engine sees must be exactly what decoding the stored
    row gives, whether every row, a few or none were kept."""
    simulator = EventSimulator(SimulatorConfig(users=40, seed=12, events_per_second=0.05))
    lines = [simulator.next_message() for _ in range(1500)] + burst_on_one_device(10**12)
    monkeypatch.setattr(app.replay, "BATCH_LINES", 7)

    def outputs(kept: int | None) -> list[bytes]:
        if kept is not None:
            monkeypatch.setattr(
                app.pipeline, "DECODED_KEPT", dict.fromkeys(app.pipeline.DECODED_KEPT, kept)
            )
        engine = build_engine(Settings.from_env({}), program="retail-loyalty")
        return list(app.replay.replay(engine, lines, source_name="t", max_event_bytes=65536))

    kept_all = outputs(None)
    assert len(kept_all) >= len(lines)
    assert outputs(0) == kept_all
    assert outputs(3) == kept_all


def burst_on_one_device(start_ms: int) -> list[bytes]:
    """Six accounts sign up on one phone within minutes (the last ones are blocked on what
    the device shows), one of them sends its sign-up twice, and the first comes back an
    hour later from elsewhere (with the note the others' alerts sent it)."""
    lines = [
        orjson.dumps(
            {
                "event_id": f"farm-{n}",
                "user_id": f"farm-user-{n}",
                "type": "signup",
                "ts": start_ms + n * 60_000,
                "device_id": "dev-farm",
                "ip": f"198.51.100.{n + 1}",
            }
        )
        for n in range(6)
    ]
    back = orjson.dumps(
        {
            "event_id": "farm-0-back",
            "user_id": "farm-user-0",
            "type": "session_start",
            "ts": start_ms + 3_600_000,
            "channel": "web",
            "ip": "203.0.113.9",
        }
    )
    return [*lines, lines[2], back]


def replay_by_line(lines: list[bytes], **options: Any) -> list[list[bytes]]:
    """What ``replay`` yields for each input line, line by line (it reads lazily)."""
    per_line: list[list[bytes]] = []

    def feed() -> Iterator[bytes]:
        for line in lines:
            per_line.append([])
            yield line

    engine = build_engine(Settings.from_env({}), program="retail-loyalty")
    for value in app.replay.replay(engine, feed(), source_name="t", max_event_bytes=65536):
        per_line[-1].append(value)
    return per_line


def decide_log(lines: list[bytes], per_line: list[list[bytes]]) -> list[Record]:
    """The decide stage's log of a replay: each valid event, on its user's partition, in the
    order its partition decided it, with the link facts its decision recorded."""
    place = kafka_partitioner(Settings.from_env({}).partitions)
    log: list[Record] = []
    for line, outputs in zip(lines, per_line, strict=True):
        documents = [orjson.loads(value) for value in outputs]
        if any(d["kind"] == "dead_letter" for d in documents):
            continue
        decision = next((d for d in documents if d["kind"] == "decision"), None)
        facts = () if decision is None else decision["links"]
        links = tuple(LinkFacts.from_document(document) for document in facts)
        noted = () if decision is None else decision["related"]
        notes = tuple(RelatedNote(**document) for document in noted)
        log.append((place(orjson.loads(line)["user_id"].encode()), line, links, notes))
    return log


def test_replaying_the_decide_log_with_the_recorded_facts_reproduces_every_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The audit path: each event in its partition's order with the facts its decision
    recorded gives every decision and alert byte for byte, however the view lagged."""
    simulator = EventSimulator(
        SimulatorConfig(users=40, seed=13, invalid_ratio=0.03, events_per_second=0.01)
    )
    lines = [simulator.next_message() for _ in range(600)]
    lines[300:300] = burst_on_one_device(simulator.config.start_ms + 300 * 100_000)
    per_line = replay_by_line(lines)
    expected = [v for outputs in per_line for v in outputs if b'"kind":"dead_letter"' not in v]
    decisions = [orjson.loads(v) for v in expected if b'"kind":"decision"' in v]
    # What the comparison covers: rewards, refusals on a device's facts, repeats, facts.
    assert {"granted", "blocked"} <= {d["status"] for d in decisions}
    assert any("fraud.device.signups" in d["reasons"] for d in decisions)
    assert all(d["links"] for d in decisions)
    assert any(d["related"] for d in decisions)  # the burst's alert named accounts that came back
    assert len(decisions) < len(expected)  # alerts too (the repeat's among them)
    assert len({entry[0] for entry in decide_log(lines, per_line)}) > 1

    def audit(log: list[Record], batch_lines: int) -> list[bytes]:
        monkeypatch.setattr(app.replay, "BATCH_LINES", batch_lines)
        engine = build_engine(Settings.from_env({}), program="retail-loyalty")
        replayed = replay_decide_log(engine, log, max_event_bytes=65536)
        return [value for value in replayed if b'"kind":"dead_letter"' not in value]

    log = decide_log(lines, per_line)
    assert audit(log, 1000) == expected
    assert audit(log, 7) == expected
    # The facts are what makes it so: without them, decisions on the burst differ.
    blind: list[Record] = [(entry[0], entry[1], ()) for entry in log]
    assert audit(blind, 1000) != expected


def test_the_decide_log_decides_each_event_on_the_partition_it_names() -> None:
    """Ledgers are per partition: two users on one partition share its budget, on two
    they do not; nothing the worker keeps internal (links, rekeyed) comes out."""

    def budgets_left(partitions: tuple[int, int]) -> list[str]:
        # Without the pending period for new accounts: a sign-up is paid at once.
        retail = load_builtin("retail-loyalty")
        program = dataclasses.replace(
            retail, fraud=dataclasses.replace(retail.fraud, new_account_pending=None)
        )
        engine = Engine(program, partitions=4)
        log: list[Record] = [
            (partition, signup, ()) for partition, signup in zip(partitions, SIGNUPS, strict=True)
        ]
        decisions = [orjson.loads(v) for v in replay_decide_log(engine, log, max_event_bytes=4096)]
        assert [d["kind"] for d in decisions] == ["decision", "decision"]
        return [
            next(r for r in d["reasons"] if r.startswith("budget.total_left")) for d in decisions
        ]

    share = 100_000 / 4
    assert budgets_left((0, 3)) == [f"budget.total_left:{share - 0.5:.2f}"] * 2
    assert budgets_left((3, 3))[1] == f"budget.total_left:{share - 1:.2f}"


SIGNUPS = [
    orjson.dumps(
        {
            "event_id": f"e-{user}",
            "user_id": user,
            "type": "signup",
            "ts": "2026-03-01T12:00:00Z",
            "device_id": f"dev-{user}",
            "attributes": {"country": "DE", "age": 30},
        }
    )
    for user in ("u-1", "u-2")
]


def test_replay_keeps_as_many_decoded_rows_as_workers_of_every_partition_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker keeps DECODED_KEPT rows decoded per table and partition; replay's tables
    hold every partition, so they keep that many times the partitions: with a worker's
    share only, the bench's links (more keys than one share) were decoded at nearly
    every read."""
    made: list[app.pipeline.Tables] = []
    real = app.replay.Tables

    def recording(*args: Any, **kwargs: Any) -> app.pipeline.Tables:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(app.replay, "Tables", recording)
    engine = build_engine(Settings.from_env({}), program="retail-loyalty")
    simulator = EventSimulator(SimulatorConfig(users=5, seed=3))
    lines = [simulator.next_message() for _ in range(20)]
    assert list(app.replay.replay(engine, lines, source_name="t", max_event_bytes=65536))
    [tables] = made
    assert engine.partitions > 1
    for name in ("users", "links"):
        kept = tables.decoded[name].kept
        assert kept == app.pipeline.DECODED_KEPT[name] * engine.partitions
    # A worker's tables hold one partition each.
    worker_tables = app.pipeline.Tables(users={}, ledgers={})
    assert (
        app.pipeline.open_rows(worker_tables, "users").decoded.kept
        == (app.pipeline.DECODED_KEPT["users"])
    )
