"""One Kafka message in, the records to publish out: validation, the engine, linking.

Two stages, each keyed by what its state is partitioned by:

1. :meth:`Pipeline.decide` (reads ``events``, keyed by ``user_id``): validates,
   dead-letters what is invalid, sends an event stored on another partition
   than its user's to that partition (``rekeyed``: a producer that keys events
   otherwise, or partitions them with another hash), and decides the rest at
   once, with the user's state, the partition's ledger and the link facts the
   :class:`~app.fraud.view.LinkView` shows now. It then sends the event to each
   device and network it names (``links``).
2. :meth:`Pipeline.link` (reads ``links``, keyed by ``device:<id>`` or
   ``net:<network>``): what that device or network has seen
   (:mod:`app.fraud.links`), kept in the link-state table, whose changelog
   feeds every worker's view.

The worker runs each stage on its own topics; :meth:`Pipeline.handle` runs both
in-process for offline replay and tests (there the view is the link table
itself, with no delay). Everything is synchronous and knows Kafka only as
roles and bytes. Nothing raises on input: what cannot be decided becomes a
dead letter with its reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import orjson
from msgspec.structs import replace

from app.contract.records import (
    DeadLetter,
    Decision,
    Event,
    FraudAlert,
    SourcePosition,
)
from app.contract.validate import Rejection, parse_event
from app.decisioning.checks import program_budgets_left
from app.decisioning.engine import Answer, Engine
from app.decisioning.ledger import Ledger, Share, ledger_key
from app.erasure import (
    ERASE_HEADER,
    ERASE_ORDER_KEY,
    ErasedMark,
    EraseOrder,
    ErasureReceipt,
    KeptIndex,
    LinksBy,
    NotesBy,
    RowIndex,
    forget_cached_identifiers,
    link_without,
    newly_named,
    notes_without,
    receipt_subject,
)
from app.evaluation.experiments import SRM_ALARM_P, chi2_critical
from app.features.state import UserState
from app.fraud import LinkFacts, LinkState, link_keys
from app.fraud.links import advance_link, link_document, link_kind
from app.fraud.signals import RelatedNote
from app.fraud.view import LinkView, stored_states
from app.metrics import NO_REWARD, Metrics, Tally
from app.models import log_loss
from app.rows import DecodedRows, expand
from app.shadow import ANSWER_TYPES, LiveFacts, Shadow
from app.timers import Timers

log = logging.getLogger(__name__)

# A dead letter keeps at most this much of the original payload (base64 adds a third);
# larger inputs keep their size and SHA-256, and the original stays at its offset.
MAX_DEAD_LETTER_PAYLOAD = 512 * 1024
# A dead letter keeps at most this much of the original key, for the same reason: a key
# may be as large as the broker's record limit, and the dead letter must fit under it.
MAX_DEAD_LETTER_KEY = 1024
# How a decision on a trigger event was chosen (its first reason code, "policy.<mode>").
POLICY_MODES = frozenset({"exploit", "explore", "default", "below_minimum", "nothing_eligible"})
# The input each control event type may come from, by role (named in an unauthorized
# event's dead letter).
CONTROL_ROLES = {
    "fraud_label": "fraud-labels",
    "consent_updated": "consent",
    "member_imported": "members",
    "erasure_requested": "erasure-requests",
}
# Which event types each input may carry (an input not named here may carry any):
# control events come only from topics of their own, whose writers Kafka ACLs restrict,
# and never from ``events``, which every producer of user activity may write.
CONTROL_TYPES = frozenset(CONTROL_ROLES)
ALLOWED_TYPES: dict[str, Callable[[str], bool]] = {
    "events": lambda type_: type_ not in CONTROL_TYPES,
    "fraud-labels": lambda type_: type_ == "fraud_label",
    "consent": lambda type_: type_ == "consent_updated",
    "members": lambda type_: type_ == "member_imported",
    "erasure-requests": lambda type_: type_ == "erasure_requested",
}
# The header of a rekeyed event that says where it was first read ("topic/partition/offset").
SOURCE_HEADER = "rewardstream-source"
# The header of an internal record on the rekeyed topic that is not an event: a note that
# another user's fraud alert named this user as related (value: alert_id, by, ts).
RELATED_HEADER = "rewardstream-related"


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
    the row. Rows are immutable values, so what a flush writes is exactly what the
    events of the batch left.

    A worker's tables (``at_drain``) are written when they are drained for a commit
    instead: the rows changed stay decoded from batch to batch until then, and a row
    changed by every batch of a commit is encoded once (see :func:`open_rows`).
    """

    __slots__ = ("at_drain", "decode", "decoded", "deleted", "dirty", "encode", "rows", "table")

    def __init__(
        self,
        table: Table,
        decode: Callable[[bytes | None], T],
        encode: Callable[[T], bytes | None],
        decoded: DecodedRows[T] | None = None,
        *,
        at_drain: bool = False,
    ) -> None:
        self.table = table
        self.decode = decode
        self.encode = encode
        # Written when the table is drained for a commit (a worker's), not at the end of
        # each batch (see open_rows).
        self.at_drain = at_drain
        # Rows decoded in earlier batches, reused while unchanged (app.rows.DecodedRows).
        self.decoded = DecodedRows(table, decode, 0) if decoded is None else decoded
        self.rows: dict[bytes, T] = {}
        self.dirty: set[bytes] = set()
        self.deleted: set[bytes] = set()

    def get(self, key: bytes) -> T:
        try:
            return self.rows[key]
        except KeyError:
            value = self.rows[key] = self.decoded.get(key)
            return value

    def put(self, key: bytes, value: T) -> None:
        self.rows[key] = value
        self.dirty.add(key)
        self.deleted.discard(key)

    def delete(self, key: bytes) -> bool:
        """Delete the row at the flush (a later :meth:`put` writes it again); until then
        it reads as a row never written. Whether there was a row."""
        # A row changed in this batch exists unless deleted; else the table says.
        existed = (key not in self.deleted) if key in self.dirty else bool(self.table.get(key))
        self.decoded.forget(key)  # an erased user's decoded state leaves memory now
        self.rows[key] = self.decode(None)
        self.dirty.add(key)
        self.deleted.add(key)
        return existed

    def release(self) -> None:
        """The batch ended, and the rows it changed wait for the drain: forget those it only
        read. Until the next batch the table may change them (the TTL sweep); read again,
        they come from the table, checked against the decoded copy it keeps."""
        rows = self.rows
        if len(rows) != len(self.dirty):
            self.rows = {key: rows[key] for key in self.dirty}

    def flush(self) -> None:
        decoded = self.decoded
        for key in self.dirty:
            value = self.rows[key]
            raw = None if key in self.deleted else self.encode(value)
            if raw is not None:
                stored = compact(raw)
                self.table[key] = stored
                decoded.keep(key, stored, value)
            else:
                decoded.forget(key)
                if self.table.get(key) is not None:
                    del self.table[key]
        self.rows.clear()
        self.dirty.clear()
        self.deleted.clear()


@dataclass(frozen=True, slots=True)
class Tables:
    """Where state lives: per-user state by user id, per-partition ledgers by ledger key,
    and per-device and per-network link state by link key."""

    users: Table
    ledgers: Table
    links: Table = field(default_factory=dict)
    # A shadow program's own user states and ledgers (app.shadow); empty without one.
    shadow_users: Table = field(default_factory=dict)
    shadow_ledgers: Table = field(default_factory=dict)
    # Users erased lately, by the keyed hash of their id (app.erasure.ErasedMark).
    erased: Table = field(default_factory=dict)
    # When waiting offers of users who send nothing more are due, and each partition's
    # event time (app.timers).
    timers: Table = field(default_factory=dict)
    # What the pipeline derives from tables that keep nothing of their own (a worker's
    # tables keep it in their ``memo``): the timers' index.
    memo: dict[str, Any] = field(default_factory=dict)
    # The rows decoded since the last flush, by table field (see OpenRows).
    open: dict[str, OpenRows[Any]] = field(default_factory=dict)
    # Rows decoded in earlier batches, by table field, for tables that keep none of their
    # own (a worker's tables keep theirs in their ``memo``; replay's are plain dicts).
    decoded: dict[str, DecodedRows[Any]] = field(default_factory=dict)
    # How many partitions each table holds: a worker's hold one; replay's hold every
    # partition, and keep as many decoded rows as a worker's tables of them all would
    # (DECODED_KEPT is per partition).
    partitions: int = 1


# How each table's rows are read and written, by Tables field.
CODECS: dict[str, tuple[Callable[[bytes | None], Any], Callable[[Any], bytes | None]]] = {
    "users": (UserState.from_bytes, UserState.to_bytes),
    "ledgers": (Ledger.from_bytes, Ledger.to_bytes),
    "links": (LinkState.from_bytes, LinkState.to_bytes),
    "shadow_users": (UserState.from_bytes, UserState.to_bytes),
    "shadow_ledgers": (Ledger.from_bytes, Ledger.to_bytes),
}


# How many decoded rows each table keeps across batches, per partition: a user active
# within the partition's last couple of thousand decisions (a session's next click, an
# answer to a reward) is not inflated and parsed again. A decoded user state takes
# about 4.3 KB (measured by hand with tracemalloc after 10 events a user; stored, the
# row is about 340 bytes): about 9 MB a partition at most.
DECODED_KEPT: dict[str, int] = {
    "users": 2048,
    "ledgers": 256,
    "links": 2048,
    "shadow_users": 2048,
    "shadow_ledgers": 256,
}


# Whose offers a timer closes: the live program's user (then the user key) or the shadow's.
LIVE_SUBJECT = b"L"
SHADOW_SUBJECT = b"S"


def offer_timers(tables: Tables) -> Timers:
    """The index of ``tables.timers``, made once per table (and again for a table restored
    anew, as a worker's tables are at each assignment)."""
    table = tables.timers
    memo = getattr(table, "memo", tables.memo)
    timers = memo.get("timers")
    if timers is None or timers.table is not table:
        timers = memo["timers"] = Timers(table)
    assert isinstance(timers, Timers)
    return timers


def notes_by(tables: Tables, *, now_s: float, max_age_s: float) -> NotesBy:
    """Which rows of ``tables.users`` may hold a note of a given user's alert
    (:class:`app.erasure.NotesBy`), every row read into it: what an erase order reads.

    An erasure must take the erased user out of every note that names them, and out of
    every device and network row (:func:`links_by`). Looking in every row inflated cost
    about 3.7 µs a user row and 1.7 µs a link row (by hand): a second or more per erasure
    on a partition of 250,000 users, its decisions waiting. Each table's index is read a
    slice at each flush (:func:`read_indexes`), kept beside the table (a worker's tables
    are made anew at each assignment and recovery), and read anew once it has grown full
    or is ``max_age_s`` old (``now_s`` on the pipeline's monotonic clock), so what it
    keeps of rows erased since it was made lasts about that long. Only an order that
    comes before an index was ever read whole reads the rest at once.
    """
    kept: KeptIndex[NotesBy] = _kept(tables.users, tables.memo, _NOTES_BY)
    return kept.whole(tables.users, now_s, _begin(tables, NotesBy, now_s + max_age_s))


def links_by(tables: Tables, *, now_s: float, max_age_s: float) -> LinksBy:
    """Which rows of ``tables.links`` may name a given user (:class:`app.erasure.LinksBy`),
    every row read into it, as :func:`notes_by` says."""
    kept: KeptIndex[LinksBy] = _kept(tables.links, tables.memo, _LINKS_BY)
    return kept.whole(tables.links, now_s, _begin(tables, LinksBy, now_s + max_age_s))


def note_given(tables: Tables, by: str, key: bytes) -> None:
    """The row at ``key`` of ``tables.users`` was given a note of ``by``'s alert."""
    _kept(tables.users, tables.memo, _NOTES_BY).add(by, key)


def names_given(tables: Tables, key: bytes, names: Iterable[str]) -> None:
    """The row at ``key`` of ``tables.links`` may name ``names`` now."""
    kept = _kept(tables.links, tables.memo, _LINKS_BY)
    for name in names:
        kept.add(name, key)


# How many rows an index reads at each flush while it is being made: a few milliseconds a
# batch (4-6 µs a row, docs/decisions.md §22).
INDEX_ROWS_PER_FLUSH = 500


def read_indexes(tables: Tables, *, now_s: float, max_age_s: float) -> None:
    """Read a slice of each table's row index (begun anew when due), so that an erase
    order finds one read whole."""
    most, until_s = INDEX_ROWS_PER_FLUSH, now_s + max_age_s
    # A stage's tables hold only its own rows: the other table is empty here.
    if len(tables.users):
        notes: KeptIndex[NotesBy] = _kept(tables.users, tables.memo, _NOTES_BY)
        notes.read(tables.users, most, now_s, _begin(tables, NotesBy, until_s))
    if len(tables.links):
        links: KeptIndex[LinksBy] = _kept(tables.links, tables.memo, _LINKS_BY)
        links.read(tables.links, most, now_s, _begin(tables, LinksBy, until_s))


_NOTES_BY = "notes-by"
_LINKS_BY = "links-by"
Index = TypeVar("Index", NotesBy, LinksBy)
_FIELDS: dict[type[RowIndex], str] = {NotesBy: "users", LinksBy: "links"}


def _begin(tables: Tables, kind: type[Index], until_s: float) -> Callable[[], Index]:
    """How to begin an index ``kind`` of its table in ``tables``: from the table and the
    rows the batch in progress changed and did not write yet."""
    field_name = _FIELDS[kind]

    def begin() -> Index:
        table = getattr(tables, field_name)
        return kind(table, open_rows(tables, field_name).rows, until_s=until_s)

    return begin


def _kept(table: Table, memo: dict[str, Any], name: str) -> KeptIndex[Any]:
    """The index ``name`` kept beside ``table`` (in its own memo, a worker's tables; else
    in ``memo``, the one of the tables it is in)."""
    kept_in = getattr(table, "memo", memo)
    kept = kept_in.get(name)
    if kept is None:
        kept = kept_in[name] = KeptIndex()
    assert isinstance(kept, KeptIndex)
    return kept


def open_rows(tables: Tables, name: str) -> OpenRows[Any]:
    """The decoded rows of ``tables.<name>`` for the batch in progress."""
    rows = tables.open.get(name)
    if rows is None:
        decode, encode = CODECS[name]
        table = getattr(tables, name)
        memo = getattr(table, "memo", tables.decoded)
        decoded = memo.get(name)
        if decoded is None or decoded.rows is not table:
            kept = DECODED_KEPT[name] * tables.partitions
            decoded = memo[name] = DecodedRows(table, decode, kept)
        writers = getattr(table, "before_drain", None)
        if writers is None:
            rows = OpenRows(table, decode, encode, decoded)
        else:
            # A worker's table: the rows the batches change stay decoded until the table
            # is drained for a commit, and each is encoded once then, however many
            # batches of the commit changed it (a drain's commit spans thousands of
            # events). Kept beside the table, so they go with it if the task is dropped.
            rows = memo.get(_OPEN_ROWS)
            if rows is None:
                rows = memo[_OPEN_ROWS] = OpenRows(table, decode, encode, decoded, at_drain=True)
                writers.append(rows.flush)
        tables.open[name] = rows
    return rows


_OPEN_ROWS = "open-rows"


class Output(msgspec.Struct, frozen=True, gc=False):
    """A record to publish: the topic role, the Kafka key and the value bytes; a record
    copied between stages keeps its input's timestamp and says where it was read
    (the shape :class:`streams.topology.Output` asks for)."""

    role: str
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    source_ms: int | None = None  # a decision's event's Kafka timestamp: latency is from it
    partition: int | None = None  # None: the partition of the key (an erase order names one)


def related_note(alert: FraudAlert, user_id: str) -> Output:
    """The internal record that tells ``user_id``'s partition it was named in ``alert``."""
    note = RelatedNote(alert.alert_id, alert.user_id, alert.ts)
    return Output(
        "rekeyed",
        user_id.encode(),
        note.to_json(),
        timestamp_ms=alert.ts,
        headers=((RELATED_HEADER, b"1"),),
    )


def is_related_note(headers: Any) -> bool:
    """Whether a record of the rekeyed topic is a related-account note (not an event)."""
    return bool(headers) and any(name == RELATED_HEADER for name, _ in headers)


def is_erase_order(headers: Any) -> bool:
    """Whether a record of an internal topic is an erase order (app.erasure)."""
    # Asked of every record the link stage reads: most carry no headers at all.
    return bool(headers) and any(name == ERASE_HEADER for name, _ in headers)


def source_header(source: SourcePosition) -> tuple[str, bytes]:
    return (SOURCE_HEADER, f"{source.topic}/{source.partition}/{source.offset}".encode())


def first_read_at(source: SourcePosition, headers: Any) -> SourcePosition:
    """Where a rekeyed event was first read (its header), else ``source`` itself."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            topic, partition, offset = bytes(value).decode().rsplit("/", 2)
            return SourcePosition(
                topic, int(partition), int(offset), source.key, source.produced_ms
            )
    return source


class Pipeline:
    """Validate, decide, link and route one message at a time."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_event_bytes: int,
        partitioner: Callable[[bytes], int] | None = None,
        state_ttl_ms: int | None = None,
        max_ahead_ms: int | None = None,
        shadow: Engine | None = None,
        receipt_key: str = "",
        erasure_bound_ms: int = 7 * 86_400_000,
    ) -> None:
        """``partitioner`` maps a user key to the partition its state lives on (None: the
        partition an event was read from is its user's); ``state_ttl_ms`` is how long a
        user, device or network may be silent before its state is forgotten (None:
        never); ``max_ahead_ms`` is how far ahead of the worker's clock an event may be
        stamped (None: no bound); ``shadow`` is a challenger program's engine that decides
        every event beside the live one (app.shadow), or None; ``receipt_key`` keys the
        hash that names a user in an erasure receipt (app.erasure), and
        ``erasure_bound_ms`` how long an erased user's mark is kept."""
        self.engine = engine
        self.metrics = metrics
        self.clock = metrics.clock
        self.observed = metrics.for_program(engine.program.id)
        self.by_program = (engine.program.id,)  # the label values of per-program windows
        experiment = engine.program.experiment
        if experiment is not None:  # what the sample-ratio alert compares the users with
            program_id = engine.program.id
            for arm in experiment.arms:
                metrics.arm_share.labels(program_id, arm.name).set(arm.share)
            critical = chi2_critical(SRM_ALARM_P, len(experiment.arms) - 1)
            metrics.srm_critical.labels(program_id).set(critical)
        audit = engine.program.audit
        if audit is not None:  # the disparity alert's threshold (deploy/prometheus/alerts.yml)
            metrics.audit_min_ratio.labels(engine.program.id).set(audit.min_ratio)
        self.max_event_bytes = max_event_bytes
        self.partitioner = partitioner
        self.state_ttl_ms = state_ttl_ms
        self.max_ahead_ms = max_ahead_ms
        # What the batch in progress decided, observed once when it is flushed: each
        # partition's ledger as its latest decision left it, with that decision's event
        # time. (Latency is observed once the decisions are committed: see committed.)
        # Keyed by (partition, experiment arm).
        self.ledgers_read: dict[tuple[int, str | None], tuple[Ledger, int]] = {}
        # The newest event time decided or linked: the sweep forgets nothing newer than
        # this (see stale), so a backfill of old events keeps the state it builds.
        self.newest_ts = 0
        # Where metric moves go while a batch is held (see holding); None: at once.
        self.held: list[Callable[[], None]] | None = None
        # The counters and ratio windows the batch in progress moves, summed: applied once
        # it is committed (holding), or at the next flush when nothing is held.
        self.tally = Tally()
        self._links_sent = self.metrics.link_records.labels("sent")
        self._links_handled = self.metrics.link_records.labels("handled")
        self.shadow = None if shadow is None else self._shadow(shadow)
        self.receipt_key = receipt_key
        self.erasure_bound_ms = erasure_bound_ms
        # How long an index of which rows name whom (app.erasure) is kept: a quarter of the
        # bound, as for a snapshot, so what it keeps of an erased user goes within it.
        self.index_max_age_s = erasure_bound_ms / 4_000

    def _shadow(self, engine: Engine) -> Shadow:
        counted = self.metrics.shadow_decisions
        program_id = engine.program.id
        return Shadow(
            engine,
            live_program_id=self.engine.program.id,
            expired=lambda last_ts, ts: self._expired(last_ts, ts, "shadow-user-state"),
            count=lambda status: self.tally.inc(counted.labels(program_id, status)),
        )

    def _count(self, move: Callable[..., Any], *args: Any) -> None:
        """Move a metric: at once, or, while a batch is held (:meth:`holding`), once the
        batch is committed, so counters count only what readers can see. (Counters and
        ratio windows, which only add, go through :attr:`tally` instead.)"""
        if self.held is None:
            move(*args)
        else:
            self.held.append(functools.partial(move, *args))

    @contextlib.contextmanager
    def holding(self, into: list[Callable[[], None]]) -> Iterator[None]:
        """Inside the block, what the batch teaches the models and every metric it moves
        are held in ``into``, for the runtime to run once the batch is committed."""
        previous, self.held = self.held, into
        learners = [self.engine] if self.shadow is None else [self.engine, self.shadow.engine]
        try:
            with contextlib.ExitStack() as held:
                for learner in learners:
                    held.enter_context(learner.holding_learning(into))
                yield
        finally:
            self.held = previous
            if self.tally:
                into.append(self.tally.apply)
                self.tally = Tally()

    def handle(
        self, tables: Tables, source: SourcePosition, value: bytes | None, *, flush: bool = True
    ) -> list[Output]:
        """Both stages in-process: the outputs the worker would publish for one message,
        with the link table itself as the view (no delay).

        With ``flush=False`` the changed rows stay decoded until the caller's
        :meth:`flush` (a replay flushes once per batch of lines, as the worker does).
        """
        view = LinkView(
            open_rows(tables, "links").get, expired=self._link_expired, keep_passes=True
        )
        published: list[Output] = []
        pending = self.decide(tables, source.partition, source, value, view, local=True)
        erased: set[tuple[str, bytes]] = set()  # one table holds every partition here
        while pending:
            output = pending.pop(0)
            if is_erase_order(output.headers):
                if (output.role, output.value) not in erased:
                    erased.add((output.role, output.value))
                    if output.role == "links":
                        self.erase_links(tables, output.value, source)
                    else:
                        self.erase_notes(tables, output.value, source)
            elif output.role == "links":
                self.link(tables, output.key or b"", output.value, source, view=view)
            elif output.role == "rekeyed":  # a related-account note (events are local)
                self.related(tables, output.key or b"", output.value, source)
            else:
                published.append(output)
        if flush:
            self.flush(tables)
        return published

    def flush(self, tables: Tables) -> None:
        """Write every row the batch changed back to its table, encoded once (a worker's
        tables: keep the changed rows until the table is drained for the commit, see
        :func:`open_rows`); then observe the budgets the batch's decisions left."""
        for rows in tables.open.values():
            if rows.at_drain:
                rows.release()
            else:
                rows.flush()
        read_indexes(tables, now_s=self.clock.monotonic_s(), max_age_s=self.index_max_age_s)
        if self.held is None and self.tally:
            self.tally.apply()
        if self.ledgers_read:
            self._observe_budgets()

    def committed(self, produced_ms: list[int], now_ms: int) -> None:
        """Decisions on events produced at ``produced_ms`` were committed (became visible)
        at ``now_ms``: event-to-decision latency (a producer's clock ahead of ours counts
        as no wait)."""
        observe = self.metrics.event_to_decision.observe
        for produced in produced_ms:
            observe(max(now_ms - produced, 0) / 1000)

    def _observe_budgets(self) -> None:
        """What is left of each program-wide budget in each partition's share, from the
        ledger as the batch left it."""
        engine = self.engine
        experiment = engine.program.experiment
        shares = {a.name: a.share for a in experiment.arms} if experiment else {}
        for (partition, arm), (ledger, ts) in self.ledgers_read.items():
            share = Share(partition, engine.partitions, 1.0 if arm is None else shares[arm])
            left = program_budgets_left(
                engine.program, ledger, share, ts=ts, bucket_ms=engine.bucket_ms
            )
            for budget, amount in left:
                if arm is None:
                    self.observed.budget_remaining(str(partition), budget).set(amount)
                else:
                    self.observed.arm_budget_remaining(arm, str(partition), budget).set(amount)
        self.ledgers_read.clear()

    # ------------------------------------------------------------ stage 1: decide

    def decide(
        self,
        tables: Tables,
        partition: int,
        source: SourcePosition,
        value: bytes | None,
        view: LinkView,
        *,
        role: str | None = None,
        local: bool = False,
    ) -> list[Output]:
        """Validate one event read at ``source`` on ``partition`` from the input ``role``
        (None: a trusted file, any type); dead-letter it, send it to its user's partition,
        or decide it and send it on to its links.

        ``local``: every partition's state is in this process (:meth:`handle`), so an
        event read away from its user's partition is decided there at once, as the worker
        decides it after the rekeyed hop, without being sent on and parsed again."""
        try:
            event = parse_event(
                value,
                max_bytes=self.max_event_bytes,
                now_ms=None if self.max_ahead_ms is None else self.clock.now_ms(),
                max_ahead_ms=self.max_ahead_ms,
            )
            if isinstance(event, Rejection):
                return [self._dead_letter(source, value or b"", event)]
            allowed = ALLOWED_TYPES.get(role) if role is not None else None
            if allowed is not None and not allowed(event.type):
                return [self._dead_letter(source, value or b"", _unauthorized(event, role))]
            user_key = event.user_id.encode()
            if source.key != user_key:
                self.tally.inc(self.metrics.rekeyed)
            home = self.partitioner(user_key) if self.partitioner else partition
            if home != partition and local:
                # Named where it was first read, as the worker names it (first_read_at).
                partition, source = home, replace(source, key=user_key)
            elif home != partition:
                return [
                    Output(
                        "rekeyed",
                        user_key,
                        value or b"",
                        timestamp_ms=source.produced_ms,
                        headers=(source_header(source),),
                    )
                ]
            if event.type == "erasure_requested":
                return self._erase(tables, partition, source, event, view)
            if tables.erased and self._sent_before_erasure(tables, source, event):
                return [self._erased_event(source)]
            links = view.facts(event)
            outputs = self._decide(tables, partition, source, event, links)
        except Exception as exc:  # a bug must cost one dead letter, never the worker
            return [self._internal_error(source, value, exc)]
        # Only a decided event goes on to its links (a repeat's alert is not a decision).
        keys = link_keys(event) if outputs and outputs[0].role == "decisions" else ()
        if keys:
            document = orjson.dumps(link_document(event))
            view.decided(event, document)
            outputs += [Output("links", key, document) for _, key in keys]
            self.tally.inc(self._links_sent, len(keys))
        return outputs

    def _decide(
        self,
        tables: Tables,
        partition: int,
        source: SourcePosition,
        event: Event,
        links: tuple[LinkFacts, ...],
    ) -> list[Output]:
        user_key = event.user_id.encode()
        arm = self.engine.arm_of(event.user_id)
        arm_name = None if arm is None else arm.name
        key_of_ledger = ledger_key(self.engine.program.id, partition, arm_name)
        self.newest_ts = max(self.newest_ts, event.ts)
        timers = offer_timers(tables)
        if timers.advance(partition, event.ts):
            self._time_out_offers(tables, timers, partition)
        users, ledgers = open_rows(tables, "users"), open_rows(tables, "ledgers")
        user = users.get(user_key)
        if self._expired(user.last_ts, event.ts, "user-state"):
            user = UserState()
        ledger = ledgers.get(key_of_ledger)
        outcome = self.engine.process(user, ledger, event, partition=partition, links=links)
        if outcome.user is not user:
            users.put(user_key, outcome.user)
        if outcome.user.pending:
            self._arm(timers, partition, LIVE_SUBJECT + user_key, self.engine, outcome.user)
        if outcome.ledger is not ledger:
            ledgers.put(key_of_ledger, outcome.ledger)
        if outcome.duplicate:
            self.tally.inc(self.metrics.duplicates)
        else:
            self._observe_decided(source, event, outcome.user, outcome.records[0])
            self.ledgers_read[partition, arm_name] = (outcome.ledger, event.ts)
        if outcome.answers:
            self._observe_answers(outcome.answers)
        produced_ms = source.produced_ms if source.produced_ms and source.produced_ms > 0 else None
        records = outcome.records
        notes = user.risk.related
        if (links or notes) and not outcome.duplicate and isinstance(records[0], Decision):
            # What the view showed, and the notes of other users' alerts the user's risk
            # took in, go into the decision: replay and audit need them.
            known = replace(
                records[0],
                links=tuple(facts.to_document() for facts in links),
                related=tuple(note.to_document() for note in notes),
            )
            records = (known, *records[1:])
        published = [self._publish(record, user_key, produced_ms) for record in records]
        published += [
            related_note(alert, user)
            for alert in records
            if isinstance(alert, FraudAlert)
            for user in alert.related_users
        ]
        if self.shadow is not None and not outcome.duplicate and isinstance(records[0], Decision):
            published += self._shadow_decide(tables, partition, event, links, user, records[0])
        return published

    def _arm(
        self, timers: Timers, partition: int, subject: bytes, engine: Engine, user: UserState
    ) -> None:
        """Make sure a timer of ``subject`` is due no later than ``user``'s first waiting
        offer; one due earlier stays (it fires, closes what is due, and sets the next)."""
        due = engine.offers_due_at(user)
        if due is not None and not timers.covers(partition, subject, due):
            timers.add(partition, due, subject)

    def _time_out_offers(self, tables: Tables, timers: Timers, partition: int) -> None:
        """Close, as not redeemed, the waiting offers whose response window the
        partition's event time has passed, of users who sent nothing since, and learn that
        (as their next event would have): so the models learn from the users who never
        come back, not only from those who do."""
        clock = timers.clock(partition)
        assert clock is not None
        for subject in timers.pop_due(partition):
            if subject[:1] == LIVE_SUBJECT:
                answers = self._time_out(tables, "users", self.engine, subject, clock)
                if answers:
                    self._observe_answers(answers)
                    self.tally.inc(self.observed.offers_timed_out, len(answers))
                self._rearm(tables, timers, partition, "users", self.engine, subject)
            elif self.shadow is not None:
                try:  # the live decisions must not depend on the shadow
                    self._time_out(tables, "shadow_users", self.shadow.engine, subject, clock)
                    engine = self.shadow.engine
                    self._rearm(tables, timers, partition, "shadow_users", engine, subject)
                except Exception:
                    log.exception("shadow.timer_failed program=%s", self.shadow.program_id)
                    self.shadow.count("failed")

    def _time_out(
        self, tables: Tables, name: str, engine: Engine, subject: bytes, clock: int
    ) -> tuple[Answer, ...]:
        rows = open_rows(tables, name)
        user_key = subject[1:]
        user = rows.get(user_key)
        if user.last_ts is None or self._forgotten(user.last_ts, clock):
            return ()  # erased, or past its time to live: its next event starts afresh
        after, answers = engine.expire_offers(user, clock)
        if after is not user:
            rows.put(user_key, after)
        return answers

    def _rearm(
        self,
        tables: Tables,
        timers: Timers,
        partition: int,
        name: str,
        engine: Engine,
        subject: bytes,
    ) -> None:
        user = open_rows(tables, name).get(subject[1:])
        if user.pending and user.last_ts is not None:
            self._arm(timers, partition, subject, engine, user)

    def _sent_before_erasure(self, tables: Tables, source: SourcePosition, event: Event) -> bool:
        """Whether ``event`` was sent before an erasure of its user that was carried out
        already (it waited in another input's backlog): it is not decided, or the user's
        data from before the request would live on (app.erasure.ErasedMark)."""
        raw = tables.erased.get(receipt_subject(event.user_id, self.receipt_key).encode())
        if not raw or not source.produced_ms or source.produced_ms < 0:
            return False
        return ErasedMark.from_json(raw).covers(source.produced_ms)

    def _erased_event(self, source: SourcePosition) -> Output:
        """The dead letter of an event sent before its user's erasure: where it was read
        and nothing of what it said (no key, no payload, no event id)."""
        rejection = Rejection(
            "erased",
            "the event was sent before its user's erasure request and reached the engine "
            "after it: it is not decided, and nothing of it is kept (docs/privacy.md)",
        )
        return self._dead_letter(replace(source, key=None), b"", rejection)

    def _erase(
        self, tables: Tables, partition: int, source: SourcePosition, event: Event, view: LinkView
    ) -> list[Output]:
        """Forget ``event``'s user (an ``erasure_requested`` on the user's partition): delete
        the user's rows, take the user out of the view's overlay, order every partition of
        the internal topics to forget the user, and publish the receipt (app.erasure)."""
        user_key = event.user_id.encode()
        subject = receipt_subject(event.user_id, self.receipt_key)
        requested_ms = source.produced_ms if source.produced_ms and source.produced_ms > 0 else None
        if requested_ms is not None:
            mark = ErasedMark(requested_ms, requested_ms + self.erasure_bound_ms)
            tables.erased[subject.encode()] = mark.to_json()
        removed = {
            "user_state": open_rows(tables, "users").delete(user_key),
            "shadow_user_state": open_rows(tables, "shadow_users").delete(user_key),
            "recent_links": view.forget(event.user_id) > 0,
            "offer_timers": sum(
                offer_timers(tables).cancel(partition, kind + user_key)
                for kind in (LIVE_SUBJECT, SHADOW_SUBJECT)
            )
            > 0,
        }
        forget_cached_identifiers()
        order = EraseOrder(event.user_id, event.event_id, event.ts).to_json()
        marked = ((ERASE_HEADER, b"1"),)
        partitions = range(self.engine.partitions)
        outputs = [
            Output(role, ERASE_ORDER_KEY, order, headers=marked, partition=partition)
            for role in ("links", "rekeyed")
            for partition in partitions
        ]
        receipt = ErasureReceipt(
            request_id=event.event_id,
            subject=subject,
            program=self.engine.program.id,
            requested_ts=event.ts,
            removed=removed,
            ordered={"links": len(partitions), "rekeyed": len(partitions)},
        )
        outputs.append(Output("erasures", receipt.subject.encode(), receipt.to_json()))
        self.tally.inc(self.metrics.erasures)
        return outputs

    def erase_notes(self, tables: Tables, value: bytes, at: SourcePosition) -> None:
        """An erase order on the rekeyed topic: take the erased user out of the notes other
        users of this partition hold (an alert of the erased user named them)."""
        forget_cached_identifiers()
        try:
            order = EraseOrder.from_json(value)
            users = open_rows(tables, "users")
            now_s, max_age_s = self.clock.monotonic_s(), self.index_max_age_s
            index = notes_by(tables, now_s=now_s, max_age_s=max_age_s)
            for key in index.rows_naming(order.user_id):
                user = users.get(key)
                cleaned = notes_without(user, order.user_id)
                if cleaned is not user:
                    users.put(key, cleaned)
                    self.tally.inc(self.metrics.erased_rows.labels("user-state"))
        except Exception:
            log.exception(
                "erase.failed topic=%s partition=%d offset=%d", at.topic, at.partition, at.offset
            )
            self.tally.inc(self.metrics.link_failures)

    def erase_links(self, tables: Tables, value: bytes, at: SourcePosition) -> None:
        """An erase order on the links topic: take the erased user out of every device and
        network row of this partition (a row left with nothing is deleted)."""
        forget_cached_identifiers()
        try:
            order = EraseOrder.from_json(value)
            links = open_rows(tables, "links")
            now_s, max_age_s = self.clock.monotonic_s(), self.index_max_age_s
            index = links_by(tables, now_s=now_s, max_age_s=max_age_s)
            for key in index.rows_naming(order.user_id):
                state = links.get(key)
                cleaned = link_without(state, order.user_id)
                if cleaned is state:
                    continue
                if cleaned.accounts or cleaned.referrals:
                    links.put(key, cleaned)
                else:
                    links.delete(key)
                self.tally.inc(self.metrics.erased_rows.labels("link-state"))
        except Exception:
            log.exception(
                "erase.failed topic=%s partition=%d offset=%d", at.topic, at.partition, at.offset
            )
            self.tally.inc(self.metrics.link_failures)

    def _shadow_decide(
        self,
        tables: Tables,
        partition: int,
        event: Event,
        links: tuple[LinkFacts, ...],
        user: UserState,
        live: Decision,
    ) -> list[Output]:
        """The shadow program's decision on ``event``, which the live engine decided as
        ``live`` for ``user`` (its state before the event)."""
        assert self.shadow is not None
        answered = None
        if event.type in ANSWER_TYPES:
            answered = next(
                (p.reward_id for p in user.pending if p.decision_id == event.decision_id), None
            )
        shadow = self.shadow.decide(
            open_rows(tables, "shadow_users"),
            open_rows(tables, "shadow_ledgers"),
            partition,
            event,
            links,
            LiveFacts(live, answered),
        )
        if shadow is None:
            return []
        user_key = event.user_id.encode()
        after = open_rows(tables, "shadow_users").get(user_key)
        if after.pending:
            try:  # the live decisions must not depend on the shadow
                timers, engine = offer_timers(tables), self.shadow.engine
                self._arm(timers, partition, SHADOW_SUBJECT + user_key, engine, after)
            except Exception:
                log.exception("shadow.timer_failed program=%s", self.shadow.program_id)
                self.shadow.count("failed")
        return [Output("shadow-decisions", user_key, shadow.to_json())]

    def related(self, tables: Tables, key: bytes, value: bytes, at: SourcePosition) -> None:
        """A note that another user's alert named user ``key`` as related (sent by the
        decide stage that raised the alert, through the rekeyed topic to this user's
        partition): evidence for the user's next event. Only the worker writes these; one
        that cannot be read is logged and counted, never decided."""
        try:
            document = orjson.loads(value)
            note = RelatedNote(str(document["alert_id"]), str(document["by"]), int(document["ts"]))
            users = open_rows(tables, "users")
            user = users.get(key)
            if user.last_ts is None:
                return  # an account this partition no longer (or never) knew: nothing to mark
            noted = self.engine.note_related(user, note)
            if noted is not user:
                users.put(key, noted)
                note_given(tables, note.by, key)
                self.tally.inc(self.metrics.related_notes)
        except Exception:
            log.exception(
                "related.failed topic=%s partition=%d offset=%d", at.topic, at.partition, at.offset
            )
            self.tally.inc(self.metrics.link_failures)

    def _observe_decided(
        self, source: SourcePosition, event: Event, user: UserState, decision: Decision | FraudAlert
    ) -> None:
        observed = self.observed
        self.tally.inc(observed.events_in(event.type))
        program = self.engine.program
        if isinstance(decision, Decision) and decision.arm is not None:
            if user.events == 1:
                self.tally.inc(observed.arm_users(decision.arm))
            if event.type in program.triggers:
                self.tally.inc(observed.arm_decisions(decision.arm, decision.status))
        if event.type in program.triggers and isinstance(decision, Decision):
            self._count(observed.risk_score.observe, decision.risk)
            if program.audit is not None:
                group = program.audit.group_of(user.profile)
                self.tally.inc(observed.audit_decisions(group, decision.status))

    def _observe_answers(self, answers: tuple[Answer, ...]) -> None:
        """Redemptions (against grants, see :meth:`_publish`) and the model's log loss on
        the answers it learned from, before it learned."""
        learned = 0
        for answer in answers:
            if answer.redeemed:
                reward = (self.engine.program.id, answer.reward_id)
                self.tally.ratio(self.metrics.redemption_ratio, reward, 1, 0)
            if answer.predicted is not None:
                loss = log_loss(answer.predicted, answer.redeemed)
                self.tally.ratio(self.metrics.model_log_loss, self.by_program, loss, 1)
                learned += 1
        if learned:
            self.tally.inc(self.observed.model_updates, learned)

    # ------------------------------------------------------------ stage 2: link

    def link(
        self,
        tables: Tables,
        key: bytes,
        value: bytes,
        at: SourcePosition,
        *,
        view: LinkView | None = None,
    ) -> None:
        """Pass one decided event (as the decide stage sent it) through the state of the
        device or network ``key``. Only the decide stage writes here: a record that cannot
        be read is logged and counted, never decided (its event already was).

        ``view``: the view the event's facts were just read from over this same table
        (in-process, see :meth:`handle`), whose work this hop can reuse."""
        try:
            event = view.sent(value) if view is not None else None
            if event is None:
                document = orjson.loads(value)
                event = Event.from_document(document, int(document["ts"]))
            kind = link_kind(event, key)
            links = open_rows(tables, "links")
            state = links.get(key)
            if self._expired(state.last_ts, event.ts, "link-state"):
                state = LinkState()
            passed = view.passed(key, state, event) if view is not None else None
            after = passed if passed is not None else advance_link(state, event, kind)
            links.put(key, after)
            names_given(tables, key, newly_named(state, after, event.user_id, event.ts))
        except Exception:
            log.exception(
                "link.failed topic=%s partition=%d offset=%d", at.topic, at.partition, at.offset
            )
            self.tally.inc(self.metrics.link_failures)
        self.tally.inc(self._links_handled)  # a failed record is handled too: logged, counted

    # ------------------------------------------------------------ time to live

    def _expired(self, last_ts: int | None, ts: int, table: str) -> bool:
        """Whether state last touched at ``last_ts`` is forgotten by an event at ``ts``.

        Decided at read time, in event time, so a replay forgets exactly what the live
        worker forgot, whenever the background sweep happened to delete the row.
        """
        if self.state_ttl_ms is None or last_ts is None or ts - last_ts <= self.state_ttl_ms:
            return False
        self.tally.inc(self.metrics.state_expired.labels(table))
        return True

    def _forgotten(self, last_ts: int, ts: int) -> bool:
        """Whether state last touched at ``last_ts`` is past its time to live at ``ts``
        (as :meth:`_expired`, without counting: the event that reads it counts)."""
        return self.state_ttl_ms is not None and ts - last_ts > self.state_ttl_ms

    def _link_expired(self, last_ts: int | None, ts: int) -> bool:
        """Whether the view's state of a link is forgotten by an event at ``ts`` (as the
        link stage would forget it; not counted: the link stage counts its own)."""
        return (
            self.state_ttl_ms is not None
            and last_ts is not None
            and (ts - last_ts > self.state_ttl_ms)
        )

    def link_view(self, rows: Mapping[bytes, bytes | None]) -> LinkView:
        """The view over the stored link-state rows ``rows``, with this worker's overlay."""
        return LinkView(stored_states(rows), now_ms=self.clock.now_ms, expired=self._link_expired)

    def stale(self, table_field: str, value: bytes | None, now_ms: int) -> bool:
        """Whether a row of ``tables.<table_field>`` can be deleted at ``now_ms`` (the
        worker's clock): no event could read it any more without forgetting it (see
        :meth:`_expired`). "Now" is never later than the newest event time this pipeline
        saw: events of a backfill, long past, keep the state they build."""
        if table_field == "erased":  # kept for the erasure bound, by the worker's clock
            try:
                return value is not None and ErasedMark.from_json(value).until_ms < now_ms
            except Exception:  # unreadable: kept (only the worker writes these)
                return False
        now_ms = min(now_ms, self.newest_ts)
        if self.state_ttl_ms is None or not value:
            return False
        try:
            if table_field in ("users", "shadow_users"):
                last_ts = orjson.loads(expand(value)).get("last_ts")
            elif table_field == "links":
                last_ts = LinkState.from_bytes(value).last_ts
            else:
                return False
        except Exception:  # an unreadable row is kept; the event that reads it will say so
            return False
        return isinstance(last_ts, int) and now_ms - last_ts > self.state_ttl_ms

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

    def _publish(
        self, record: Decision | FraudAlert, user_key: bytes, produced_ms: int | None
    ) -> Output:
        # The engine decides for one program: every record is the pipeline's program's.
        observed = self.observed
        if isinstance(record, Decision):
            reward = record.action or NO_REWARD
            self.tally.inc(observed.decisions(reward, record.status))
            first = record.reasons[0] if record.reasons else ""
            mode = first.removeprefix("policy.")
            if first.startswith("policy.") and mode not in POLICY_MODES:
                mode = "other"  # a custom policy's own word: one label, whatever it says
            if mode in POLICY_MODES or mode == "other":
                self.tally.inc(observed.policy_choices(mode))
                self.tally.ratio(
                    self.metrics.exploration_ratio, self.by_program, mode == "explore", 1
                )
            if record.status == "held":
                self.tally.inc(observed.holds(record.hold or "risk"))
            if record.status == "granted":
                self.tally.inc(observed.reward_cost, record.cost)
                self.tally.ratio(self.metrics.redemption_ratio, (record.program, reward), 0, 1)
            return Output("decisions", user_key, record.to_json(), source_ms=produced_ms)
        self.tally.inc(observed.fraud_alerts(record.reasons[0]))
        return Output("fraud-alerts", user_key, record.to_json())

    def _dead_letter(self, source: SourcePosition, value: bytes, rejection: Rejection) -> Output:
        self.tally.inc(self.observed.dead_letters(rejection.reason))
        if source.key is not None and len(source.key) > MAX_DEAD_LETTER_KEY:
            # A key may be as large as the broker's record limit; the dead letter (its key
            # and its body) must fit under it. The original stays at its offset.
            source = replace(source, key=source.key[:MAX_DEAD_LETTER_KEY])
        record = DeadLetter.of(
            reason=rejection.reason,
            error=rejection.error,
            event_id=rejection.event_id,
            source=source,
            payload=value,
            max_payload_bytes=MAX_DEAD_LETTER_PAYLOAD,
        )
        return Output("dead-letter", record.source.key, record.to_json())


def _unauthorized(event: Event, role: str | None) -> Rejection:
    where = CONTROL_ROLES.get(event.type)
    hint = f"; send it to the {where} topic" if where else ""
    return Rejection(
        "unauthorized",
        f"a {event.type} event may not come from the {role} topic{hint} "
        "(docs/contract.md, who may send what)",
        event.event_id,
    )
