"""Property tests: no input, however odd, makes validation or the pipeline raise.

Every message ends as exactly one decision, one dead letter, one re-keyed event,
or nothing (a repeat), and the engine keeps every budget whatever valid events
arrive in whatever order.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.contract import Event, Rejection, SourcePosition, parse_event
from app.contract.validate import parse_event_schema
from app.decisioning import Engine
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables
from app.programs import load_builtin

PROGRAM = load_builtin("retail-loyalty")
# `make fuzz` runs these properties with FUZZ_FACTOR times more examples.
FUZZ_FACTOR = max(1, int(os.environ.get("FUZZ_FACTOR", "1")))


def examples(n: int) -> int:
    return n * FUZZ_FACTOR


EVENT_TYPES = [
    "signup",
    "session_start",
    "page_view",
    "purchase",
    "referral",
    "survey",
    "reward_opened",
    "reward_redeemed",
    "reward_dismissed",
    "consent_updated",
    "fraud_label",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(raw: bytes) -> None:
    result = parse_event(raw, max_bytes=65_536)
    assert isinstance(result, Event | Rejection)
    assert repr(result) == repr(parse_event_schema(raw, max_bytes=65_536))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "event_id",
                "user_id",
                "type",
                "ts",
                "amount",
                "currency",
                "channel",
                "ip",
                "attributes",
                "decision_id",
                "extra",
            ]
        ),
        JSON,
    )
)
def test_random_documents_are_accepted_only_when_valid(document: dict[str, Any]) -> None:
    result = parse_event(orjson.dumps(document), max_bytes=65_536)
    assert repr(result) == repr(parse_event_schema(orjson.dumps(document), max_bytes=65_536))
    if isinstance(result, Rejection):
        assert result.reason in ("schema", "bad_timestamp")
        assert result.error
    else:
        assert result.user_id == document["user_id"]


VALID_MESSAGES = [
    b'{"event_id":"e-1","user_id":"u-1","type":"purchase","ts":"2026-03-01T12:00:00.250Z",'
    b'"amount":42.5,"currency":"EUR","channel":"mobile","device_id":"d-9","ip":"10.1.2.3",'
    b'"attributes":{"sku":["a","b"],"n":3,"gift":false,"note":null}}',
    b'{"event_id":"e-2","user_id":"\\u30e6-\xf0\x9f\x8e\x81","type":"consent_updated",'
    b'"ts":1772366400000,"attributes":{"marketing":true,"personalization":false}}',
    b'{"event_id":"e-3","user_id":"u-3","type":"fraud_label","ts":"2026-03-01 13:00:00+01:00",'
    b'"decision_id":"d-1","ip":"2001:db8::1","attributes":{"label":"cleared"}}',
]


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID_MESSAGES),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2), st.binary(max_size=3)), max_size=3),
)
def test_damaged_events_come_out_as_on_the_schema_path(
    raw: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    """Bytes replaced, dropped or inserted anywhere in a valid event (inside a string, a
    number, a key, between tokens): the fast path never accepts what the schema path
    would not, and every rejection reads as before."""
    for at, cut, insert in edits:
        at %= len(raw) + 1
        raw = raw[:at] + insert + raw[at + cut :]
    result = parse_event(raw, max_bytes=65_536)
    assert repr(result) == repr(parse_event_schema(raw, max_bytes=65_536))


valid_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=8),
        "user_id": st.sampled_from(["u1", "u2", "u3"]),
        "type": st.sampled_from(EVENT_TYPES),
        "ts": st.integers(1_767_225_600_000, 1_767_225_600_000 + 30 * 86_400_000),
    },
    optional={
        "amount": st.floats(0, 10_000, allow_nan=False),
        "channel": st.sampled_from(["web", "mobile", "email", "sms", "store"]),
        "decision_id": st.text(min_size=1, max_size=40),
    },
)


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    """Fill what each type requires, so the stream stays valid."""
    if document["type"] == "purchase":
        document.setdefault("amount", 25.0)
        document["currency"] = "EUR"
    if document["type"].startswith("reward_"):
        document.setdefault("decision_id", "d-unknown")
    if document["type"] == "consent_updated":
        document["attributes"] = {"marketing": document["ts"] % 2 == 0}
    if document["type"] == "fraud_label":
        document["attributes"] = {"label": "cleared"}
    return document


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events, max_size=60), st.lists(st.binary(max_size=50), max_size=10))
def test_any_stream_yields_one_output_per_message_and_keeps_budgets(
    documents: list[dict[str, Any]], garbage: list[bytes]
) -> None:
    pipeline = Pipeline(
        Engine(PROGRAM, partitions=1), Metrics(CollectorRegistry()), max_event_bytes=65_536
    )
    tables = Tables(users={}, ledgers={})
    seen: set[tuple[str, str]] = set()
    spent = 0.0
    messages = [orjson.dumps(_complete(d)) for d in documents] + garbage
    for offset, raw in enumerate(messages):
        parsed = parse_event(raw, max_bytes=65_536)
        key = parsed.user_id.encode() if isinstance(parsed, Event) else None
        outputs = pipeline.handle(tables, SourcePosition("events", 0, offset, key), raw)
        if isinstance(parsed, Rejection):
            assert [o.role for o in outputs] == ["dead-letter"]
            continue
        repeat = (parsed.user_id, parsed.event_id) in seen
        seen.add((parsed.user_id, parsed.event_id))
        roles = [o.role for o in outputs]
        # One decision per new event, none for a repeat; fraud alerts may come beside.
        assert [r for r in roles if r != "fraud-alerts"] == ([] if repeat else ["decisions"])
        for output in outputs:
            if output.role == "fraud-alerts":
                continue
            decision = orjson.loads(output.value)
            spent += decision["cost"] if decision["status"] == "granted" else 0.0
    assert spent <= PROGRAM.budgets.periods[0].limit + 1e-6  # everything fits in one day
