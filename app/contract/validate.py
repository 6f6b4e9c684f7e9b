"""Turn the bytes of one Kafka message into an :class:`Event`, or say exactly why not.

Validation never raises on input: :func:`parse_event` returns either an
``Event`` or a :class:`Rejection` whose ``reason`` is one of a small fixed set
(used as a metric label and in the dead-letter record) and whose ``error`` names
the field and the problem in words.

Two paths give one answer. The fast path decodes the bytes straight into a typed
msgspec mirror of ``schemas/event.schema.json`` (:data:`_WireEvent` plus the
per-type rules in :func:`_meets_type_rules`), a few microseconds for a valid event. It
only ever accepts. Whatever it declines goes to the schema path,
:func:`parse_event_schema`: orjson, the JSON Schema through fastjsonschema, then the
timestamp and IP checks, some 20 microseconds. That path decides every rejection and
writes its message, so errors read exactly as they always did. An event the fast path
accepts is one the schema path accepts, field for field. The fast path declines no
valid event but two oddities: an attribute integer outside the signed 64-bit range, and
a key repeated with an invalid earlier value (the last value counts; msgspec checks
each). ``tests/unit/test_validate.py`` checks all this with generated documents.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

import fastjsonschema
import msgspec
import orjson

from app.contract.records import Event
from app.contract.schemas import load_schema

# Timestamps outside these bounds are errors, not events: 2000-01-01 to 2100-01-01.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000

REJECTION_REASONS: Final = (
    "empty",
    "oversized",
    "bad_encoding",
    "bad_json",
    "not_an_object",
    "schema",
    "bad_timestamp",
    "ts_in_future",
    "unauthorized",
)

_EVENT_SCHEMA: Final = load_schema("event")
_check_event_schema = fastjsonschema.compile(_EVENT_SCHEMA)
# RFC 3339 date-time (section 5.6): full date, "T" (or a space, as section 5.6 notes), time, zone.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# A dotted quad exactly as ipaddress.IPv4Address reads one (decimal octets 0-255, no
# leading zeros): a match is an address; anything else asks ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is not a valid event."""

    reason: str
    error: str
    event_id: str | None = None


def parse_event(
    raw: bytes | None,
    *,
    max_bytes: int,
    now_ms: int | None = None,
    max_ahead_ms: int | None = None,
) -> Event | Rejection:
    """Decode and validate one message value (None for a record without a value).

    With both ``now_ms`` (the worker's clock, epoch ms) and ``max_ahead_ms``, a valid
    event whose ``ts`` is more than ``max_ahead_ms`` after ``now_ms`` is rejected as
    ``ts_in_future``; without them any ``ts`` in the contract's range is accepted.
    """
    if not raw:
        return Rejection("empty", "the message has no value")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"event is {len(raw)} bytes; the limit is {max_bytes}")
    result: Event | Rejection | None = _parse_fast(raw)
    if result is None:
        result = _parse_with_schema(raw)
    if now_ms is None or max_ahead_ms is None or not isinstance(result, Event):
        return result
    return _bound_ahead(result, now_ms, max_ahead_ms)


def parse_event_schema(raw: bytes | None, *, max_bytes: int) -> Event | Rejection:
    """:func:`parse_event` on the schema path alone, without the fast path: the reference
    the fast path is checked against, and the cost it saves
    (``harness.bench.validate_speed``)."""
    if not raw:
        return Rejection("empty", "the message has no value")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"event is {len(raw)} bytes; the limit is {max_bytes}")
    return _parse_with_schema(raw)


def validate_event(
    document: dict[str, Any], *, now_ms: int | None = None, max_ahead_ms: int | None = None
) -> Event | Rejection:
    """Validate a decoded JSON object against the event contract (the schema path)."""
    event_id = document.get("event_id") if isinstance(document.get("event_id"), str) else None
    try:
        _check_event_schema(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Rejection("schema", _describe_schema_error(exc), event_id)
    ts_ms = parse_timestamp(document["ts"])
    if isinstance(ts_ms, str):
        return Rejection("bad_timestamp", ts_ms, event_id)
    ip = document.get("ip")
    if ip is not None and not _is_ip_address(ip):
        return Rejection("schema", f"ip {ip!r} is not an IPv4 or IPv6 address", event_id)
    event = Event.from_document(document, ts_ms)
    if now_ms is None or max_ahead_ms is None:
        return event
    return _bound_ahead(event, now_ms, max_ahead_ms)


def parse_timestamp(value: str | int | float) -> int | str:
    """Epoch milliseconds for an RFC 3339 string or epoch-ms number, or the error."""
    if isinstance(value, str):
        if not _RFC3339.fullmatch(value):
            return (
                f"ts {value!r} is not an RFC 3339 timestamp with a date, a time and a zone "
                "(for example 2026-01-31T12:00:00Z)"
            )
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            return f"ts {value!r} is not a real date and time"
        ts_ms = int(moment.timestamp() * 1000)
    else:
        ts_ms = int(value)
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        return f"ts {value!r} is outside 2000-01-01 .. 2100-01-01"
    return ts_ms


def _parse_with_schema(raw: bytes) -> Event | Rejection:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            return Rejection("bad_encoding", _describe_bad_utf8(raw) or f"not valid JSON: {exc}")
        return Rejection("bad_json", f"not valid JSON: {exc}")
    if not isinstance(document, dict):
        return Rejection("not_an_object", f"an event is a JSON object, got {_json_kind(document)}")
    return validate_event(document)


# ---------------------------------------------------------------- the fast path


def _enum(*path: str) -> Any:
    """``Literal`` of an enum in the event schema, so a value added there is known here."""
    node: Any = _EVENT_SCHEMA
    for key in path:
        node = node[key]
    return Literal[tuple(node["enum"])]


def _text(min_length: int = 0, max_length: int | None = None) -> Any:
    return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length)]


# The schema's "number" is an int or a float. orjson reads an integer beyond the 64-bit
# ranges as a float, where msgspec would keep an int: the fast path takes signed 64-bit
# integers only and leaves the others to the schema path.
_SCALAR: Final[Any] = (
    _text(max_length=1024)
    | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    | float
    | bool
    | None
)
_ATTRIBUTES: Final[Any] = Annotated[
    # (Types built at run time: mypy reads them as values, hence the ignore.)
    dict[_text(max_length=64), _SCALAR | Annotated[list[_SCALAR], msgspec.Meta(max_length=64)]],  # type: ignore[misc]
    msgspec.Meta(max_length=64),
]
_TS: Final[Any] = (
    _text(max_length=40) | Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)] | float
)
# Three characters as well as the pattern: "EUR\n" matches ^[A-Z]{3}$ under re.search
# (fastjsonschema reads the $ as \Z).
_CURRENCY: Final[Any] = Annotated[
    str, msgspec.Meta(min_length=3, max_length=3, pattern="^[A-Z]{3}$")
]
# The event schema's properties as msgspec types. An optional field's default is None
# while its type excludes None: msgspec does not check defaults, so a field left out
# reads None and a field sent as null is an error, as in the schema. A float ts is
# allowed here only to be checked below (the schema takes an integral float as an
# integer).
_WireEvent: Final[Any] = msgspec.defstruct(
    "_WireEvent",
    [
        ("event_id", _text(1, 128)),
        ("user_id", _text(1, 128)),
        ("type", _enum("properties", "type")),
        ("ts", _TS),
        ("amount", Annotated[float, msgspec.Meta(ge=0, le=1_000_000_000)], None),
        ("currency", _CURRENCY, None),
        ("channel", _enum("properties", "channel"), None),
        ("device_id", _text(1, 128), None),
        ("ip", _text(2, 45), None),
        ("decision_id", _text(1, 64), None),
        ("attributes", _ATTRIBUTES, None),
    ],
    forbid_unknown_fields=True,
    gc=False,
)
_decode_wire: Final = msgspec.json.Decoder(_WireEvent).decode
# The schema's allOf[1]: the types that need a decision_id; allOf[3]: fraud_label's labels.
_OUTCOME_TYPES: Final = frozenset(_EVENT_SCHEMA["allOf"][1]["if"]["properties"]["type"]["enum"])
_FRAUD_LABELS: Final = tuple(
    _EVENT_SCHEMA["allOf"][3]["then"]["properties"]["attributes"]["properties"]["label"]["enum"]
)


def _parse_fast(raw: bytes) -> Event | None:
    """The event, if the typed decode and the schema's per-type rules accept it; else None."""
    try:
        wire = _decode_wire(raw)
    except msgspec.DecodeError:  # malformed JSON, and msgspec.ValidationError
        return None
    if not _meets_type_rules(wire):
        return None
    ts = wire.ts
    if type(ts) is int:  # range checked by the decoder
        ts_ms = ts
    elif type(ts) is str:
        parsed = parse_timestamp(ts)
        if isinstance(parsed, str):
            return None
        ts_ms = parsed
    elif ts.is_integer() and MIN_TS_MS <= ts < MAX_TS_MS:
        ts_ms = int(ts)
    else:
        return None
    ip = wire.ip
    if ip is not None and not _is_ip_address(ip):
        return None
    return Event(
        wire.event_id,
        wire.user_id,
        wire.type,
        ts_ms,
        wire.amount,
        wire.currency,
        wire.channel,
        wire.device_id,
        ip,
        wire.decision_id,
        {} if wire.attributes is None else wire.attributes,
    )


def _meets_type_rules(wire: Any) -> bool:
    """The schema's ``allOf``: what each event type requires beyond the common fields."""
    kind = wire.type
    if kind == "purchase":
        return wire.amount is not None and wire.currency is not None
    if kind in _OUTCOME_TYPES:
        return wire.decision_id is not None
    attributes = wire.attributes
    if kind == "consent_updated":
        return (
            attributes is not None
            and ("personalization" in attributes or "marketing" in attributes)
            and isinstance(attributes.get("personalization", False), bool)
            and isinstance(attributes.get("marketing", False), bool)
        )
    if kind == "fraud_label":
        return attributes is not None and attributes.get("label") in _FRAUD_LABELS
    if kind == "member_imported":
        return (
            wire.device_id is None
            and wire.ip is None
            and attributes is not None
            and _is_epoch_ms(attributes.get("member_since"))
        )
    if kind == "erasure_requested":  # it names the user only: nothing to remember
        return wire.device_id is None and wire.ip is None
    return True


def _is_epoch_ms(value: Any) -> bool:
    """The schema's integer epoch milliseconds in range (an integral float is an integer)."""
    kind = type(value)
    return (kind is int or (kind is float and value.is_integer())) and (
        MIN_TS_MS <= value < MAX_TS_MS
    )


# ---------------------------------------------------------------- shared checks and messages


def _bound_ahead(event: Event, now_ms: int, max_ahead_ms: int) -> Event | Rejection:
    """``event``, or its rejection if its time (or, for an imported member, the date they
    became one) is further ahead of the worker's clock than the bound."""
    rejection = _ahead("ts", event.ts, event, now_ms, max_ahead_ms)
    if rejection is None and event.type == "member_imported":
        since = int(event.attributes["member_since"])
        rejection = _ahead("attributes.member_since", since, event, now_ms, max_ahead_ms)
    return event if rejection is None else rejection


def _ahead(name: str, ms: int, event: Event, now_ms: int, max_ahead_ms: int) -> Rejection | None:
    ahead = ms - now_ms
    if ahead <= max_ahead_ms:
        return None
    latest = now_ms + max_ahead_ms
    return Rejection(
        "ts_in_future",
        f"{name} {ms} ({_iso(ms)}) is {ahead} ms ahead of the worker's clock "
        f"{now_ms} ({_iso(now_ms)}); the bound is {max_ahead_ms} ms ahead "
        f"({name} up to {latest}, {_iso(latest)})",
        event.event_id,
    )


def _iso(ms: int) -> str:
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return "out of the calendar's range"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=8192)  # addresses repeat, and ipaddress takes microseconds
def _is_ip_address(text: str) -> bool:
    if _IPV4.fullmatch(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _describe_schema_error(exc: fastjsonschema.JsonSchemaValueException) -> str:
    # fastjsonschema names the root "data"; users know their fields by name.
    path = [str(part) for part in (exc.path or [])[1:]]
    field = ".".join(path) or "event"
    # Where the schema offers alternatives (oneOf, anyOf) fastjsonschema says only that
    # none matched; these say what was sent and what would have been valid.
    if path == ["ts"] or path == ["attributes", "member_since"]:
        if exc.rule in ("oneOf", "minimum", "exclusiveMaximum"):
            return _describe_bad_epoch_ms(field, exc.value)
    elif len(path) == 2 and path[0] == "attributes" and exc.rule == "oneOf":
        return (
            f"{field} must be a string of at most 1024 characters, a number, a boolean, "
            f"null, or an array of at most 64 of these; got {_attribute_kind(exc.value)}"
        )
    elif path == ["attributes"] and exc.rule == "anyOf":
        return (
            "attributes of a consent_updated event must hold personalization or marketing "
            "(true or false), or both"
        )
    elif exc.rule == "minLength" and isinstance(exc.value, str):
        if not exc.value:
            return f"{field} must not be empty"
        return f"{field} is {_characters(len(exc.value))} long; at least {exc.rule_definition}"
    elif exc.rule == "maxLength" and isinstance(exc.value, str):
        return f"{field} is {_characters(len(exc.value))} long; at most {exc.rule_definition}"
    elif exc.rule == "maxProperties" and isinstance(exc.value, dict):
        return f"{field} has {len(exc.value)} fields; at most {exc.rule_definition}"
    message = str(exc.message)
    if message.startswith(str(exc.name)):
        message = message[len(str(exc.name)) :].strip()
    if message.startswith("must contain [") and message.endswith(" properties"):
        missing = message[len("must contain ") : -len(" properties")]
        message = f"is missing required field(s) {missing}"
    elif message.startswith("must not contain {") and message.endswith(" properties"):
        unknown = message[len("must not contain ") : -len(" properties")]
        message = f"has unknown field(s) {unknown}; extra data belongs in attributes"
    return f"{field} {message}"


def _describe_bad_utf8(raw: bytes) -> str | None:
    """Where ``raw`` stops being UTF-8 (orjson names the start of the document), or None
    where it decodes (a lone surrogate escaped in a string, which orjson refuses too)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        if exc.start:
            before = raw[max(0, exc.start - 24) : exc.start].decode("utf-8", "replace")
            where += f" (after {before!r})"
        return f"not valid UTF-8: {where}; an event is UTF-8 JSON"
    return None


def _describe_bad_epoch_ms(field: str, value: Any) -> str:
    """Why ``value`` is not a usable time for ``field``: its JSON type, a fraction, or a
    count out of range, with the instant it would be in seconds or microseconds, the
    usual mistakes."""
    expected = (
        "an RFC 3339 string (for example 2026-01-31T12:00:00Z) or integer epoch milliseconds"
        if field == "ts"
        else "integer epoch milliseconds"
    )
    if isinstance(value, str):
        return f"{field} is {_characters(len(value))} long; {expected} is expected"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{field} must be {expected}, got {_json_kind(value)}"
    if isinstance(value, float) and not value.is_integer():
        return f"{field} {value!r} must be a whole number of epoch milliseconds"
    message = (
        f"{field} {value!r} is not epoch milliseconds from 2000-01-01 to 2100-01-01 "
        f"({MIN_TS_MS} up to {MAX_TS_MS})"
    )
    for unit, to_ms in (("seconds", 1000), ("microseconds", 0.001), ("nanoseconds", 1e-6)):
        as_ms = value * to_ms
        if MIN_TS_MS <= as_ms < MAX_TS_MS:
            return f"{message}; as epoch {unit} it would be {_iso(int(as_ms))}: send milliseconds"
    return message


def _characters(count: int) -> str:
    return f"{count} character" if count == 1 else f"{count} characters"


def _attribute_kind(value: Any) -> str:
    if isinstance(value, str):
        return f"a string of {_characters(len(value))}"
    if isinstance(value, list):
        nested = next((item for item in value if isinstance(item, dict | list)), None)
        if nested is not None:
            return f"an array holding {_json_kind(nested)}"
        return f"an array of {len(value)} items"
    return _json_kind(value)


def _json_kind(document: Any) -> str:
    kinds = {
        list: "an array",
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return kinds.get(type(document), "a number")


# The cache of addresses checked lately (an erasure empties it,
# app.erasure.forget_cached_identifiers).
IDENTIFIER_CACHES = (_is_ip_address,)
