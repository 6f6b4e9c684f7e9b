"""Routing of one message: decisions, dead letters with original bytes, re-keying, repeats."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import fastjsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.contract import SourcePosition
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.decisioning.ledger import Ledger, ledger_key
from app.features import UserState
from app.metrics import Metrics
from app.pipeline import MAX_DEAD_LETTER_PAYLOAD, Envelope, Pipeline, Tables
from app.programs import load_builtin

# Without the shipped pending period for new accounts: these tests follow a first reward
# from decision to ledger.
RETAIL = load_builtin("retail-loyalty")
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)

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
    return Pipeline(Engine(PROGRAM), Metrics(registry), max_event_bytes=4096)


def tables() -> Tables:
    return Tables(users={}, ledgers={})


def test_valid_event_yields_one_decision_and_stores_state(pipeline: Pipeline) -> None:
    state = tables()
    [output] = pipeline.handle(state, at(0), VALID)
    assert (output.role, output.key) == ("decisions", b"u-1")
    decision = orjson.loads(output.value)
    check_decision(decision)
    assert UserState.from_bytes(state.users[b"u-1"]).events == 1
    # The signup was granted welcome points: partition 2's ledger paid for them.
    assert decision["action"] == "welcome-points"
    ledger = Ledger.from_bytes(state.ledgers[ledger_key("retail-loyalty", 2)])
    assert ledger.spent_total == decision["cost"]


def test_invalid_event_becomes_a_dead_letter_with_original_bytes_and_position(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    raw = b'{"event_id": "e-9", "user_id": "u-1", "type": "teleport", "ts": 1772366400000}'
    [output] = pipeline.handle(tables(), at(41, b"k"), raw)
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
    pipeline = Pipeline(Engine(PROGRAM), Metrics(registry), max_event_bytes=1024)
    raw = b"x" * (MAX_DEAD_LETTER_PAYLOAD + 10)
    record = orjson.loads(pipeline.handle(tables(), at(1), raw)[0].value)
    assert record["reason"] == "oversized"
    assert record["payload_truncated"] is True
    assert record["payload_bytes"] == len(raw)
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()


def test_event_under_the_wrong_key_goes_on_under_its_user_id(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    [output] = pipeline.intake(at(3, key=None), VALID)
    assert (output.role, output.key) == ("linked", b"u-1")
    envelope = Envelope.from_bytes(output.value)
    assert (envelope.raw, envelope.source, envelope.links) == (VALID, at(3, key=None), ())
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1
    state = tables()
    [decision] = pipeline.decide(state, 1, output.value, SourcePosition("linked", 1, 0))
    assert (decision.role, decision.key) == ("decisions", b"u-1")
    assert b"u-1" in state.users


def test_an_event_passes_its_device_then_its_network_then_its_user(pipeline: Pipeline) -> None:
    raw = orjson.dumps(
        {
            "event_id": "e-5",
            "user_id": "u-1",
            "type": "signup",
            "ts": 1772366400000,
            "device_id": "dev-1",
            "ip": "192.0.2.77",
        }
    )
    state = tables()
    [hop] = pipeline.intake(at(7), raw)
    assert (hop.role, hop.key) == ("links", b"device:dev-1")
    [hop] = pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 0, 0))
    assert (hop.role, hop.key) == ("links", b"net:192.0.2.0/24")
    [hop] = pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 3, 0))
    assert (hop.role, hop.key) == ("linked", b"u-1")
    envelope = Envelope.from_bytes(hop.value)
    assert [f.kind for f in envelope.links] == ["device", "net"]
    assert envelope.source == at(7)  # a dead letter downstream still points at the original
    assert set(state.links) == {b"device:dev-1", b"net:192.0.2.0/24"}


def test_a_link_hop_under_the_wrong_key_is_a_dead_letter_not_a_guess(pipeline: Pipeline) -> None:
    raw = orjson.dumps(
        {
            "event_id": "e-6",
            "user_id": "u-1",
            "type": "signup",
            "ts": 1772366400000,
            "device_id": "d",
        }
    )
    [hop] = pipeline.intake(at(8), raw)
    assert hop.role == "links"
    [output] = pipeline.link(tables(), b"device:other", hop.value, SourcePosition("links", 0, 9))
    record = orjson.loads(output.value)
    assert (output.role, record["reason"]) == ("dead-letter", "internal_error")
    assert record["source"]["offset"] == 8  # the original event's position


def test_repeat_of_an_event_is_counted_not_decided(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    assert len(pipeline.handle(state, at(0), VALID)) == 1
    # No second decision; the repeat is reported to the fraud-alerts topic.
    assert [o.role for o in pipeline.handle(state, at(1), VALID)] == ["fraud-alerts"]
    assert registry.get_sample_value("rewardstream_duplicate_events_total") == 1


class ExplodingEngine(Engine):
    def process(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise ZeroDivisionError("a bug")


def test_a_bug_in_the_engine_costs_one_dead_letter_not_the_worker(
    registry: CollectorRegistry,
) -> None:
    pipeline = Pipeline(ExplodingEngine(PROGRAM), Metrics(registry), max_event_bytes=4096)
    [output] = pipeline.handle(tables(), at(5), VALID)
    record = orjson.loads(output.value)
    assert (output.role, record["reason"]) == ("dead-letter", "internal_error")
    assert "ZeroDivisionError" in record["error"]


def test_policy_modes_and_learning_are_counted(registry: CollectorRegistry) -> None:
    pipeline = Pipeline(Engine(PROGRAM), Metrics(registry), max_event_bytes=4096)
    state = tables()
    [output] = pipeline.handle(state, at(0), VALID)
    decision = orjson.loads(output.value)
    labels = {"program": "retail-loyalty", "mode": "exploit"}
    assert registry.get_sample_value("rewardstream_policy_choices_total", labels) == 1
    redeemed = orjson.dumps(
        {
            "event_id": "e-2",
            "user_id": "u-1",
            "type": "reward_redeemed",
            "ts": "2026-03-01T13:00:00Z",
            "decision_id": decision["decision_id"],
        }
    )
    pipeline.handle(state, at(1), redeemed)
    updates = registry.get_sample_value(
        "rewardstream_model_updates_total", {"program": "retail-loyalty"}
    )
    assert updates == 1
