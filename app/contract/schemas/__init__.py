"""JSON Schemas of the wire contract, one file per record kind, loaded by name."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_NAMES = ("event", "decision", "fraud_alert", "dead_letter")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema for one record kind: ``event``, ``decision``, ``fraud_alert``, ``dead_letter``."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
