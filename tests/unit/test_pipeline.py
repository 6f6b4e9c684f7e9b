"""Routing of one message: decisions, dead letters with original bytes, re-keying, repeats."""

from __future__ import annotations

import base64
import hashlib

import fastjsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.contract import Event, SourcePosition
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.features import UserState
from app.metrics import Metrics
from app.pipeline import MAX_DEAD_LETTER_PAYLOAD, Pipeline

check_dead_letter = fastjsonschema.compile(load_schema("dead_letter"))
check_decision = fastjsonschema.compile(load_schema("decision"))
VALID = orjson.dumps(
    {"event_id": "e-1", "user_id": "u-1", "type": "signup", "ts": "2026-03-01T12:00:00Z"}
)


def at(offset: int, key: bytes | None = b"u-1") -> SourcePosition:
    return SourcePosition("events", 2, offset, key)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def pipeline(registry: CollectorRegistry) -> Pipeline:
    return Pipeline(Engine(program="p"), Metrics(registry), max_event_bytes=4096)


def test_valid_event_yields_one_decision_and_stores_state(pipeline: Pipeline) -> None:
    states: dict[bytes, bytes | None] = {}
    [output] = pipeline.handle(states, at(0), VALID)
    assert (output.role, output.key) == ("decisions", b"u-1")
    check_decision(orjson.loads(output.value))
    assert UserState.from_bytes(states[b"u-1"]).events == 1


def test_invalid_event_becomes_a_dead_letter_with_original_bytes_and_position(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    raw = b'{"event_id": "e-9", "user_id": "u-1", "type": "teleport", "ts": 1772366400000}'
    [output] = pipeline.handle({}, at(41, b"k"), raw)
    record = orjson.loads(output.value)
    check_dead_letter(record)
    assert output.role == "dead-letter"
    assert (record["reason"], record["event_id"]) == ("schema", "e-9")
    assert record["source"] == {
        "topic": "events",
        "partition": 2,
        "offset": 41,
        "key_base64": base64.b64encode(b"k").decode(),
    }
    assert base64.b64decode(record["payload_base64"]) == raw
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert registry.get_sample_value("rewardstream_dead_letters_total", {"reason": "schema"}) == 1


def test_huge_payload_is_truncated_in_the_dead_letter_but_hashed_whole(
    registry: CollectorRegistry,
) -> None:
    pipeline = Pipeline(Engine(program="p"), Metrics(registry), max_event_bytes=1024)
    raw = b"x" * (MAX_DEAD_LETTER_PAYLOAD + 10)
    record = orjson.loads(pipeline.handle({}, at(1), raw)[0].value)
    assert record["reason"] == "oversized"
    assert record["payload_truncated"] is True
    assert record["payload_bytes"] == len(raw)
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()


def test_event_under_the_wrong_key_is_republished_under_its_user_id(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    states: dict[bytes, bytes | None] = {}
    [output] = pipeline.handle(states, at(3, key=None), VALID)
    assert (output.role, output.key, output.value) == ("events", b"u-1", VALID)
    assert states == {}
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1


def test_repeat_of_an_event_is_counted_not_decided(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    states: dict[bytes, bytes | None] = {}
    assert len(pipeline.handle(states, at(0), VALID)) == 1
    assert pipeline.handle(states, at(1), VALID) == []
    assert registry.get_sample_value("rewardstream_duplicate_events_total") == 1


class ExplodingEngine(Engine):
    def process(self, state: UserState, event: Event) -> object:  # type: ignore[override]
        raise ZeroDivisionError("a bug")


def test_a_bug_in_the_engine_costs_one_dead_letter_not_the_worker(
    registry: CollectorRegistry,
) -> None:
    pipeline = Pipeline(ExplodingEngine(program="p"), Metrics(registry), max_event_bytes=4096)
    [output] = pipeline.handle({}, at(5), VALID)
    record = orjson.loads(output.value)
    assert (output.role, record["reason"]) == ("dead-letter", "internal_error")
    assert "ZeroDivisionError" in record["error"]
