"""docs/contract.md stays true to the code: examples validate, every field and reason is named."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from app.contract.records import dead_letter_id_for, decision_id_for
from app.contract.schemas import SCHEMA_NAMES, load_schema
from app.contract.validate import REJECTION_REASONS, Rejection, parse_event, validate_event
from app.settings import Settings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
DOC = DOC_PATH.read_text("utf-8")
JSON_BLOCK = re.compile(r"^```json[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EVENT_KEYS = frozenset({"event_id", "user_id", "type", "ts"})
OUTPUT_KINDS = tuple(name for name in SCHEMA_NAMES if name != "event")


def _line_of(offset: int) -> int:
    return DOC.count("\n", 0, offset) + 1


# (line in the doc, block text) for every ```json block.
BLOCKS = [(_line_of(m.start()), m.group(1)) for m in JSON_BLOCK.finditer(DOC)]
BLOCK_IDS = [f"line-{line}" for line, _ in BLOCKS]


@cache
def _checker(name: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema(name))


def _kind_of(document: Any) -> str | None:
    """The schema a doc example is meant to follow, or None if it is no contract record."""
    if not isinstance(document, dict):
        return None
    if document.get("kind") == "shadow_decision":
        return "decision"  # a shadow program's decision follows the decision schema
    if "kind" in document:
        return str(document["kind"])
    if EVENT_KEYS & document.keys():
        return "event"
    return None


def _examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, text in BLOCKS:
        document = json.loads(text)
        kind = _kind_of(document)
        if kind is not None:
            yield kind, document


def _property_names(schema: Any) -> Iterator[str]:
    """Every name under any ``properties`` of a schema, nested ones and conditional ones too."""
    if isinstance(schema, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict):
            yield from properties
        for value in schema.values():
            yield from _property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _property_names(item)


def _schema_properties() -> list[tuple[str, str]]:
    return sorted(
        {(name, prop) for name in SCHEMA_NAMES for prop in _property_names(load_schema(name))}
    )


def _reason_codes() -> list[str]:
    documented_by_schema = load_schema("dead_letter")["properties"]["reason"]["enum"]
    return sorted({*REJECTION_REASONS, "internal_error", *documented_by_schema})


# ---------------------------------------------------------------- (a) examples validate


def test_doc_has_json_examples() -> None:
    assert BLOCKS, f"no ```json blocks found in {DOC_PATH.name}"


@pytest.mark.parametrize(("line", "text"), BLOCKS, ids=BLOCK_IDS)
def test_json_block_is_valid_json(line: int, text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        pytest.fail(f"docs/contract.md line {line}: ```json block is not JSON: {exc}")


@pytest.mark.parametrize(("line", "text"), BLOCKS, ids=BLOCK_IDS)
def test_json_block_validates_against_its_schema(line: int, text: str) -> None:
    document = json.loads(text)
    kind = _kind_of(document)
    if kind is None:
        pytest.skip("not a contract record")
    assert kind in SCHEMA_NAMES, f"line {line}: unknown kind {kind!r}; known: {SCHEMA_NAMES}"
    try:
        _checker(kind)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        pytest.fail(f"docs/contract.md line {line}: {kind} example breaks its schema: {exc}")
    if kind == "event":
        result = validate_event(document)
        assert not isinstance(result, Rejection), f"line {line}: event example rejected: {result}"


@pytest.mark.parametrize("kind", SCHEMA_NAMES)
def test_doc_has_examples_of_each_kind_showing_every_field(kind: str) -> None:
    examples = [doc for k, doc in _examples() if k == kind]
    assert examples, f"docs/contract.md has no ```json example of a {kind}"
    shown = set().union(*(doc.keys() for doc in examples))
    missing = set(load_schema(kind)["properties"]) - shown
    assert not missing, f"no {kind} example shows {sorted(missing)}"


def test_example_ids_are_the_ids_the_engine_computes() -> None:
    for kind, doc in _examples():
        if kind == "decision":
            expected = decision_id_for(doc["program"], doc["user_id"], doc["event_id"])
            assert doc["decision_id"] == expected, f"decision example for {doc['event_id']}"
        elif kind == "dead_letter":
            source = doc["source"]
            expected = dead_letter_id_for(source["topic"], source["partition"], source["offset"])
            assert doc["dead_letter_id"] == expected, "dead-letter example id"


def test_dead_letter_examples_carry_their_real_payload_reason_and_error() -> None:
    max_bytes = Settings().max_event_bytes
    for kind, doc in _examples():
        if kind != "dead_letter" or doc["payload_truncated"]:
            continue
        payload = base64.b64decode(doc["payload_base64"], validate=True)
        assert len(payload) == doc["payload_bytes"]
        assert hashlib.sha256(payload).hexdigest() == doc["payload_sha256"]
        if doc["reason"] == "internal_error":
            continue
        result = parse_event(payload, max_bytes=max_bytes)
        assert isinstance(result, Rejection), "the example payload is a valid event"
        assert (result.reason, result.error, result.event_id) == (
            doc["reason"],
            doc["error"],
            doc["event_id"],
        )


# ---------------------------------------------------------------- (b) every field is documented


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_doc_points_to_each_schema_file(name: str) -> None:
    assert f"app/contract/schemas/{name}.schema.json" in DOC


@pytest.mark.parametrize(("schema", "prop"), _schema_properties())
def test_every_schema_property_is_named_in_backticks(schema: str, prop: str) -> None:
    assert f"`{prop}`" in DOC, f"{schema} schema property {prop!r} is not in docs/contract.md"


# ---------------------------------------------------------------- (c) every reason is documented


@pytest.mark.parametrize("reason", _reason_codes())
def test_every_rejection_reason_is_documented(reason: str) -> None:
    assert f"`{reason}`" in DOC, f"reason {reason!r} is not in docs/contract.md"
    row = re.compile(rf"^\| `{re.escape(reason)}` \|", re.MULTILINE)
    assert row.search(DOC), f"reason {reason!r} has no row in the reason-code table"
