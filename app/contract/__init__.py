"""The wire contract: what producers send and what the engine publishes.

- :mod:`app.contract.records`: ``Event`` (in) and ``Decision``, ``FraudAlert``,
  ``DeadLetter`` (out), with their deterministic ids.
- :mod:`app.contract.validate`: bytes -> ``Event`` or ``Rejection`` with a reason;
  never raises on input.
- :mod:`app.contract.schemas`: the JSON Schema of each record, the same files
  ``docs/contract.md`` documents.
"""

from app.contract.records import (
    DeadLetter,
    Decision,
    Event,
    FraudAlert,
    SourcePosition,
    decision_id_for,
)
from app.contract.validate import REJECTION_REASONS, Rejection, parse_event, validate_event

__all__ = [
    "REJECTION_REASONS",
    "DeadLetter",
    "Decision",
    "Event",
    "FraudAlert",
    "Rejection",
    "SourcePosition",
    "decision_id_for",
    "parse_event",
    "validate_event",
]
