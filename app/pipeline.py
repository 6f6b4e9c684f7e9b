"""One Kafka message in, the records to publish out: validation, linking, the engine.

An event passes three stages, each keyed by what its state is partitioned by:

1. :meth:`Pipeline.intake` (keyed by anything the producer chose): validates,
   dead-letters what is invalid, and sends the event on in an envelope that
   remembers where it was read;
2. :meth:`Pipeline.link` (keyed by ``device:<id>``, then ``net:<network>``):
   one hop per device and network the event names, each adding what that
   device or network has seen (:mod:`app.fraud.links`);
3. :meth:`Pipeline.decide` (keyed by ``user_id``): the engine, with the user's
   state, the partition's ledger and the link facts.

The worker runs each stage as an agent on its own topic (``events``, ``links``,
``linked``); :meth:`Pipeline.handle` runs all three in-process for offline
replay and tests. Everything is synchronous and knows Kafka only as roles and
bytes. Nothing raises on input: what cannot be decided becomes a dead letter
with its reason.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.contract.records import DeadLetter, Decision, Event, FraudAlert, SourcePosition
from app.contract.validate import Rejection, parse_event
from app.decisioning.engine import Engine
from app.decisioning.ledger import Ledger, ledger_key
from app.features.state import UserState
from app.fraud import LinkFacts, LinkState, link_keys, observe_link
from app.metrics import Metrics

log = logging.getLogger(__name__)

# A dead letter keeps at most this much of the original payload (base64 adds a third);
# larger inputs keep their size and SHA-256, and the original stays at its offset.
MAX_DEAD_LETTER_PAYLOAD = 512 * 1024
# How a decision on a trigger event was chosen (its first reason code, "policy.<mode>").
POLICY_MODES = frozenset({"exploit", "explore", "default", "below_minimum", "nothing_eligible"})


Table = MutableMapping[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Tables:
    """Where state lives: per-user state by user id, per-partition ledgers by ledger key,
    per-device and per-network link state by link key."""

    users: Table
    ledgers: Table
    links: Table = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A valid event between stages: its bytes, where it was first read, the link facts so far."""

    raw: bytes
    source: SourcePosition
    links: tuple[LinkFacts, ...] = ()
    event: Event | None = None  # as validated at intake (later stages do not re-validate)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "event": self.raw.decode(),
                "parsed": None if self.event is None else self.event.to_document(),
                "source": [self.source.topic, self.source.partition, self.source.offset],
                "key": None
                if self.source.key is None
                else base64.b64encode(self.source.key).decode(),
                "links": [fact.to_document() for fact in self.links],
            }
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> Envelope:
        document: dict[str, Any] = orjson.loads(value)
        topic, partition, offset = document["source"]
        key = document.get("key")
        parsed = document.get("parsed")
        return cls(
            raw=document["event"].encode(),
            source=SourcePosition(
                topic, partition, offset, None if key is None else base64.b64decode(key)
            ),
            links=tuple(LinkFacts.from_document(fact) for fact in document["links"]),
            event=None if parsed is None else Event.from_document(parsed, int(parsed["ts"])),
        )


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: the topic role, the Kafka key and the value bytes."""

    role: str
    key: bytes | None
    value: bytes


class Pipeline:
    """Validate, decide and route one message at a time."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_event_bytes: int,
        partitioner: Callable[[bytes], int] | None = None,
    ) -> None:
        """``partitioner`` maps a user key to its partition when there is no Kafka (replay)."""
        self.engine = engine
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self.partitioner = partitioner

    def handle(self, tables: Tables, source: SourcePosition, value: bytes | None) -> list[Output]:
        """All three stages in-process: the outputs the worker would publish for one message."""
        published: list[Output] = []
        pending = self.intake(source, value)
        while pending:
            output = pending.pop(0)
            if output.role == "links":
                pending = self.link(tables, output.key or b"", output.value, source) + pending
            elif output.role == "linked":
                user_key = output.key or b""
                partition = self.partitioner(user_key) if self.partitioner else source.partition
                pending = self.decide(tables, partition, output.value, source) + pending
            else:
                published.append(output)
        return published

    # ------------------------------------------------------------ stage 1: intake

    def intake(self, source: SourcePosition, value: bytes | None) -> list[Output]:
        """Validate; dead-letter what is invalid; send the rest to its first link hop."""
        try:
            event = parse_event(value, max_bytes=self.max_event_bytes)
            if isinstance(event, Rejection):
                return [self._dead_letter(source, value or b"", event)]
            if source.key != event.user_id.encode():
                self.metrics.rekeyed.inc()
            return [self._onward(event, Envelope(value or b"", source, event=event))]
        except Exception as exc:  # a bug must cost one dead letter, never the worker
            return [self._internal_error(source, value, exc)]

    def _onward(self, event: Event, envelope: Envelope) -> Output:
        """The next hop: the next device or network the event names, else its user."""
        hops = link_keys(event)
        if len(envelope.links) < len(hops):
            return Output("links", hops[len(envelope.links)][1], envelope.to_bytes())
        return Output("linked", event.user_id.encode(), envelope.to_bytes())

    # ------------------------------------------------------------ stage 2: link

    def link(self, tables: Tables, key: bytes, value: bytes, at: SourcePosition) -> list[Output]:
        """One hop through the state of the device or network ``key`` (read at ``at``)."""
        try:
            envelope = Envelope.from_bytes(value)
        except Exception as exc:
            return [self._internal_error(at, value, exc)]
        try:
            event = self._trusted(envelope)
            kind, expected = link_keys(event)[len(envelope.links)]
            if expected != key:  # only our own stages write here; never guess
                raise ValueError(f"link hop for {expected!r} arrived under {key!r}")
            state, facts = observe_link(LinkState.from_bytes(tables.links.get(key)), event, kind)
            tables.links[key] = state.to_bytes()
            envelope = Envelope(envelope.raw, envelope.source, (*envelope.links, facts), event)
            return [self._onward(event, envelope)]
        except Exception as exc:
            return [self._internal_error(envelope.source, envelope.raw, exc)]

    # ------------------------------------------------------------ stage 3: decide

    def decide(
        self, tables: Tables, partition: int, value: bytes, at: SourcePosition
    ) -> list[Output]:
        """The engine's records for one linked event of a user on ``partition`` (read at ``at``)."""
        try:
            envelope = Envelope.from_bytes(value)
        except Exception as exc:
            return [self._internal_error(at, value, exc)]
        try:
            return self._decide(tables, partition, envelope)
        except Exception as exc:
            return [self._internal_error(envelope.source, envelope.raw, exc)]

    def _decide(self, tables: Tables, partition: int, envelope: Envelope) -> list[Output]:
        event = self._trusted(envelope)
        user_key = event.user_id.encode()
        key_of_ledger = ledger_key(self.engine.program.id, partition)
        user = UserState.from_bytes(tables.users.get(user_key))
        ledger = Ledger.from_bytes(tables.ledgers.get(key_of_ledger))
        outcome = self.engine.process(
            user, ledger, event, partition=partition, links=envelope.links
        )
        if outcome.user is not user:
            tables.users[user_key] = outcome.user.to_bytes()
        if outcome.ledger is not ledger:
            tables.ledgers[key_of_ledger] = outcome.ledger.to_bytes()
        if outcome.duplicate:
            self.metrics.duplicates.inc()
        else:
            self.metrics.events_in.labels(event.type).inc()
            if event.type in self.engine.program.triggers:
                decision = outcome.records[0]
                if isinstance(decision, Decision):
                    self.metrics.risk_score.labels(self.engine.program.id).observe(decision.risk)
        if outcome.learned:
            self.metrics.model_updates.labels(self.engine.program.id).inc(outcome.learned)
        return [self._publish(record, user_key) for record in outcome.records]

    def _trusted(self, envelope: Envelope) -> Event:
        """The envelope's event as intake validated it (only the engine's own stages write
        the internal topics); an envelope without one is validated again."""
        if envelope.event is not None:
            return envelope.event
        event = parse_event(envelope.raw, max_bytes=self.max_event_bytes)
        if isinstance(event, Rejection):
            raise ValueError(f"an envelope carried an invalid event: {event.reason}")
        return event

    def _internal_error(
        self, source: SourcePosition, value: bytes | None, exc: Exception
    ) -> Output:
        log.exception(
            "pipeline.failed topic=%s partition=%s offset=%s",
            source.topic,
            source.partition,
            source.offset,
        )
        rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}")
        return self._dead_letter(source, value or b"", rejection)

    def _publish(self, record: Decision | FraudAlert, user_key: bytes) -> Output:
        if isinstance(record, Decision):
            self.metrics.decisions.labels(record.program, record.status).inc()
            mode = record.reasons[0].removeprefix("policy.") if record.reasons else ""
            if mode in POLICY_MODES:
                self.metrics.policy_choices.labels(record.program, mode).inc()
            if record.status == "granted":
                self.metrics.reward_cost.labels(record.program).inc(record.cost)
            return Output("decisions", user_key, record.to_json())
        self.metrics.fraud_alerts.labels(record.program, record.reasons[0]).inc()
        return Output("fraud-alerts", user_key, record.to_json())

    def _dead_letter(self, source: SourcePosition, value: bytes, rejection: Rejection) -> Output:
        self.metrics.dead_letters.labels(rejection.reason).inc()
        record = DeadLetter.of(
            reason=rejection.reason,
            error=rejection.error,
            event_id=rejection.event_id,
            source=source,
            payload=value,
            max_payload_bytes=MAX_DEAD_LETTER_PAYLOAD,
        )
        return Output("dead-letter", source.key, record.to_json())
