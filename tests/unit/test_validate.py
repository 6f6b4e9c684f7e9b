"""The event validator: valid events accepted, invalid ones rejected naming the problem."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.contract import Event, Rejection, parse_event

MAX = 65_536


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "type": "page_view",
        "ts": "2026-03-01T12:00:00Z",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def parse(document: Any) -> Event | Rejection:
    return parse_event(orjson.dumps(document), max_bytes=MAX)


def rejected(document: Any) -> Rejection:
    result = parse(document)
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    return result


def test_minimal_event_is_accepted_and_ts_becomes_epoch_ms() -> None:
    result = parse(event())
    assert isinstance(result, Event)
    assert result.ts == 1_772_366_400_000
    assert result.attributes == {}


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2026-03-01T12:00:00Z", 1_772_366_400_000),
        ("2026-03-01T13:00:00+01:00", 1_772_366_400_000),
        ("2026-03-01T12:00:00.250Z", 1_772_366_400_250),
        (1_772_366_400_000, 1_772_366_400_000),
    ],
)
def test_timestamps_in_both_forms_mean_the_same_instant(ts: Any, expected_ms: int) -> None:
    result = parse(event(ts=ts))
    assert isinstance(result, Event)
    assert result.ts == expected_ms


def test_full_purchase_keeps_every_field() -> None:
    document = event(
        type="purchase",
        amount=42.5,
        currency="EUR",
        channel="mobile",
        device_id="d-9",
        ip="2001:db8::1",
        attributes={"sku": ["a", "b"]},
    )
    result = parse(document)
    assert isinstance(result, Event)
    assert result.to_document() == {**document, "ts": 1_772_366_400_000}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_id": "e-1", "user_id"', "bad_json"),
        (b"NaN", "bad_json"),
        (b'{"amount": 1e999}', "bad_json"),
        (b"\xff\xfe{}", "bad_encoding"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"[" * 5000 + b"]" * 5000, "bad_json"),
    ],
)
def test_unparseable_bytes_are_rejected(raw: bytes, reason: str) -> None:
    result = parse_event(raw, max_bytes=MAX)
    assert isinstance(result, Rejection)
    assert result.reason == reason


def test_oversized_is_rejected_before_parsing() -> None:
    raw = orjson.dumps(event(attributes={"blob": "x" * 1000}))
    result = parse_event(raw, max_bytes=500)
    assert isinstance(result, Rejection)
    assert result.reason == "oversized"
    assert str(len(raw)) in result.error


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (event(user_id=...), "user_id"),
        (event(type="teleport"), "type"),
        (event(event_id=""), "event_id"),
        (event(type="purchase"), "amount"),
        (event(type="purchase", amount="ten", currency="EUR"), "amount"),
        (event(type="purchase", amount=True, currency="EUR"), "amount"),
        (event(type="purchase", amount=-1, currency="EUR"), "amount"),
        (event(type="purchase", amount=5, currency="euro"), "currency"),
        (event(channel="fax"), "channel"),
        (event(type="reward_redeemed"), "decision_id"),
        (event(type="consent_updated", attributes={}), "attributes"),
        (event(type="consent_updated", attributes={"marketing": "no"}), "marketing"),
        (event(type="fraud_label", attributes={"label": "maybe"}), "label"),
        (event(attributes={"nested": {"deep": 1}}), "attributes.nested"),
        (event(attributes={f"k{i}": i for i in range(65)}), "attributes"),
        (event(colour="blue"), "colour"),
        (event(ts=True), "ts"),
        (event(user_id=12), "user_id"),
    ],
)
def test_schema_errors_name_the_field(document: dict[str, Any], names: str) -> None:
    result = rejected(document)
    assert result.reason == "schema"
    assert names in result.error, result.error


def test_rejection_keeps_the_event_id_when_it_can_be_read() -> None:
    assert rejected(event(event_id="e-77", type="teleport")).event_id == "e-77"


@pytest.mark.parametrize(
    "ts",
    [
        "yesterday",
        "2026-03-01",
        "2026-03-01T12:00:00",
        1_000,
        9_999_999_999_999,
        "1899-01-01T00:00:00Z",
    ],
)
def test_bad_timestamps_are_rejected(ts: Any) -> None:
    result = rejected(event(ts=ts))
    assert result.reason in ("bad_timestamp", "schema")
    assert "ts" in result.error


def test_ip_must_be_an_address() -> None:
    result = rejected(event(ip="999.1.1.1"))
    assert result.reason == "schema"
    assert "ip" in result.error


def test_odd_unicode_in_ids_is_kept_exactly() -> None:
    user = "ユーザー-\u200b-🎁"
    result = parse(event(user_id=user))
    assert isinstance(result, Event)
    assert result.user_id == user


def test_missing_type_is_reported_as_missing_type() -> None:
    result = rejected(event(type=...))
    assert "type" in result.error
    assert "amount" not in result.error


@pytest.mark.parametrize("ts", ["2026-03-01t12:00:00z", "2026-03-01 12:00:00+00:00"])
def test_rfc3339_variants_are_accepted(ts: str) -> None:
    result = parse(event(ts=ts))
    assert isinstance(result, Event)
    assert result.ts == 1_772_366_400_000


@pytest.mark.parametrize("ts", ["20260301T120000Z", "2026-02-30T12:00:00Z", "2026-03-01T12:00Z"])
def test_non_rfc3339_strings_are_rejected(ts: str) -> None:
    assert rejected(event(ts=ts)).reason == "bad_timestamp"
