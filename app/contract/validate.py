"""Turn the bytes of one Kafka message into an :class:`Event`, or say exactly why not.

Validation never raises on input: :func:`parse_event` returns either an
``Event`` or a :class:`Rejection` whose ``reason`` is one of a small fixed set
(used as a metric label and in the dead-letter record) and whose ``error`` names
the field and the problem in words.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import fastjsonschema
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
)

_check_event_schema = fastjsonschema.compile(load_schema("event"))
# RFC 3339 date-time (section 5.6): full date, "T" (or a space, as section 5.6 notes), time, zone.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is not a valid event."""

    reason: str
    error: str
    event_id: str | None = None


def parse_event(raw: bytes | None, *, max_bytes: int) -> Event | Rejection:
    """Decode and validate one message value (None for a record without a value)."""
    if not raw:
        return Rejection("empty", "the message has no value")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"event is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "bad_encoding" if "UTF-8" in str(exc) else "bad_json"
        return Rejection(reason, f"not valid JSON: {exc}")
    if not isinstance(document, dict):
        return Rejection("not_an_object", f"an event is a JSON object, got {_json_kind(document)}")
    return validate_event(document)


def validate_event(document: dict[str, Any]) -> Event | Rejection:
    """Validate a decoded JSON object against the event contract."""
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
    return Event.from_document(document, ts_ms)


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


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _describe_schema_error(exc: fastjsonschema.JsonSchemaValueException) -> str:
    # fastjsonschema names the root "data"; users know their fields by name.
    field = ".".join(str(part) for part in (exc.path or [])[1:]) or "event"
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


def _json_kind(document: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(document), "a number")
