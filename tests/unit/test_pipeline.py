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
from app.fraud import LinkState
from app.metrics import Metrics
from app.pipeline import MAX_DEAD_LETTER_PAYLOAD, MAX_WAITING, Envelope, Pipeline, Tables
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
    assert (envelope.raw, envelope.source, envelope.hop) == (VALID, at(3, key=None), None)
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1
    state = tables()
    [decision] = pipeline.decide(state, 1, output.value, SourcePosition("linked", 1, 0))
    assert (decision.role, decision.key) == ("decisions", b"u-1")
    pipeline.flush(state)
    assert b"u-1" in state.users


def linked_event(event_id: str, ts: str, **fields: str) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "user_id": "u-1", "type": "signup", "ts": ts} | fields
    )


def test_an_event_goes_to_its_user_and_to_each_device_and_network_it_names(
    pipeline: Pipeline,
) -> None:
    raw = linked_event("e-5", "2026-03-01T12:00:00Z", device_id="dev-1", ip="192.0.2.77")
    state = tables()
    direct, device, net = pipeline.intake(at(7), raw)
    assert (direct.role, direct.key) == ("linked", b"u-1")
    assert (device.role, device.key) == ("links", b"device:dev-1")
    assert (net.role, net.key) == ("links", b"net:192.0.2.0/24")
    # The event waits for its user's link facts: nothing is decided yet.
    assert pipeline.decide(state, 0, direct.value, SourcePosition("linked", 0, 0)) == []
    pipeline.flush(state)
    assert b"u-1" in state.waiting
    # The network answers first, then the device: the decision comes with the last answer.
    [from_net] = pipeline.link(state, net.key or b"", net.value, SourcePosition("links", 3, 0))
    [from_device] = pipeline.link(
        state, device.key or b"", device.value, SourcePosition("links", 0, 0)
    )
    assert {from_net.key, from_device.key} == {b"u-1"}
    assert pipeline.decide(state, 0, from_net.value, SourcePosition("linked", 0, 1)) == []
    [decision] = pipeline.decide(state, 0, from_device.value, SourcePosition("linked", 0, 2))
    assert decision.role == "decisions"
    assert orjson.loads(decision.value)["event_id"] == "e-5"
    pipeline.flush(state)
    assert set(state.links) == {b"device:dev-1", b"net:192.0.2.0/24"}
    assert b"u-1" not in state.waiting  # an empty queue leaves no state behind


def test_a_users_events_are_decided_in_the_order_intake_read_them(pipeline: Pipeline) -> None:
    """A later event with no links does not overtake an earlier one still waiting."""
    state = tables()
    first = linked_event("e-1", "2026-03-01T12:00:00Z", device_id="dev-1")
    purchase = orjson.dumps(
        {
            "event_id": "e-2",
            "user_id": "u-1",
            "type": "purchase",
            "ts": "2026-03-01T12:01:00Z",
            "amount": 30.0,
            "currency": "EUR",
        }
    )
    direct, hop = pipeline.intake(at(1), first)
    [later] = pipeline.intake(at(2), purchase)
    assert pipeline.decide(state, 0, direct.value, SourcePosition("linked", 0, 0)) == []
    assert pipeline.decide(state, 0, later.value, SourcePosition("linked", 0, 1)) == []
    [answer] = pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 0, 0))
    outputs = pipeline.decide(state, 0, answer.value, SourcePosition("linked", 0, 2))
    decided = [orjson.loads(o.value)["event_id"] for o in outputs if o.role == "decisions"]
    assert decided == ["e-1", "e-2"]
    pipeline.flush(state)
    assert UserState.from_bytes(state.users[b"u-1"]).events == 2


def test_a_link_hop_that_fails_still_answers_so_the_user_is_not_held_back(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    direct, hop = pipeline.intake(at(8), linked_event("e-6", "2026-03-01T12:00:00Z", device_id="d"))
    pipeline.decide(state, 0, direct.value, SourcePosition("linked", 0, 0))
    # Under the wrong key: never guessed at, counted, answered with facts that say nothing.
    [answer] = pipeline.link(state, b"device:other", hop.value, SourcePosition("links", 0, 9))
    assert answer.role == "linked"
    pipeline.flush(state)
    assert state.links == {}
    assert registry.get_sample_value("rewardstream_link_failures_total") == 1
    [decision] = pipeline.decide(state, 0, answer.value, SourcePosition("linked", 0, 1))
    assert orjson.loads(decision.value)["event_id"] == "e-6"


def test_a_user_whose_link_answer_never_comes_is_decided_after_a_bounded_wait(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    direct, _lost = pipeline.intake(
        at(0), linked_event("e-0", "2026-03-01T12:00:00Z", device_id="d")
    )
    assert pipeline.decide(state, 0, direct.value, SourcePosition("linked", 0, 0)) == []
    decided: list[str] = []
    for n in range(1, MAX_WAITING + 2):
        later = orjson.dumps(
            {"event_id": f"e-{n}", "user_id": "u-1", "type": "page_view", "ts": 1772366400000 + n}
        )
        [output] = pipeline.intake(at(n), later)
        for record in pipeline.decide(state, 0, output.value, SourcePosition("linked", 0, n)):
            if record.role == "decisions":
                decided.append(orjson.loads(record.value)["event_id"])
    assert decided[0] == "e-0"  # still first, decided with the facts it had
    assert registry.get_sample_value("rewardstream_link_failures_total") == 1


def test_link_facts_before_their_event_are_kept_for_it(pipeline: Pipeline) -> None:
    """Only a crash without transactions can reorder them; the event still gets its facts."""
    state = tables()
    direct, hop = pipeline.intake(at(4), linked_event("e-4", "2026-03-01T12:00:00Z", device_id="d"))
    [answer] = pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 0, 0))
    assert pipeline.decide(state, 0, answer.value, SourcePosition("linked", 0, 0)) == []
    [decision] = pipeline.decide(state, 0, direct.value, SourcePosition("linked", 0, 1))
    assert orjson.loads(decision.value)["event_id"] == "e-4"
    assert b"u-1" not in state.waiting


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


DAY_MS = 86_400_000


def test_a_user_silent_longer_than_the_time_to_live_is_forgotten(
    registry: CollectorRegistry,
) -> None:
    pipeline = Pipeline(
        Engine(PROGRAM), Metrics(registry), max_event_bytes=4096, state_ttl_ms=30 * DAY_MS
    )
    state = tables()

    def page_view(n: int, ts: int) -> bytes:
        return orjson.dumps({"event_id": f"e-{n}", "user_id": "u-1", "type": "page_view", "ts": ts})

    start = 1_772_366_400_000
    pipeline.handle(state, at(0), page_view(0, start))
    pipeline.handle(state, at(1), page_view(1, start + 29 * DAY_MS))
    assert UserState.from_bytes(state.users[b"u-1"]).events == 2
    pipeline.handle(state, at(2), page_view(2, start + 60 * DAY_MS))  # 31 days of silence
    assert UserState.from_bytes(state.users[b"u-1"]).events == 1
    expired = {"table": "user-state"}
    assert registry.get_sample_value("rewardstream_state_expired_total", expired) == 1
    # What the background sweep may delete: nothing newer than the time to live.
    row = state.users[b"u-1"]
    assert not pipeline.stale("users", row, start + 60 * DAY_MS + 30 * DAY_MS)
    assert pipeline.stale("users", row, start + 60 * DAY_MS + 30 * DAY_MS + 1)
    assert not Pipeline(Engine(PROGRAM), Metrics(CollectorRegistry()), max_event_bytes=4096).stale(
        "users", row, start + 1000 * DAY_MS
    )  # no time to live: never


def test_a_device_silent_longer_than_the_time_to_live_is_forgotten(
    registry: CollectorRegistry,
) -> None:
    pipeline = Pipeline(
        Engine(PROGRAM), Metrics(registry), max_event_bytes=4096, state_ttl_ms=30 * DAY_MS
    )
    state = tables()
    start = 1_772_366_400_000
    for n, (user, ts) in enumerate([("u-1", start), ("u-2", start + 40 * DAY_MS)]):
        raw = orjson.dumps(
            {"event_id": f"e-{n}", "user_id": user, "type": "signup", "ts": ts, "device_id": "d"}
        )
        pipeline.handle(state, at(n, key=user.encode()), raw)
    accounts = LinkState.from_bytes(state.links[b"device:d"]).accounts
    assert [seen.user_id for seen in accounts] == ["u-2"]  # u-1's sign-up is long forgotten
    assert (
        registry.get_sample_value("rewardstream_state_expired_total", {"table": "link-state"}) == 1
    )
    assert pipeline.stale("links", state.links[b"device:d"], start + 71 * DAY_MS)
