"""The records on the wire: one input (:class:`Event`) and three outputs.

Every output record carries ``kind`` so that a file or topic holding several
kinds (offline replay writes them side by side) can be read back unambiguously.
Field names and meanings are the contract in ``docs/contract.md``; the JSON
Schemas next to this module are its machine-readable form.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any, Literal

import msgspec
import orjson

DecisionStatus = Literal["granted", "held", "blocked", "none"]
HoldKind = Literal["pending", "risk"]
OUTCOME_TYPES = frozenset({"reward_opened", "reward_redeemed", "reward_dismissed"})


def _stable_id(prefix: str, *parts: str) -> str:
    # Unit separator between parts so ("ab", "c") and ("a", "bc") differ.
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    return f"{prefix}-{digest}"


# The engine asks for an event's decision id more than once (to pick, to record, to
# find a grant): kept for the last few events, it is hashed once.
@functools.lru_cache(maxsize=64)
def decision_id_for(program: str, user_id: str, event_id: str) -> str:
    """The same event under the same program always yields the same decision id."""
    return _stable_id("d", program, user_id, event_id)


def alert_id_for(program: str, user_id: str, event_id: str, pattern: str, index: int) -> str:
    """One id per alert, and the same one whenever the same input is processed again.

    One event id can raise several alerts (its own, then one for each copy sent again):
    ``index`` tells them apart. It is the ordinal of the message the alert was raised on
    among the user's messages (:attr:`app.features.UserState.messages`), which the user's
    state counts in the order the engine handles them: replaying the same input numbers
    them the same way.
    """
    return _stable_id("a", program, user_id, event_id, pattern, str(index))


def dead_letter_id_for(topic: str, partition: int, offset: int) -> str:
    return _stable_id("x", topic, str(partition), str(offset))


class Event(msgspec.Struct, frozen=True, gc=False):
    """A validated user event. ``ts`` is epoch milliseconds whatever the producer sent."""

    event_id: str
    user_id: str
    type: str
    ts: int
    amount: float | None = None
    currency: str | None = None
    channel: str | None = None
    device_id: str | None = None
    ip: str | None = None
    decision_id: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_document(cls, document: dict[str, Any], ts_ms: int) -> Event:
        """Build from a document that already passed the event schema."""
        amount = document.get("amount")
        return cls(
            event_id=document["event_id"],
            user_id=document["user_id"],
            type=document["type"],
            ts=ts_ms,
            amount=None if amount is None else float(amount),
            currency=document.get("currency"),
            channel=document.get("channel"),
            device_id=document.get("device_id"),
            ip=document.get("ip"),
            decision_id=document.get("decision_id"),
            attributes=document.get("attributes") or {},
        )

    def to_document(self) -> dict[str, Any]:
        """The event as contract JSON, without the optional fields it lacks. (Field by field:
        ``dataclasses.asdict`` deep-copies, and this runs once per event per stage.)"""
        document = {name: getattr(self, name) for name in _EVENT_FIELDS}
        return {k: v for k, v in document.items() if v is not None and v != {}}


_EVENT_FIELDS = Event.__struct_fields__


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The engine's one answer to one valid event."""

    decision_id: str
    event_id: str
    user_id: str
    ts: int
    action: str | None
    channel: str | None
    value: float
    cost: float
    propensity: float
    risk: float
    status: DecisionStatus
    reasons: tuple[str, ...]
    explanation: str
    model_version: str
    program: str
    kind: str = "decision"
    # The link facts the decision was given (their documents), when the event named links.
    links: tuple[dict[str, Any], ...] = ()
    # Why a held reward is held: "pending" (a new account's pending period, no suspicion)
    # or "risk" (the user's risk reached the program's hold threshold); None unless held.
    hold: HoldKind | None = None
    # The notes of other users' fraud alerts that named this user as related and that
    # this decision took in as evidence (alert_id, by, ts); empty when none.
    related: tuple[dict[str, Any], ...] = ()
    # The experiment arm the user is in (the program's ``experiment``); None without one.
    arm: str | None = None
    # The user's consent when the decision was made ({"personalization": bool,
    # "marketing": bool}, the program's defaults where the user said nothing): without
    # personalization a decision carries no model score. None only in records written
    # before this field existed.
    consent: dict[str, bool] | None = None

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


class FraudAlert(msgspec.Struct, frozen=True, gc=False):
    """One flagged event or pattern, with the evidence an analyst needs."""

    alert_id: str
    event_id: str
    user_id: str
    ts: int
    score: float
    reasons: tuple[str, ...]
    evidence: dict[str, str]
    related_users: tuple[str, ...]
    program: str
    kind: str = "fraud_alert"

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


class SourcePosition(msgspec.Struct, frozen=True, gc=False):
    """Where a message was read: enough to find the original in Kafka. ``produced_ms`` is
    the record's Kafka timestamp (when it was produced), if known: latency is measured
    from it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    produced_ms: int | None = None


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """An input that could not be decided, with its reason and its original bytes."""

    dead_letter_id: str
    reason: str
    error: str
    event_id: str | None
    source: SourcePosition
    payload: bytes
    payload_bytes: int
    payload_sha256: str
    kind: str = "dead_letter"

    @classmethod
    def of(
        cls,
        *,
        reason: str,
        error: str,
        event_id: str | None,
        source: SourcePosition,
        payload: bytes,
        max_payload_bytes: int,
    ) -> DeadLetter:
        """Keep the payload up to ``max_payload_bytes``; the hash covers all of it."""
        return cls(
            dead_letter_id=dead_letter_id_for(source.topic, source.partition, source.offset),
            reason=reason,
            error=error,
            event_id=event_id,
            source=source,
            payload=payload[:max_payload_bytes],
            payload_bytes=len(payload),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )

    def to_document(self) -> dict[str, Any]:
        key = self.source.key
        return {
            "kind": self.kind,
            "dead_letter_id": self.dead_letter_id,
            "reason": self.reason,
            "error": self.error,
            "event_id": self.event_id,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
                "key_base64": None if key is None else base64.b64encode(key).decode(),
            },
            "payload_base64": base64.b64encode(self.payload).decode(),
            "payload_bytes": self.payload_bytes,
            "payload_truncated": len(self.payload) < self.payload_bytes,
            "payload_sha256": self.payload_sha256,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_document())
