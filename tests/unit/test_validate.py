"""The event validator: valid events accepted, invalid ones rejected naming the problem."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contract import REJECTION_REASONS, Event, Rejection, parse_event, validate_event
from app.contract.schemas import load_schema
from app.contract.validate import (
    _IPV4,
    MAX_TS_MS,
    MIN_TS_MS,
    _is_ip_address,
    _parse_fast,
    parse_event_schema,
)

MAX = 65_536
NOW = 1_772_366_400_000  # 2026-03-01T12:00:00Z, the worker's clock in the bound's tests


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
        (event(type="member_imported"), "attributes"),
        (event(type="member_imported", attributes={"age": 40}), "member_since"),
        (event(type="member_imported", attributes={"member_since": "2020-01-01"}), "member_since"),
        (event(type="member_imported", attributes={"member_since": 1_577_836_800}), "member_since"),
        (event(type="member_imported", attributes={"member_since": True}), "member_since"),
        (
            event(type="member_imported", device_id="d-1", attributes={"member_since": NOW}),
            "device_id must not be there",
        ),
        (
            event(type="member_imported", ip="10.0.0.1", attributes={"member_since": NOW}),
            "ip must not be there",
        ),
        (event(type="erasure_requested", device_id="d-1"), "device_id must not be there"),
        (event(type="erasure_requested", ip="10.0.0.1"), "ip must not be there"),
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


@pytest.mark.parametrize(
    ("ts", "error"),
    [
        (
            1_772_366_400,
            "ts 1772366400 is not epoch milliseconds from 2000-01-01 to 2100-01-01 "
            "(946684800000 up to 4102444800000); as epoch seconds it would be "
            "2026-03-01T12:00:00.000Z: send milliseconds",
        ),
        (
            1_772_366_400_000_000,
            "ts 1772366400000000 is not epoch milliseconds from 2000-01-01 to 2100-01-01 "
            "(946684800000 up to 4102444800000); as epoch microseconds it would be "
            "2026-03-01T12:00:00.000Z: send milliseconds",
        ),
        (
            0,
            "ts 0 is not epoch milliseconds from 2000-01-01 to 2100-01-01 "
            "(946684800000 up to 4102444800000)",
        ),
        (1_772_366_400_000.5, "ts 1772366400000.5 must be a whole number of epoch milliseconds"),
        (
            True,
            "ts must be an RFC 3339 string (for example 2026-01-31T12:00:00Z) or integer "
            "epoch milliseconds, got a boolean",
        ),
        (
            None,
            "ts must be an RFC 3339 string (for example 2026-01-31T12:00:00Z) or integer "
            "epoch milliseconds, got null",
        ),
        (
            "2026-03-01T12:00:00.0000000000000000000000000Z",
            "ts is 46 characters long; an RFC 3339 string (for example 2026-01-31T12:00:00Z) "
            "or integer epoch milliseconds is expected",
        ),
    ],
)
def test_a_ts_of_the_wrong_type_or_range_says_what_was_sent_and_what_is_expected(
    ts: Any, error: str
) -> None:
    # The schema offers a string or an integer; its own message says only that neither
    # matched. A count in seconds, the commonest mistake, is named as such.
    result = rejected(event(ts=ts))
    assert (result.reason, result.error) == ("schema", error)


def test_a_member_since_in_seconds_is_named_as_such() -> None:
    result = rejected(event(type="member_imported", attributes={"member_since": 1_577_836_800}))
    assert result.error == (
        "attributes.member_since 1577836800 is not epoch milliseconds from 2000-01-01 to "
        "2100-01-01 (946684800000 up to 4102444800000); as epoch seconds it would be "
        "2020-01-01T00:00:00.000Z: send milliseconds"
    )


@pytest.mark.parametrize(
    ("attributes", "got"),
    [
        ({"x": {"deep": 1}}, "got an object"),
        ({"x": "y" * 1025}, "got a string of 1025 characters"),
        ({"x": list(range(65))}, "got an array of 65 items"),
        ({"x": [1, [2]]}, "got an array holding an array"),
    ],
)
def test_an_attribute_of_the_wrong_shape_says_what_an_attribute_may_be(
    attributes: dict[str, Any], got: str
) -> None:
    result = rejected(event(attributes=attributes))
    assert result.error == (
        "attributes.x must be a string of at most 1024 characters, a number, a boolean, "
        f"null, or an array of at most 64 of these; {got}"
    )


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (
            event(type="consent_updated", attributes={}),
            "attributes of a consent_updated event must hold personalization or marketing "
            "(true or false), or both",
        ),
        (event(event_id=""), "event_id must not be empty"),
        (event(user_id="u" * 129), "user_id is 129 characters long; at most 128"),
        (event(ip="1"), "ip is 1 character long; at least 2"),
        (event(attributes={f"k{i}": i for i in range(65)}), "attributes has 65 fields; at most 64"),
    ],
)
def test_alternatives_lengths_and_counts_are_said_in_words(
    document: dict[str, Any], error: str
) -> None:
    assert rejected(document).error == error


def test_text_that_is_not_utf8_is_rejected_naming_the_byte_and_where() -> None:
    # "café" in Latin-1, as a producer on a legacy code page sends it.
    raw = '{"event_id":"e-1","user_id":"café","type":"page_view"}'.encode("latin-1")
    result = parse_event(raw, max_bytes=MAX)
    assert isinstance(result, Rejection)
    assert (result.reason, result.error) == (
        "bad_encoding",
        'not valid UTF-8: byte 0xe9 at offset 32 (after \'id":"e-1","user_id":"caf\'); '
        "an event is UTF-8 JSON",
    )


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


# ---------------------------------------------------------------- the event-time bound


def bounded(document: Any, now_ms: int | None = NOW, ahead: int | None = 300_000) -> Any:
    return parse_event(orjson.dumps(document), max_bytes=MAX, now_ms=now_ms, max_ahead_ms=ahead)


def test_ts_beyond_the_bound_is_rejected_naming_ts_clock_and_bound() -> None:
    result = bounded(event(event_id="e-9", ts=NOW + 300_001))
    assert isinstance(result, Rejection)
    assert (result.reason, result.event_id) == ("ts_in_future", "e-9")
    assert result.error == (
        "ts 1772366700001 (2026-03-01T12:05:00.001Z) is 300001 ms ahead of the worker's clock "
        "1772366400000 (2026-03-01T12:00:00.000Z); the bound is 300000 ms ahead "
        "(ts up to 1772366700000, 2026-03-01T12:05:00.000Z)"
    )
    assert "ts_in_future" in REJECTION_REASONS
    assert "ts_in_future" in load_schema("dead_letter")["properties"]["reason"]["enum"]


@pytest.mark.parametrize("ts", [NOW + 300_000, NOW + 1, NOW, NOW - 30 * 86_400_000])
def test_ts_up_to_the_bound_or_in_the_past_is_accepted(ts: int) -> None:
    result = bounded(event(ts=ts))
    assert isinstance(result, Event)
    assert result.ts == ts


@pytest.mark.parametrize(("now_ms", "ahead"), [(None, None), (NOW, None), (None, 0)])
def test_without_both_clock_and_bound_nothing_is_bounded(
    now_ms: int | None, ahead: int | None
) -> None:
    assert isinstance(bounded(event(ts="2099-12-31T23:59:59Z"), now_ms, ahead), Event)


def test_a_clock_outside_the_calendar_is_named_in_ms_only() -> None:
    result = bounded(event(ts=NOW), now_ms=-(10**18), ahead=0)
    assert isinstance(result, Rejection)
    assert "clock -1000000000000000000 (out of the calendar's range)" in result.error


def test_a_string_ts_is_bounded_as_the_instant_it_names() -> None:
    result = bounded(event(ts="2026-03-01T13:00:01+01:00"), ahead=0)  # one second ahead
    assert isinstance(result, Rejection)
    assert result.reason == "ts_in_future"
    assert result.error.startswith("ts 1772366401000 (2026-03-01T12:00:01.000Z) is 1000 ms ahead")


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (event(type="teleport", ts=NOW + 86_400_000), "schema"),
        (event(ip="999.1.1.1", ts=NOW + 86_400_000), "schema"),
        (event(ts="2126-03-01T12:00:00Z"), "bad_timestamp"),
    ],
)
def test_an_invalid_event_keeps_its_own_reason_under_a_bound(
    document: dict[str, Any], reason: str
) -> None:
    assert bounded(document, ahead=0).reason == reason


def imported(member_since: Any, **fields: Any) -> dict[str, Any]:
    return event(type="member_imported", attributes={"member_since": member_since}, **fields)


def test_an_imported_members_date_beyond_the_bound_is_rejected_naming_member_since() -> None:
    result = bounded(imported(NOW + 300_001, event_id="e-8"))
    assert isinstance(result, Rejection)
    assert (result.reason, result.event_id) == ("ts_in_future", "e-8")
    assert result.error == (
        "attributes.member_since 1772366700001 (2026-03-01T12:05:00.001Z) is 300001 ms ahead "
        "of the worker's clock 1772366400000 (2026-03-01T12:00:00.000Z); the bound is "
        "300000 ms ahead (attributes.member_since up to 1772366700000, 2026-03-01T12:05:00.000Z)"
    )
    # The event's own time is checked first, and named.
    late = bounded(imported(NOW + 400_000, ts=NOW + 300_001))
    assert isinstance(late, Rejection)
    assert late.error.startswith("ts 1772366700001 ")
    # Both paths, and the schema path alone, agree.
    for float_since in (False, True):
        since: Any = float(NOW + 300_001) if float_since else NOW + 300_001
        raw = orjson.dumps(imported(since))
        fast = parse_event(raw, max_bytes=MAX, now_ms=NOW, max_ahead_ms=300_000)
        direct = validate_event(imported(since), now_ms=NOW, max_ahead_ms=300_000)
        assert isinstance(fast, Rejection)
        assert fast == direct


@pytest.mark.parametrize("since", [NOW + 300_000, NOW, NOW - 10 * 365 * 86_400_000, MIN_TS_MS])
def test_an_imported_members_date_up_to_the_bound_or_in_the_past_is_accepted(since: int) -> None:
    document = event(type="member_imported", attributes={"member_since": since, "age": 41})
    result = bounded(document)
    assert isinstance(result, Event)
    assert result.type == "member_imported"
    assert result.attributes == {"member_since": since, "age": 41}


def test_without_a_clock_an_imported_members_date_is_not_bounded() -> None:
    assert isinstance(bounded(imported(MAX_TS_MS - 1), None, None), Event)
    assert isinstance(parse(imported(MAX_TS_MS - 1)), Event)


def test_both_paths_apply_the_bound() -> None:
    # An attribute integer beyond int64 is valid but left to the schema path.
    document = event(ts=NOW + 3_600_000, attributes={"n": 2**63})
    raw = orjson.dumps(document)
    assert _parse_fast(raw) is None
    slow = parse_event(raw, max_bytes=MAX, now_ms=NOW, max_ahead_ms=60_000)
    fast = bounded(event(ts=NOW + 3_600_000), ahead=60_000)
    direct = validate_event(document, now_ms=NOW, max_ahead_ms=60_000)
    assert isinstance(slow, Rejection)
    assert isinstance(fast, Rejection)
    assert slow.reason == fast.reason == "ts_in_future"
    assert slow == direct
    assert slow.error == fast.error


# ---------------------------------------------------------------- fast path = schema path

# The fast path (msgspec) only accepts; the schema path (orjson + fastjsonschema) writes
# every rejection. These check that the two accept the same documents, and that whatever
# the fast path accepts comes out as the schema path would build it.

EVENT_SCHEMA = load_schema("event")
TYPES: list[str] = EVENT_SCHEMA["properties"]["type"]["enum"]
CHANNELS: list[str] = EVENT_SCHEMA["properties"]["channel"]["enum"]
FIELDS = list(EVENT_SCHEMA["properties"])
BIG = 1 << 22  # above any document generated here: size is checked before either path
# FUZZ_FACTOR=50 runs these properties with 50 times more examples (as `make fuzz` does
# for test_hostile_input.py).
FUZZ_FACTOR = max(1, int(os.environ.get("FUZZ_FACTOR", "1")))


def test_fast_path_was_written_for_this_event_schema() -> None:
    canonical = json.dumps(EVENT_SCHEMA, sort_keys=True).encode()
    assert hashlib.sha256(canonical).hexdigest() == (
        "d5534ec74b470a1e7f975dd9b5801f9895775360f9c4403a54515dfe15ad39d8"
    ), (
        "event.schema.json changed: make _WireEvent and _meets_type_rules in "
        "app/contract/validate.py mirror it (the property tests below compare them with the "
        "schema, add cases for what changed), then update this digest"
    )


class Raw(str):
    """A JSON token written as it is: NaN, 1e309, an escaped key, ..."""


class Pairs(list[tuple[Any, Any]]):
    """An object written from (key, value) pairs, so that a key can repeat."""


def encode(value: Any) -> bytes:
    """JSON text that orjson cannot write: repeated keys, any integer, raw tokens."""
    if isinstance(value, Raw):
        return value.encode()
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return orjson.dumps(value)
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, dict):
        value = Pairs(value.items())
    if isinstance(value, Pairs):
        return b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in value) + b"}"
    return b"[" + b",".join(encode(item) for item in value) + b"]"


def strict(result: Event | Rejection | None) -> str:
    """Equality that tells 1 from 1.0 and 0.0 from -0.0 (the repr of every field)."""
    return repr(result)


RAW_TOKENS = [
    "NaN",
    "-Infinity",
    "Infinity",
    "1e309",
    "-1e309",
    "1e-400",
    "-0",
    "-0.0",
    "1E3",
    "1.0",
    "1772366400000.0",
    "1.7723664e12",
    "1772366400000.5",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "100000000000000000000000000000",
    '"\\u0041BC"',
    '"\\ud83c\\udf81"',
    '"2026-03-01T12:00:00\\u005a"',
]
TS_STRINGS = [
    "2026-03-01T12:00:00Z",
    "2026-03-01t12:00:00.5z",
    "2026-03-01 12:00:00.123456789+05:30",
    "2026-03-01T12:00:00.1234567891Z",
    "2026-02-30T12:00:00Z",
    "2026-03-01T24:00:00Z",
    "2026-03-01T12:00:00+24:00",
    "1999-12-31T23:59:59.999Z",
    "2000-01-01T00:00:00Z",
    "2099-12-31T23:59:59.999Z",
    "2100-01-01T00:00:00Z",
    "2000-01-01T00:00:00+00:01",
    "2026-03-01T12:00:00",
    "\u0662026-03-01T12:00:00Z",
]
IP_STRINGS = ["10.0.0.1", "01.2.3.4", "256.1.1.1", "::1", "fe80::1%eth0", "1.2.3.4/24", "1.2.3"]
TEXT_LIKE = [
    "EUR",
    "EUR\n",
    "eur",
    "EURO",
    "EU",
    "\u00c9UR",
    "x" * 128,
    "x" * 129,
    "x" * 64,
    *TS_STRINGS,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
ids = st.text(min_size=1, max_size=12) | st.sampled_from(["x" * 128, "ユーザー-\u200b-🎁"])
valid_ts = st.one_of(
    st.integers(MIN_TS_MS, MAX_TS_MS - 1),
    st.builds(
        lambda moment, zone, sep, spec: (
            moment.replace(tzinfo=zone).isoformat(sep=sep, timespec=spec).replace("+00:00", "Z")
        ),
        st.datetimes(datetime(2000, 1, 2), datetime(2099, 12, 30)),
        st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
        ),
        st.sampled_from(["T", "t", " "]),
        st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    ),
)
valid_values: dict[str, st.SearchStrategy[Any]] = {
    "event_id": ids,
    "user_id": ids,
    "type": st.sampled_from(TYPES),
    "ts": valid_ts,
    "amount": st.floats(0, 1e9) | st.integers(0, 10**9),
    "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
    "channel": st.sampled_from(CHANNELS),
    "device_id": ids,
    "ip": st.ip_addresses().map(str),
    "decision_id": st.text(min_size=1, max_size=64),
    "attributes": st.dictionaries(
        st.text(max_size=8), scalars | st.lists(scalars, max_size=4), max_size=4
    ),
}
odd_values: dict[str, st.SearchStrategy[Any]] = {
    "ts": st.sampled_from(TS_STRINGS) | st.sampled_from([MIN_TS_MS - 1, MAX_TS_MS]),
    "ip": st.sampled_from(IP_STRINGS),
    "currency": st.sampled_from(TEXT_LIKE[:6]),
}
hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(MIN_TS_MS - 2, MIN_TS_MS + 1) | st.integers(MAX_TS_MS - 2, MAX_TS_MS + 1),
    st.sampled_from([-1, 10**9, 10**9 + 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 1e9, 1e9 + 0.5, 1000000000.0000001]),
    st.sampled_from(RAW_TOKENS).map(Raw),
    st.text(max_size=12),
    st.text(min_size=40, max_size=46),
    st.sampled_from(TYPES + CHANNELS + TEXT_LIKE + IP_STRINGS),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)
member_since_values = st.one_of(
    st.integers(MIN_TS_MS, MAX_TS_MS - 1),
    st.integers(MIN_TS_MS - 2, MIN_TS_MS + 1) | st.integers(MAX_TS_MS - 2, MAX_TS_MS + 1),
    st.sampled_from([1_772_366_400_000.0, 1_772_366_400_000.5, True, "1772366400000", None]),
    st.sampled_from(["1772366400000.0", "1.7723664e12", "1e12", "-0"]).map(Raw),
)
attribute_names = st.one_of(
    st.sampled_from(
        ["marketing", "personalization", "label", "member_since", Raw('"m\\u0061rketing"')]
    ),
    st.text(max_size=8),
    st.integers(62, 66).map(lambda n: "\u00fc" * n),
)
attribute_values = st.one_of(
    scalars,
    hostile_values,
    st.sampled_from(["confirmed", "cleared", "Confirmed"]),
    st.lists(scalars | st.sampled_from(RAW_TOKENS).map(Raw) | st.lists(scalars), max_size=3),
    st.integers(62, 66).map(lambda n: [1] * n),
    st.integers(1022, 1026).map(lambda n: "\U0001f381" * n),
)


def _set(pairs: Pairs, key: Any, value: Any) -> None:
    for i, (k, _) in enumerate(pairs):
        if k == key:
            pairs[i] = (key, value)
            return
    pairs.append((key, value))


@st.composite
def near_valid_documents(draw: st.DrawFn) -> bytes:
    """A valid event of some type, then up to three of: a field dropped, a field set to an
    odd or wrong value, an attribute added or changed, a key repeated."""
    kind = draw(st.sampled_from(TYPES))
    pairs = Pairs(
        [
            ("event_id", draw(ids)),
            ("user_id", draw(ids)),
            ("type", kind),
            ("ts", draw(valid_ts)),
        ]
    )
    for name in ("amount", "currency", "channel", "device_id", "ip", "decision_id", "attributes"):
        if draw(st.booleans()):
            _set(pairs, name, draw(valid_values[name]))
    if kind == "purchase":
        _set(pairs, "amount", draw(valid_values["amount"]))
        _set(pairs, "currency", draw(valid_values["currency"]))
    if kind.startswith("reward_"):
        _set(pairs, "decision_id", draw(valid_values["decision_id"]))
    if kind == "consent_updated":
        _set(pairs, "attributes", {draw(st.sampled_from(["marketing", "personalization"])): True})
    if kind == "fraud_label":
        _set(pairs, "attributes", {"label": draw(st.sampled_from(["confirmed", "cleared"]))})
    if kind == "member_imported":
        if draw(st.integers(0, 3)):  # an import names no device nor address (mostly)
            pairs[:] = Pairs([(k, v) for k, v in pairs if k not in ("device_id", "ip")])
        attributes = {"member_since": draw(member_since_values)}
        if draw(st.booleans()):
            attributes |= draw(valid_values["attributes"])
        _set(pairs, "attributes", attributes)
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["drop", "set", "set", "odd", "attribute", "repeat"]))
        if mutation == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif mutation == "set":
            name = draw(st.sampled_from([*FIELDS, "colour", "Type", Raw('"event\\u005fid"')]))
            _set(pairs, name, draw(valid_values.get(name, hostile_values) | hostile_values))
        elif mutation == "odd":
            name = draw(st.sampled_from(sorted(odd_values)))
            _set(pairs, name, draw(odd_values[name]))
        elif mutation == "attribute":
            current = next((v for k, v in pairs if k == "attributes"), None)
            attributes = dict(current) if isinstance(current, dict) else {}
            if draw(st.booleans()):
                attributes[draw(attribute_names)] = draw(attribute_values)
            else:
                attributes = {f"k{i}": i for i in range(draw(st.integers(62, 66)))}
            _set(pairs, "attributes", attributes)
        elif mutation == "repeat":
            name = draw(st.sampled_from(["type", "ts", "amount", "event_id", "attributes"]))
            pairs.append((name, draw(valid_values[name] | hostile_values)))
    return encode(pairs)


def _left_to_the_schema_path(raw: bytes) -> bool:
    """The valid events the fast path declines: an attribute integer outside int64 (orjson
    reads it as a float, msgspec as an int), and a key that repeats with an earlier value
    that is invalid (the last one counts, but msgspec checks each)."""
    repeated = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        repeated = repeated or len({k for k, _ in pairs}) < len(pairs)
        return dict(pairs)

    document = json.loads(raw, object_pairs_hook=pairs_hook)
    attributes = document.get("attributes")
    if repeated or not isinstance(attributes, dict):
        return repeated
    values = [x for v in attributes.values() for x in (v if isinstance(v, list) else [v])]
    return any(type(x) is int and not -(2**63) <= x < 2**63 for x in values)


@settings(
    max_examples=1000 * FUZZ_FACTOR, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(near_valid_documents())
def test_fast_path_and_schema_path_accept_the_same_documents(raw: bytes) -> None:
    reference = parse_event_schema(raw, max_bytes=BIG)
    fast = _parse_fast(raw)
    if fast is not None:
        assert isinstance(reference, Event), (raw, reference)
        assert strict(fast) == strict(reference), raw
    else:
        assert isinstance(reference, Rejection) or _left_to_the_schema_path(raw), reference
    assert strict(parse_event(raw, max_bytes=BIG)) == strict(reference)


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"\xef\xbb\xbf" + orjson.dumps(event()), "bad_encoding"),  # a byte order mark
        (orjson.dumps(event())[:-1] + b',"amount":NaN}', "bad_json"),
        (orjson.dumps(event())[:-1] + b',"attributes":{"x":-Infinity}}', "bad_json"),
        (orjson.dumps(event())[:-1] + b',"attributes":{"x":1e309}}', "bad_json"),
        (orjson.dumps(event())[:-1] + b',"amount":1e309}', "bad_json"),
        (
            b'{"event_id":"e\\ud800","user_id":"u","type":"page_view","ts":1772366400000}',
            "bad_json",
        ),
        (
            b'{"event_id":"e\xff","user_id":"u","type":"page_view","ts":1772366400000}',
            "bad_encoding",
        ),
        (
            b'{"event_id":"e\xed\xa0\x80","user_id":"u","type":"signup","ts":1772366400000}',
            "bad_encoding",
        ),
        (orjson.dumps(event()) + b" x", "bad_json"),
        (b" \t\r\n" + orjson.dumps(event()) + b"\n", "event"),
        (b"null", "not_an_object"),
        (b"12", "not_an_object"),
        (orjson.dumps(event())[:-1] + b',"type":"purchase"}', "schema"),  # the last type counts
        (orjson.dumps(event())[:-1] + b',"event_id":"e-2"}', "event"),
        (b'{"event\\u005fid":"e","user_id":"u","type":"signup","ts":1772366400000}', "event"),
        (b'{"event_id":"e","user_id":"u","type":"sign\\u0075p","ts":1772366400000}', "event"),
        (b'{"event_id":"e","user_id":"u","type":"signup\\u0000","ts":1772366400000}', "schema"),
        (orjson.dumps(event(currency=None)), "schema"),  # null is not "left out"
        (orjson.dumps(event(currency="EUR\n")), "schema"),
        (orjson.dumps(event(ts=1_772_366_400_000.0)), "event"),  # an integral float is an integer
        (orjson.dumps(event())[:-1] + b',"ts":1.7723664e12}', "event"),
        (orjson.dumps(event(ts=1_772_366_400_000.5)), "schema"),
        (orjson.dumps(event(attributes={"n": 2**63 - 1})), "event"),
        (orjson.dumps(event())[:-1] + b',"attributes":{"n":18446744073709551615}}', "event"),
        (orjson.dumps(event())[:-1] + b',"attributes":{"n":100000000000000000000000}}', "event"),
        (orjson.dumps(event(attributes={"\U0001f381" * 64: "\U0001f381" * 1024})), "event"),
        (orjson.dumps(event(attributes={"\U0001f381" * 65: 1})), "schema"),
        (orjson.dumps(event(attributes={"k": "\U0001f381" * 1025})), "schema"),
        (
            orjson.dumps(event())[:-1]
            + b',"attributes":{'
            + b",".join(b'"k%d":1' % i for i in range(64))
            + b',"k0":2}}',
            "event",
        ),  # 65 pairs, 64 names
        (orjson.dumps(event(type="consent_updated", attributes={"marketing": [True]})), "schema"),
        (orjson.dumps(event(type="fraud_label", attributes={"label": ["cleared"]})), "schema"),
        (orjson.dumps(imported(1_772_366_400_000)), "event"),
        (orjson.dumps(imported(1_772_366_400_000.0)), "event"),  # an integral float
        (orjson.dumps(imported(0)).replace(b":0}", b":1.7723664e12}"), "event"),
        (orjson.dumps(imported(1_772_366_400_000.5)), "schema"),
        (orjson.dumps(imported([1_772_366_400_000])), "schema"),
        (orjson.dumps(imported(MAX_TS_MS)), "schema"),
        (orjson.dumps(imported(MIN_TS_MS, device_id="d")), "schema"),
        (orjson.dumps(event(attributes={"member_since": "long ago"})), "event"),  # not an import
        (orjson.dumps(event(ip="fe80::1%eth0")), "event"),
        (orjson.dumps(event(ip="010.1.1.1")), "schema"),
    ],
)
def test_json_edge_cases_come_out_as_on_the_schema_path(raw: bytes, outcome: str) -> None:
    result = parse_event(raw, max_bytes=MAX)
    assert strict(result) == strict(parse_event_schema(raw, max_bytes=MAX))
    assert (result.reason if isinstance(result, Rejection) else "event") == outcome, result


def test_an_attribute_integer_beyond_int64_is_kept_as_the_schema_path_reads_it() -> None:
    wide = orjson.dumps(event())[:-1] + b',"attributes":{"u64":18446744073709551615,"big":1e23}}'
    huge = orjson.dumps(event())[:-1] + b',"attributes":{"n":100000000000000000000000}}'
    assert _parse_fast(wide) is None
    assert _parse_fast(huge) is None
    wide_event = parse_event(wide, max_bytes=MAX)
    huge_event = parse_event(huge, max_bytes=MAX)
    assert isinstance(wide_event, Event)
    assert isinstance(huge_event, Event)
    assert wide_event.attributes == {"u64": 2**64 - 1, "big": 1e23}
    assert huge_event.attributes == {"n": 1e23}
    assert isinstance(huge_event.attributes["n"], float)


octets = st.one_of(
    st.integers(0, 300).map(str),
    st.from_regex(r"\A0[0-9]{1,2}\Z"),
    st.text("0123456789\u0661", max_size=4),
)


@settings(max_examples=500 * FUZZ_FACTOR, deadline=None)
@given(
    st.lists(octets, min_size=1, max_size=5).map(".".join)
    | st.ip_addresses().map(str)
    | st.text(max_size=45)
)
def test_the_ipv4_shortcut_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        expected = False
    else:
        expected = True
    if _IPV4.fullmatch(text):
        assert expected, text
    assert _is_ip_address(text) is expected
