"""One Kafka message in, the records to publish out: validation, routing and the engine.

:class:`Pipeline` is what a Faust agent calls per message. It is synchronous and
knows Kafka only as roles (``decisions``, ``dead-letter``, ...) and bytes, so the
same code runs under the worker, in tests with a dict as the state table, and
offline. It never raises on input: anything that cannot be decided becomes a
dead letter with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from app.contract.records import DeadLetter, Decision, FraudAlert, SourcePosition
from app.contract.validate import Rejection, parse_event
from app.decisioning.engine import Engine
from app.decisioning.ledger import Ledger, ledger_key
from app.features.state import UserState
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
    """Where state lives: per-user state by user id, per-partition ledgers by ledger key."""

    users: Table
    ledgers: Table


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

    def handle(
        self,
        tables: Tables,
        source: SourcePosition,
        value: bytes | None,
    ) -> list[Output]:
        """The outputs for one message read at ``source``."""
        try:
            return self._handle(tables, source, value)
        except Exception as exc:  # a bug must cost one dead letter, never the worker
            log.exception(
                "pipeline.failed topic=%s partition=%s offset=%s",
                source.topic,
                source.partition,
                source.offset,
            )
            rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}")
            return [self._dead_letter(source, value or b"", rejection)]

    def _handle(self, tables: Tables, source: SourcePosition, value: bytes | None) -> list[Output]:
        event = parse_event(value, max_bytes=self.max_event_bytes)
        if isinstance(event, Rejection):
            return [self._dead_letter(source, value or b"", event)]
        user_key = event.user_id.encode()
        if self.partitioner is not None:
            partition = self.partitioner(user_key)
        elif source.key != user_key:
            # State is partitioned by user_id: an event under another key would be decided
            # against the wrong state, so it goes back to the events topic under the right key.
            self.metrics.rekeyed.inc()
            return [Output("events", user_key, value or b"")]
        else:
            partition = source.partition
        key_of_ledger = ledger_key(self.engine.program.id, partition)
        user = UserState.from_bytes(tables.users.get(user_key))
        ledger = Ledger.from_bytes(tables.ledgers.get(key_of_ledger))
        outcome = self.engine.process(user, ledger, event, partition=partition)
        if outcome.duplicate:
            self.metrics.duplicates.inc()
            return []
        tables.users[user_key] = outcome.user.to_bytes()
        if outcome.ledger is not ledger:
            tables.ledgers[key_of_ledger] = outcome.ledger.to_bytes()
        self.metrics.events_in.labels(event.type).inc()
        if outcome.learned:
            self.metrics.model_updates.labels(self.engine.program.id).inc(outcome.learned)
        return [self._publish(record, user_key) for record in outcome.records]

    def _publish(self, record: Decision | FraudAlert, user_key: bytes) -> Output:
        if isinstance(record, Decision):
            self.metrics.decisions.labels(record.program, record.status).inc()
            mode = record.reasons[0].removeprefix("policy.") if record.reasons else ""
            if mode in POLICY_MODES:
                self.metrics.policy_choices.labels(record.program, mode).inc()
            if record.status == "granted":
                self.metrics.reward_cost.labels(record.program).inc(record.cost)
            return Output("decisions", user_key, record.to_json())
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
