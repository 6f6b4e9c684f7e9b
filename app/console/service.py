"""`rewardstream console`: the index, the program view, the reader and the web server,
wired together.

:class:`Console` is what the web pages call: it owns the lock that keeps the
reader's thread and the web threads apart, routes each record read to the index
and the program view by the topic it came from, and sends labels.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.assembly import build_engine
from app.clock import Clock, SystemClock
from app.console.index import ConsoleIndex
from app.console.labels import label_event
from app.console.program import ProgramStats
from app.kafkaio import Received
from app.settings import Settings

log = logging.getLogger(__name__)

# How often the index lets go of users past the engine's state time to live.
EXPIRE_EVERY_S = 60.0


class ConsoleError(RuntimeError):
    """The console cannot start as configured."""


class LabelRefusedError(RuntimeError):
    """The hold is not open (any more), or a label for it was sent already."""


@dataclass(frozen=True)
class Topics:
    """The topics the console reads, by what it does with them."""

    decisions: str
    alerts: str
    erasures: str
    ledger: str
    inputs: tuple[str, ...]  # events and labels: when each was produced, what was redeemed

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        from topologies import TABLE_LEDGER, changelog_topic  # where the changelog is named

        return cls(
            decisions=settings.topic_decisions,
            alerts=settings.topic_fraud_alerts,
            erasures=settings.topic_erasures,
            ledger=changelog_topic(settings.app_id, TABLE_LEDGER),
            inputs=(settings.topic_events, settings.topic_fraud_labels),
        )

    def all(self) -> list[str]:
        return [self.decisions, self.alerts, self.erasures, self.ledger, *self.inputs]


class Console:
    """The index and the program view behind one lock, fed by :meth:`take`."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        engine = build_engine(settings)
        fraud = engine.program.fraud
        self.settings = settings
        self.clock = clock or SystemClock()
        self.topics = Topics.of(settings)
        self.index = ConsoleIndex(
            history=settings.console_history,
            hold_for_ms=fraud.hold_for.seconds * 1000,
            pending_ms=None
            if fraud.new_account_pending is None
            else fraud.new_account_pending.seconds * 1000,
            ttl_ms=settings.state_ttl_ms,
            receipt_key=settings.erasure_receipt_key or settings.app_id,
        )
        self.stats = ProgramStats(
            engine.program, partitions=settings.partitions, bucket_ms=engine.bucket_ms
        )
        self.lock = threading.Lock()
        self.send: Callable[[str, bytes], None] | None = None  # set once Kafka is connected
        self.last_expiry_s = self.clock.monotonic_s()

    # ------------------------------------------------------------ the reader's side

    def take(self, records: list[Received]) -> None:
        """Apply a batch the reader fetched."""
        with self.lock:
            for record in records:
                try:
                    self._take_one(record)
                except (ValueError, TypeError, KeyError) as error:
                    # Not a record of the contract (a foreign producer's): skipped, logged.
                    log.warning(
                        "console.record_skipped topic=%s partition=%d offset=%d error=%s",
                        record.topic,
                        record.partition,
                        record.offset,
                        error,
                    )
            now_s = self.clock.monotonic_s()
            if now_s - self.last_expiry_s >= EXPIRE_EVERY_S:
                self.last_expiry_s = now_s
                self.index.expire()

    def _take_one(self, record: Received) -> None:
        topic, at = record.topic, record.timestamp_ms
        if topic == self.topics.ledger:
            self.stats.add_ledger(record.key or b"", record.value or None)
            return
        if not record.value:
            return
        if topic in self.topics.inputs:
            # Producers' bytes, malformed ones included (the engine dead-letters those):
            # only valid events are paired with their decisions.
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(record.value)
                if isinstance(event, dict):
                    self.stats.add_event(event, at)
            return
        document = orjson.loads(record.value)
        if topic == self.topics.decisions:
            if self.index.add_decision(record.value, document, at):
                self.stats.add_decision(document, at)
        elif topic == self.topics.alerts:
            if self.index.add_alert(record.value, document, at):
                self.stats.add_alert(document, at)
        elif topic == self.topics.erasures:
            for user_id in self.index.add_receipt(document, at):
                self.stats.forget(user_id)

    # ------------------------------------------------------------ the pages' side

    def user(self, user_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.index.user(user_id)

    def queue(self, kinds: tuple[str, ...]) -> dict[str, Any]:
        now_ms = self.clock.now_ms()
        with self.lock:
            holds = self.index.queue(now_ms, kinds=kinds)
            return {"now_ms": now_ms, "holds": [hold.to_document(now_ms) for hold in holds]}

    def program(self) -> dict[str, Any]:
        now_ms = self.clock.now_ms()
        with self.lock:
            return {"now_ms": now_ms, **self.stats.view(now_ms)}

    def label(self, user_id: str, held_decision_id: str, verdict: str, analyst: str) -> str:
        """Send ``verdict`` on the user's open hold ``held_decision_id``; the event id."""
        event = label_event(
            user_id=user_id,
            held_decision_id=held_decision_id,
            verdict=verdict,
            analyst=analyst,
            now_ms=self.clock.now_ms(),
        )
        with self.lock:
            if self.index.mark_labelled(user_id, held_decision_id, verdict) is None:
                raise LabelRefusedError(
                    f"{user_id} has no open hold {held_decision_id} waiting for a label"
                )
        try:
            if self.send is None:
                raise RuntimeError("the console is not connected to Kafka yet")
            self.send(user_id, orjson.dumps(event))
        except Exception:
            with self.lock:
                self.index.unmark_labelled(user_id, held_decision_id)
            raise
        log.info(
            "console.label_sent user=%s hold=%s label=%s analyst=%s event=%s",
            user_id,
            held_decision_id,
            verdict,
            analyst,
            event["event_id"],
        )
        return str(event["event_id"])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token: the page shows users' decisions
    and its buttons send fraud labels."""
    if not is_loopback(settings.console_host) and not settings.console_token:
        raise ConsoleError(
            f"REWARDSTREAM_CONSOLE_HOST={settings.console_host} is not a loopback address: "
            "set REWARDSTREAM_CONSOLE_TOKEN, and put the console behind your single sign-on "
            "proxy with TLS (docs/console.md)"
        )
