"""The reward engine's topics, tables and stages.

    events ──▶ [decide] ──▶ decisions, fraud-alerts, dead-letter
       ▲          │  ├─ user-state table        (changelog: <app_id>-user-state-changelog)
       │          │  ├─ program-ledger table    (budget and stock spent, one row per partition)
       │          │  ├─ shadow-user-state, shadow-program-ledger: a shadow program's own
       │          │  │  state; its decisions go to shadow-decisions (app/shadow.py)
       │          │  ╰─ offer-timers: when waiting offers are due, on event time (app/timers.py)
       │          │  reads the link view ◀───────────────────────────────╮
       │          ├──▶ <app>-rekeyed  (an event stored on another         │
       │          │    partition than its user's; read by [decide] too)  │
       │          ╰──▶ <app>-links    (each decided event, keyed by       │
       │                device:<id> or net:<network>)                     │
       │                   │                                              │
       │                [link] ─ link-state table ── changelog ── every worker's view
       │
    [checkpoint timer] ──▶ model-checkpoints     (compacted; read back at start-up)

An event is decided in one hop: the decide stage reads it, decides it with the
user's state, the partition's ledger and the link view, and commits the
decision, the state changes and the input offset in one transaction. The link
stage then counts the event in the state of each device and network it names;
the view every worker keeps of that state trails it by a commit and a fetch
(app/fraud/view.py says what a burst within that delay can and cannot do).
Partition ``p`` of ``events``, ``rekeyed`` and ``links`` is one task with one
transactional producer (streams/task.py). The decide stage also reads the control
inputs ``fraud-labels``, ``consent``, ``members`` and ``erasure-requests``, each of which
may carry one event type only (app.pipeline.ALLOWED_TYPES), partitioned like ``events``.
An erasure sends erase orders to every partition of ``links`` and ``rekeyed``
(app/erasure.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.contract.records import SourcePosition
from app.fraud.view import LinkView
from app.pipeline import (
    Output,
    Pipeline,
    Tables,
    first_read_at,
    is_erase_order,
    is_related_note,
)
from app.settings import Settings
from streams import snapshot
from streams.runtime import Hooks, RuntimeConfig
from streams.task import Committed
from streams.topology import Batch, Message, Stage, Topology

# Table names are part of the changelog topic names: renaming one loses its state.
TABLE_USER_STATE = "user-state"
TABLE_LEDGER = "program-ledger"
TABLE_LINK_STATE = "link-state"
# A shadow program's own state (app.shadow): empty unless the worker runs one.
TABLE_SHADOW_USER_STATE = "shadow-user-state"
TABLE_SHADOW_LEDGER = "shadow-program-ledger"
# Users erased lately, by a keyed hash of their id (app.erasure.ErasedMark).
TABLE_ERASED = "erased-users"
# When waiting offers of users who send nothing more are due, and each partition's event
# time (app.timers).
TABLE_OFFER_TIMERS = "offer-timers"
# Which field of app.pipeline.Tables each table fills.
TABLE_FIELDS = {
    TABLE_USER_STATE: "users",
    TABLE_LEDGER: "ledgers",
    TABLE_LINK_STATE: "links",
    TABLE_SHADOW_USER_STATE: "shadow_users",
    TABLE_SHADOW_LEDGER: "shadow_ledgers",
    TABLE_ERASED: "erased",
    TABLE_OFFER_TIMERS: "timers",
}
# The link stage's records gather for up to this long into one transaction: they are
# off the decision's path, and fewer transactions leave the broker more for decisions.
LINK_COMMIT_WITHIN_MS = 50


@dataclass(frozen=True)
class StageSpec:
    """One stage of the worker: the topic roles it reads and the tables it owns."""

    name: str
    reads: tuple[str, ...]
    tables: tuple[str, ...]


STAGES = (
    StageSpec(
        "decide",
        ("events", "fraud-labels", "consent", "members", "erasure-requests", "rekeyed"),
        (
            TABLE_USER_STATE,
            TABLE_LEDGER,
            TABLE_SHADOW_USER_STATE,
            TABLE_SHADOW_LEDGER,
            TABLE_ERASED,
            TABLE_OFFER_TIMERS,
        ),
    ),
    StageSpec("link", ("links",), (TABLE_LINK_STATE,)),
)
# Tables every worker keeps a whole copy of, read-only (see streams.views).
VIEWS = (TABLE_LINK_STATE,)


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog of ``table`` (the names Faust used, so older deployments keep their state)."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    """One topic this engine reads or writes."""

    role: str
    name: str
    partitions: int
    replication_factor: int
    description: str
    compacted: bool = False
    configs: dict[str, str] = field(default_factory=dict)


def erasure_configs(bound_ms: int, *, compacted: bool) -> dict[str, str]:
    """Topic configs under which Kafka removes a record within ``bound_ms`` of the moment
    it was deleted (a tombstone, an erasure) or, on a plain topic, written.

    Plain topic: a segment closes an eighth of the bound after its first record (at the
    next append) and is deleted once its newest record is half the bound old: a record
    is gone within five eighths of it, plus the broker's retention check (Kafka deletes
    an expired open segment too).
    Compacted topic: the worker appends to every changelog partition each sixteenth of
    the bound (RuntimeConfig.changelog_roll_s), so a segment closes within three
    sixteenths; the cleaner must compact a replaced record (or one a tombstone deleted)
    within an eighth more (``max.compaction.lag.ms``); the tombstone stays readable a
    quarter of the bound (``delete.retention.ms``, so a restoring reader sees the
    delete) and goes at the next cleaning, which the next segment makes due within five
    sixteenths: fourteen sixteenths in all, plus the cleaner's backoff.
    """
    eighth = str(bound_ms // 8)
    configs = {"segment.ms": eighth}
    if compacted:
        configs |= {
            "max.compaction.lag.ms": eighth,
            "delete.retention.ms": str(bound_ms // 4),
            "min.compaction.lag.ms": "0",
        }
    else:
        configs["retention.ms"] = str(bound_ms // 2)
    return configs


def snapshot_max_age_s(bound_s: int) -> float:
    """How old a local snapshot may be to be trusted and kept: under the changelogs'
    ``delete.retention.ms`` (a quarter of the erasure bound), or a deleted row could come
    back from it."""
    return min(snapshot.MAX_AGE_S, bound_s / 4)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    names = settings.topic_names()
    described = {
        "events": "user events in, keyed by user_id",
        "fraud-labels": "analysts' fraud_label events in, keyed by user_id (ACLs: analysts only)",
        "consent": "consent_updated events in, keyed by user_id (ACLs: the consent system only)",
        "members": "member_imported events in, keyed by user_id (ACLs: the member system only)",
        "erasure-requests": "erasure_requested events in, keyed by user_id (ACLs: the privacy "
        "system only)",
        "erasures": "one erasure receipt per request, keyed by the user's keyed hash",
        "decisions": "one decision per valid event",
        "fraud-alerts": "one alert per flagged event or pattern",
        "dead-letter": "invalid inputs with their reason and original bytes",
        "shadow-decisions": "a shadow program's decisions, one per event it decides; never "
        "acted on (empty without REWARDSTREAM_SHADOW_PROGRAM)",
    }
    described |= {
        "rekeyed": "internal: events stored on another partition than their user's, moved there",
        "links": "internal: decided events on their way to each device and network they name",
    }
    bound_ms = settings.erasure_bound_ms
    specs = [
        TopicSpec(
            role,
            names[role],
            settings.partitions,
            settings.replication_factor,
            text,
            configs=erasure_configs(bound_ms, compacted=False),
        )
        for role, text in described.items()
    ]
    # The receipts are the proof that erasures happened, and name nobody (a keyed hash):
    # kept until the operator removes them.
    next(spec for spec in specs if spec.role == "erasures").configs["retention.ms"] = "-1"
    # Each table's changelog: compacted, partitioned like the topic its stage reads.
    specs += [
        TopicSpec(
            f"changelog:{table}",
            changelog_topic(settings.app_id, table),
            settings.partitions,
            settings.replication_factor,
            f"internal: the {table} table, one record per key, restored at assignment",
            compacted=True,
            configs=erasure_configs(bound_ms, compacted=True),
        )
        for stage in STAGES
        for table in stage.tables
    ]
    # One record per program, the latest kept: a compacted topic with one partition.
    specs.append(
        TopicSpec(
            "model-checkpoints",
            names["model-checkpoints"],
            1,
            settings.replication_factor,
            "the latest learned model state per program",
            compacted=True,
            configs=erasure_configs(bound_ms, compacted=True),
        )
    )
    return specs


class RewardsHooks(Hooks):
    """What the reward pipeline learns from the runtime."""

    def __init__(self, pipeline: Pipeline, view_prune: Callable[[], None]) -> None:
        self.pipeline = pipeline
        self.view_prune = view_prune

    def committed(self, partition: int, done: Committed) -> None:
        if done.source_ms:
            self.pipeline.committed(done.source_ms, self.pipeline.clock.now_ms())

    def stale(self, table: str, value: bytes | None, now_ms: int) -> bool:
        return self.pipeline.stale(TABLE_FIELDS[table], value, now_ms)

    def housekeeping(self) -> None:
        self.view_prune()


def _position(message: Message) -> SourcePosition:
    return SourcePosition(
        message.topic, message.partition, message.offset, message.key, message.timestamp
    )


def build(settings: Settings, pipeline: Pipeline) -> tuple[Topology, RuntimeConfig, Hooks]:
    """The reward topology bound to ``pipeline``, with the runtime's settings."""
    # The worker's link view, made at the first batch (the runtime's view rows exist by
    # then) and kept: its overlay lives across batches.
    made: list[LinkView] = []

    def decide(batch: Batch) -> Sequence[Output]:
        if not made:
            made.append(pipeline.link_view(batch.views[TABLE_LINK_STATE]))
        view = made[0]
        tables = Tables(
            users=batch.tables[TABLE_USER_STATE],
            ledgers=batch.tables[TABLE_LEDGER],
            shadow_users=batch.tables[TABLE_SHADOW_USER_STATE],
            shadow_ledgers=batch.tables[TABLE_SHADOW_LEDGER],
            erased=batch.tables[TABLE_ERASED],
            timers=batch.tables[TABLE_OFFER_TIMERS],
        )
        role = batch.role
        outputs: list[Output] = []
        # What the batch teaches the models, and the metrics it moves, take effect once it
        # is committed.
        with pipeline.holding(batch.effects):
            for message in batch.messages:
                source = _position(message)
                if role == "rekeyed" and is_erase_order(message.headers):
                    pipeline.erase_notes(tables, message.value or b"", source)
                    continue
                if role == "rekeyed" and is_related_note(message.headers):
                    pipeline.related(tables, message.key or b"", message.value or b"", source)
                    continue
                if role == "rekeyed":
                    source = first_read_at(source, message.headers)
                value = message.value
                outputs += pipeline.decide(
                    tables,
                    batch.partition,
                    source,
                    value,
                    view,
                    role=role,
                )
        pipeline.flush(tables)
        return outputs

    def link(batch: Batch) -> Sequence[Output]:
        tables = Tables(users={}, ledgers={}, links=batch.tables[TABLE_LINK_STATE])
        with pipeline.holding(batch.effects):
            for message in batch.messages:
                key, value = message.key or b"", message.value or b""
                if is_erase_order(message.headers):
                    pipeline.erase_links(tables, value, _position(message))
                else:
                    pipeline.link(tables, key, value, _position(message))
        pipeline.flush(tables)
        return []

    topology = Topology(
        stages=(
            Stage("decide", STAGES[0].reads, STAGES[0].tables, decide, settings.commit_interval_ms),
            Stage(
                "link",
                STAGES[1].reads,
                STAGES[1].tables,
                link,
                max(LINK_COMMIT_WITHIN_MS, settings.commit_interval_ms),
            ),
        ),
        views=VIEWS,
        changelog_of=lambda table: changelog_topic(settings.app_id, table),
    )
    config = RuntimeConfig(
        group_id=settings.app_id,
        transactional=settings.processing_guarantee == "exactly_once",
        partitions=settings.partitions,
        batch_max_records=settings.batch_max_records,
        topic_of_role=settings.topic_names(),
        snapshot_dir=settings.data_dir / "snapshots" / settings.app_id,
        snapshot_interval_s=settings.snapshot_interval_s,
        snapshot_max_age_s=snapshot_max_age_s(settings.erasure_bound_s),
        # A quiet changelog partition still closes a segment within three sixteenths of
        # the erasure bound (erasure_configs), so compaction reaches its deletes too.
        changelog_roll_s=settings.erasure_bound_s / 16,
        sweep_pass_s=settings.sweep_pass_s,
        blocked_not_ready_s=settings.ready_blocked_s,
        one_producer=settings.transactional_producers == "worker",
        worker_id=settings.worker_id or "0",  # the worker names itself (streams.worker)
        paced=frozenset({"decide"}),
        pacing=frozenset({"link"}),
        output_roles=frozenset(
            {
                "decisions",
                "fraud-alerts",
                "dead-letter",
                "rekeyed",
                "links",
                "shadow-decisions",
                "erasures",
            }
        ),
    )

    def prune() -> None:
        for view in made:
            view.prune()

    return topology, config, RewardsHooks(pipeline, prune)
