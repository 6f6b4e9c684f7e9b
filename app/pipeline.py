"""One Kafka message in, the records to publish out: validation, linking, the engine.

An event passes three stages, each keyed by what its state is partitioned by:

1. :meth:`Pipeline.intake` (keyed by anything the producer chose): validates,
   dead-letters what is invalid, and sends the event, in an envelope that
   remembers where it was read, both straight to its user (``linked``) and to
   each device and network it names (``links``);
2. :meth:`Pipeline.link` (keyed by ``device:<id>`` or ``net:<network>``): what
   that device or network has seen (:mod:`app.fraud.links`), sent on to the
   event's user as link facts;
3. :meth:`Pipeline.decide` (keyed by ``user_id``): a user's events wait, in the
   order intake read them, until each has the facts of all its links; then the
   engine decides them in that order, with the user's state, the partition's
   ledger and the facts. A user's events are decided in the order the user's
   partition of ``events`` holds them, however long each link took.

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
from typing import Any, Generic, TypeVar

import orjson

from app.contract.records import DeadLetter, Decision, Event, FraudAlert, SourcePosition
from app.contract.validate import Rejection, parse_event
from app.decisioning.checks import program_budgets_left
from app.decisioning.engine import Answer, Engine
from app.decisioning.ledger import Ledger, Share, ledger_key
from app.features.state import UserState
from app.fraud import LinkFacts, LinkState, link_keys, observe_link
from app.metrics import NO_REWARD, Metrics
from app.models import log_loss
from app.rows import expand

log = logging.getLogger(__name__)

# A dead letter keeps at most this much of the original payload (base64 adds a third);
# larger inputs keep their size and SHA-256, and the original stays at its offset.
MAX_DEAD_LETTER_PAYLOAD = 512 * 1024
# How a decision on a trigger event was chosen (its first reason code, "policy.<mode>").
POLICY_MODES = frozenset({"exploit", "explore", "default", "below_minimum", "nothing_eligible"})


Table = MutableMapping[bytes, bytes | None]


def compact(value: bytes) -> bytes:
    """An exact-size copy of ``value`` to keep in a table.

    orjson returns bytes objects that keep their whole working buffer: 150 bytes of
    JSON hold about 4 KB of memory (measured). Tables keep millions of rows, so each
    row is copied once to its own size (about 200 bytes for the same 150).
    """
    return bytes(memoryview(value))


T = TypeVar("T")


class OpenRows(Generic[T]):
    """One table's rows, decoded, for the batch in progress.

    A row is decoded at its first read in a batch and encoded once when the batch
    ends (:meth:`Pipeline.flush`), however many of the batch's events touch it: a busy
    user's state, a partition's ledger and a queue of waiting events are each parsed
    and written once per batch, not once per event. ``encode`` returning None deletes
    the row. Rows are immutable values (or, for waiting queues, owned by this cache),
    so what a flush writes is exactly what the events of the batch left.
    """

    __slots__ = ("decode", "dirty", "encode", "rows", "table")

    def __init__(
        self,
        table: Table,
        decode: Callable[[bytes | None], T],
        encode: Callable[[T], bytes | None],
    ) -> None:
        self.table = table
        self.decode = decode
        self.encode = encode
        self.rows: dict[bytes, T] = {}
        self.dirty: set[bytes] = set()

    def get(self, key: bytes) -> T:
        try:
            return self.rows[key]
        except KeyError:
            value = self.rows[key] = self.decode(self.table.get(key))
            return value

    def put(self, key: bytes, value: T) -> None:
        self.rows[key] = value
        self.dirty.add(key)

    def flush(self) -> None:
        for key in self.dirty:
            raw = self.encode(self.rows[key])
            if raw is not None:
                self.table[key] = compact(raw)
            elif self.table.get(key) is not None:
                del self.table[key]
        self.rows.clear()
        self.dirty.clear()


# A user's queue of events waiting for link facts is decided anyway, with the facts it
# has, once this many events wait behind it: a lost link hop must not block a user.
# Link answers are never lost with transactions, but they lag behind the direct copy
# when a backlog is drained (the worker's intake backpressure keeps that lag short).
MAX_WAITING = 512


@dataclass(frozen=True, slots=True)
class Tables:
    """Where state lives: per-user state by user id, per-partition ledgers by ledger key,
    per-device and per-network link state by link key, and per user the events that wait
    for their link facts."""

    users: Table
    ledgers: Table
    links: Table = field(default_factory=dict)
    waiting: Table = field(default_factory=dict)
    # The rows decoded since the last flush, by table field (see OpenRows).
    open: dict[str, OpenRows[Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A valid event between stages: its bytes, where it was first read, the link facts so far."""

    raw: bytes
    source: SourcePosition
    event: Event | None = None  # as validated at intake (later stages do not re-validate)
    hop: int | None = None  # on ``links``: which of the event's link keys this copy is for

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_document())

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": "event" if self.hop is None else "link",
            "hop": self.hop,
            "event": self.raw.decode(),
            "parsed": None if self.event is None else self.event.to_document(),
            "source": [self.source.topic, self.source.partition, self.source.offset],
            "key": None if self.source.key is None else base64.b64encode(self.source.key).decode(),
            "produced": self.source.produced_ms,
        }

    @classmethod
    def from_bytes(cls, value: bytes) -> Envelope:
        return cls.from_document(orjson.loads(value))

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Envelope:
        topic, partition, offset = document["source"]
        key = document.get("key")
        parsed = document.get("parsed")
        return cls(
            raw=document["event"].encode(),
            source=SourcePosition(
                topic,
                partition,
                offset,
                None if key is None else base64.b64decode(key),
                document.get("produced"),
            ),
            event=None if parsed is None else Event.from_document(parsed, int(parsed["ts"])),
            hop=document.get("hop"),
        )


@dataclass(frozen=True, slots=True)
class LinkAnswer:
    """What one link hop found about one event, on its way to the event's user."""

    user_id: str
    source: SourcePosition  # the event's, which names it among the user's waiting events
    hop: int
    facts: LinkFacts

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "facts",
                "user": self.user_id,
                "source": [self.source.topic, self.source.partition, self.source.offset],
                "hop": self.hop,
                "facts": self.facts.to_document(),
            }
        )

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LinkAnswer:
        topic, partition, offset = document["source"]
        facts = LinkFacts.from_document(document["facts"])
        source = SourcePosition(topic, partition, offset)
        return cls(str(document["user"]), source, int(document["hop"]), facts)


@dataclass(frozen=True, slots=True)
class Waiting:
    """One event of a user waiting for link facts: ``facts`` by hop, ``expects`` hops."""

    envelope: Envelope | None  # None: facts that came before their event (a replay)
    expects: int
    facts: dict[int, LinkFacts]

    @property
    def complete(self) -> bool:
        return self.envelope is not None and len(self.facts) >= self.expects

    def to_document(self) -> dict[str, Any]:
        return {
            "envelope": None if self.envelope is None else self.envelope.to_document(),
            "expects": self.expects,
            "facts": {str(hop): facts.to_document() for hop, facts in self.facts.items()},
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Waiting:
        raw = document["envelope"]
        return cls(
            None if raw is None else Envelope.from_document(raw),
            int(document["expects"]),
            {int(h): LinkFacts.from_document(f) for h, f in document["facts"].items()},
        )


# A user's waiting events (and stray facts), by the position intake read each event at.
Queue = list[tuple[tuple[str, int, int], Waiting]]
# Stray facts kept per user while their event may still come (only without transactions).
MAX_STRAY_FACTS = 16


def _source_key(source: SourcePosition) -> tuple[str, int, int]:
    return (source.topic, source.partition, source.offset)


def _next_ready(queue: Queue) -> int | None:
    """The index of the user's first waiting event, if it can be decided now: it has all
    its link facts, or too many events wait behind it."""
    events = [i for i, (_, waiting) in enumerate(queue) if waiting.envelope is not None]
    if not events:
        return None
    first = events[0]
    if queue[first][1].complete or len(events) > MAX_WAITING:
        return first
    return None


def _prune_stray(queue: Queue) -> Queue:
    stray = [i for i, (_, waiting) in enumerate(queue) if waiting.envelope is None]
    dropped = set(stray[: max(0, len(stray) - MAX_STRAY_FACTS)])
    return [entry for i, entry in enumerate(queue) if i not in dropped]


def _decode_queue(raw: bytes | None) -> Queue:
    if not raw:
        return []
    return [((t, p, o), Waiting.from_document(w)) for (t, p, o), w in orjson.loads(raw)]


def _encode_queue(queue: Queue) -> bytes | None:
    if not queue:
        return None
    return orjson.dumps([[list(key), waiting.to_document()] for key, waiting in queue])


# How each table's rows are read and written, by Tables field.
CODECS: dict[str, tuple[Callable[[bytes | None], Any], Callable[[Any], bytes | None]]] = {
    "users": (UserState.from_bytes, UserState.to_bytes),
    "ledgers": (Ledger.from_bytes, Ledger.to_bytes),
    "links": (LinkState.from_bytes, LinkState.to_bytes),
    "waiting": (_decode_queue, _encode_queue),
}


def open_rows(tables: Tables, name: str) -> OpenRows[Any]:
    """The decoded rows of ``tables.<name>`` for the batch in progress."""
    rows = tables.open.get(name)
    if rows is None:
        decode, encode = CODECS[name]
        rows = tables.open[name] = OpenRows(getattr(tables, name), decode, encode)
    return rows


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
        state_ttl_ms: int | None = None,
    ) -> None:
        """``partitioner`` maps a user key to its partition when there is no Kafka (replay);
        ``state_ttl_ms`` is how long a user, device or network may be silent before its
        state is forgotten (None: never)."""
        self.engine = engine
        self.metrics = metrics
        self.observed = metrics.for_program(engine.program.id)
        self.by_program = (engine.program.id,)  # the label values of per-program windows
        self.max_event_bytes = max_event_bytes
        self.partitioner = partitioner
        self.state_ttl_ms = state_ttl_ms
        # The newest event time the link and decide stages saw: the background sweep
        # forgets nothing newer than this (nor newer than the wall clock).
        self.newest_ts = 0
        # What the batch in progress decided, observed once when it is flushed: the Kafka
        # timestamp of each event decided, and each partition's ledger as its latest
        # decision left it, with that decision's event time.
        self.decided_produced_ms: list[int] = []
        self.ledgers_read: dict[int, tuple[Ledger, int]] = {}

    def handle(
        self, tables: Tables, source: SourcePosition, value: bytes | None, *, flush: bool = True
    ) -> list[Output]:
        """All three stages in-process: the outputs the worker would publish for one message.

        With ``flush=False`` the changed rows stay decoded until the caller's
        :meth:`flush` (a replay flushes once per batch of lines, as the worker does).
        """
        published: list[Output] = []
        pending = self.intake(source, value)
        while pending:
            output = pending.pop(0)
            if output.role == "links":
                pending += self.link(tables, output.key or b"", output.value, source)
            elif output.role == "linked":
                user_key = output.key or b""
                partition = self.partitioner(user_key) if self.partitioner else source.partition
                pending += self.decide(tables, partition, output.value, source)
            else:
                published.append(output)
        if flush:
            self.flush(tables)
        return published

    def flush(self, tables: Tables) -> None:
        """Write every row the batch changed back to its table, encoded once; then observe
        the batch's decisions, whose outputs now go to the producer."""
        for rows in tables.open.values():
            rows.flush()
        if self.decided_produced_ms:
            self._observe_latency()
        if self.ledgers_read:
            self._observe_budgets()

    def _observe_latency(self) -> None:
        """Event-to-decision latency, from each event's Kafka timestamp to now (one read of
        the clock per batch; a producer's clock ahead of ours counts as no wait)."""
        now_ms = self.metrics.clock.now_ms()
        observe = self.metrics.event_to_decision.observe
        for produced_ms in self.decided_produced_ms:
            observe(max(now_ms - produced_ms, 0) / 1000)
        self.decided_produced_ms.clear()

    def _observe_budgets(self) -> None:
        """What is left of each program-wide budget in each partition's share, from the
        ledger as the batch left it."""
        engine = self.engine
        for partition, (ledger, ts) in self.ledgers_read.items():
            share = Share(partition, engine.partitions)
            left = program_budgets_left(
                engine.program, ledger, share, ts=ts, bucket_ms=engine.bucket_ms
            )
            for budget, amount in left:
                self.observed.budget_remaining(str(partition), budget).set(amount)
        self.ledgers_read.clear()

    # ------------------------------------------------------------ stage 1: intake

    def intake(self, source: SourcePosition, value: bytes | None) -> list[Output]:
        """Validate; dead-letter what is invalid; send the rest to its user and its links."""
        try:
            event = parse_event(value, max_bytes=self.max_event_bytes)
            if isinstance(event, Rejection):
                return [self._dead_letter(source, value or b"", event)]
            if source.key != event.user_id.encode():
                self.metrics.rekeyed.inc()
            envelope = Envelope(value or b"", source, event=event)
            # The event itself first: it takes its place in its user's queue before
            # any link can answer for it.
            outputs = [Output("linked", event.user_id.encode(), envelope.to_bytes())]
            for hop, (_, key) in enumerate(link_keys(event)):
                copy = Envelope(envelope.raw, source, event=event, hop=hop)
                outputs.append(Output("links", key, copy.to_bytes()))
            return outputs
        except Exception as exc:  # a bug must cost one dead letter, never the worker
            return [self._internal_error(source, value, exc)]

    # ------------------------------------------------------------ stage 2: link

    def link(self, tables: Tables, key: bytes, value: bytes, at: SourcePosition) -> list[Output]:
        """What the device or network ``key`` (read at ``at``) knows, sent to the event's user.

        Whatever goes wrong here, the user still gets an answer for this hop (facts that
        say nothing): a missing answer would hold the user's later events back.
        """
        try:
            envelope = Envelope.from_bytes(value)
            event = self._trusted(envelope)
            hop = envelope.hop if envelope.hop is not None else -1
        except Exception as exc:
            return [self._internal_error(at, value, exc)]
        try:
            kind, expected = link_keys(event)[hop]
            if expected != key:  # only our own stages write here; never guess
                raise ValueError("a link hop arrived under another key than its own")
            self.newest_ts = max(self.newest_ts, event.ts)
            links = open_rows(tables, "links")
            state = links.get(key)
            if self._expired(state.last_ts, event.ts, "link-state"):
                state = LinkState()
            state, facts = observe_link(state, event, kind)
            links.put(key, state)
        except Exception:
            # Logged and counted, not dead-lettered: the event is still decided.
            log.exception("link.failed hop=%s", hop)
            self.metrics.link_failures.inc()
            facts = LinkFacts(kind="unknown")
        answer = LinkAnswer(event.user_id, envelope.source, hop, facts)
        return [Output("linked", event.user_id.encode(), answer.to_bytes())]

    # ------------------------------------------------------------ stage 3: decide

    def decide(
        self, tables: Tables, partition: int, value: bytes, at: SourcePosition
    ) -> list[Output]:
        """Queue an event or its link facts for its user on ``partition`` (read at ``at``);
        decide what is ready, in order."""
        try:
            document: dict[str, Any] = orjson.loads(value)
            user_key, arrived = self._arrival(document)
        except Exception as exc:
            return [self._internal_error(at, value, exc)]
        waiting_rows = open_rows(tables, "waiting")
        queue = waiting_rows.get(user_key)
        arrived(queue)
        outputs: list[Output] = []
        while (ready := _next_ready(queue)) is not None:
            waiting = queue.pop(ready)[1]
            assert waiting.envelope is not None  # _next_ready never picks stray facts
            if not waiting.complete:
                log.warning("decide.incomplete_links waiting=%d", len(queue))
                self.metrics.link_failures.inc()
            facts = tuple(waiting.facts[h] for h in sorted(waiting.facts))
            outputs += self._decide_safely(tables, partition, waiting.envelope, facts)
        waiting_rows.put(user_key, _prune_stray(queue))
        return outputs

    def _arrival(self, document: dict[str, Any]) -> tuple[bytes, Callable[[Queue], None]]:
        """The user an input is for, and how it changes the user's queue."""
        if document.get("kind") == "facts":
            answer = LinkAnswer.from_document(document)

            def add_facts(queue: Queue) -> None:
                wanted = _source_key(answer.source)
                for key, waiting in queue:
                    if key == wanted:
                        waiting.facts[answer.hop] = answer.facts
                        return
                # Facts before their event: only after a crash without transactions.
                queue.append((wanted, Waiting(None, 0, {answer.hop: answer.facts})))

            return answer.user_id.encode(), add_facts
        envelope = Envelope.from_document(document)
        event = self._trusted(envelope)

        def add_event(queue: Queue) -> None:
            wanted = _source_key(envelope.source)
            facts: dict[int, LinkFacts] = {}
            for index, (key, waiting) in enumerate(queue):
                if key == wanted and waiting.envelope is None:
                    facts = queue.pop(index)[1].facts
                    break
            queue.append((wanted, Waiting(envelope, len(link_keys(event)), facts)))

        return event.user_id.encode(), add_event

    def _decide_safely(
        self, tables: Tables, partition: int, envelope: Envelope, facts: tuple[LinkFacts, ...]
    ) -> list[Output]:
        try:
            return self._decide(tables, partition, envelope, facts)
        except Exception as exc:
            return [self._internal_error(envelope.source, envelope.raw, exc)]

    def _decide(
        self, tables: Tables, partition: int, envelope: Envelope, links: tuple[LinkFacts, ...]
    ) -> list[Output]:
        event = self._trusted(envelope)
        user_key = event.user_id.encode()
        key_of_ledger = ledger_key(self.engine.program.id, partition)
        self.newest_ts = max(self.newest_ts, event.ts)
        users, ledgers = open_rows(tables, "users"), open_rows(tables, "ledgers")
        user = users.get(user_key)
        if self._expired(user.last_ts, event.ts, "user-state"):
            user = UserState()
        ledger = ledgers.get(key_of_ledger)
        outcome = self.engine.process(user, ledger, event, partition=partition, links=links)
        if outcome.user is not user:
            users.put(user_key, outcome.user)
        if outcome.ledger is not ledger:
            ledgers.put(key_of_ledger, outcome.ledger)
        if outcome.duplicate:
            self.metrics.duplicates.inc()
        else:
            self._observe_decided(envelope, event, outcome.user, outcome.records[0])
            self.ledgers_read[partition] = (outcome.ledger, event.ts)
        if outcome.answers:
            self._observe_answers(outcome.answers)
        return [self._publish(record, user_key) for record in outcome.records]

    def _observe_decided(
        self, envelope: Envelope, event: Event, user: UserState, decision: Decision | FraudAlert
    ) -> None:
        observed = self.observed
        observed.events_in(event.type).inc()
        produced_ms = envelope.source.produced_ms
        if produced_ms is not None and produced_ms > 0:
            self.decided_produced_ms.append(produced_ms)
        program = self.engine.program
        if event.type in program.triggers and isinstance(decision, Decision):
            observed.risk_score.observe(decision.risk)
            if program.audit is not None:
                group = program.audit.group_of(user.profile)
                observed.audit_decisions(group, decision.status).inc()

    def _observe_answers(self, answers: tuple[Answer, ...]) -> None:
        """Redemptions (against grants, see :meth:`_publish`) and the model's log loss on
        the answers it learned from, before it learned."""
        learned = 0
        for answer in answers:
            if answer.redeemed:
                reward = (self.engine.program.id, answer.reward_id)
                self.metrics.redemption_ratio.add(reward, 1, 0)
            if answer.predicted is not None:
                loss = log_loss(answer.predicted, answer.redeemed)
                self.metrics.model_log_loss.add(self.by_program, loss, 1)
                learned += 1
        if learned:
            self.observed.model_updates.inc(learned)

    # ------------------------------------------------------------ time to live

    def _expired(self, last_ts: int | None, ts: int, table: str) -> bool:
        """Whether state last touched at ``last_ts`` is forgotten by an event at ``ts``.

        Decided at read time, in event time, so a replay forgets exactly what the live
        worker forgot, whenever the background sweep happened to delete the row.
        """
        if self.state_ttl_ms is None or last_ts is None or ts - last_ts <= self.state_ttl_ms:
            return False
        self.metrics.state_expired.labels(table).inc()
        return True

    def stale(self, table_field: str, value: bytes | None, now_ms: int) -> bool:
        """Whether a row of ``tables.<table_field>`` can be deleted at ``now_ms``: no event
        could read it any more without forgetting it (see :meth:`_expired`)."""
        if self.state_ttl_ms is None or not value:
            return False
        try:
            if table_field == "users":
                last_ts = orjson.loads(expand(value)).get("last_ts")
            elif table_field == "links":
                last_ts = LinkState.from_bytes(value).last_ts
            else:
                return False
        except Exception:  # an unreadable row is kept; the event that reads it will say so
            return False
        return isinstance(last_ts, int) and now_ms - last_ts > self.state_ttl_ms

    def _trusted(self, envelope: Envelope) -> Event:
        """The envelope's event as intake validated it (only the engine's own stages write
        the internal topics); an envelope without one is validated again."""
        if envelope.event is not None:
            return envelope.event
        event = parse_event(envelope.raw, max_bytes=self.max_event_bytes)
        if isinstance(event, Rejection):
            raise ValueError(f"an envelope carried an invalid event: {event.reason}")
        return event

    def unreadable(self, source: SourcePosition, value: bytes | None, exc: Exception) -> Output:
        """The dead letter for a record of an internal topic that cannot be read at all."""
        return self._internal_error(source, value, exc)

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
        # The engine decides for one program: every record is the pipeline's program's.
        observed = self.observed
        if isinstance(record, Decision):
            reward = record.action or NO_REWARD
            observed.decisions(reward, record.status).inc()
            mode = record.reasons[0].removeprefix("policy.") if record.reasons else ""
            if mode in POLICY_MODES:
                observed.policy_choices(mode).inc()
                self.metrics.exploration_ratio.add(self.by_program, mode == "explore", 1)
            if record.status == "granted":
                observed.reward_cost.inc(record.cost)
                self.metrics.redemption_ratio.add((record.program, reward), 0, 1)
            return Output("decisions", user_key, record.to_json())
        observed.fraud_alerts(record.reasons[0]).inc()
        return Output("fraud-alerts", user_key, record.to_json())

    def _dead_letter(self, source: SourcePosition, value: bytes, rejection: Rejection) -> Output:
        self.observed.dead_letters(rejection.reason).inc()
        record = DeadLetter.of(
            reason=rejection.reason,
            error=rejection.error,
            event_id=rejection.event_id,
            source=source,
            payload=value,
            max_payload_bytes=MAX_DEAD_LETTER_PAYLOAD,
        )
        return Output("dead-letter", source.key, record.to_json())
