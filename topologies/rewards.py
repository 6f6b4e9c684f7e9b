"""The reward engine's topics and tables.

    events ──▶ [intake] ──▶ dead-letter          (invalid input, with its reason)
                  │
                  ▼
                  ├──────────────────────────────╮ the event itself
                  ▼                              │
     <app>-links (keyed device:<id> or net:<network>, one copy per link the event names)
                  │                              │
              [link] ─ link-state table          │ (accounts, sign-ups, referrals per key)
                  │  link facts                  │
                  ▼                              ▼
     <app>-linked (keyed by user_id: each event, then the facts of its links)
                  │
              [decide] ──▶ decisions
                  │   ╰──▶ fraud-alerts
                  ├─ user-state table            (changelog: <app_id>-user-state-changelog)
                  ├─ program-ledger table        (budget and stock spent, one row per partition)
                  ╰─ decide-waiting table        (a user's events waiting for link facts)

    [checkpoint timer] ──▶ model-checkpoints     (compacted; read back at start-up)

Every stage commits its outputs, its table changes and its input offset in one
Kafka transaction per partition and batch (streams/runtime.py).

Each stage's table is partitioned like the topic it reads, so a worker owns
the whole state of the users, devices and networks on its partitions. Users
on different partitions who share a device meet in that device's state: that
is what the link stage is for (docs/decisions.md, entries 6 and 7).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings

# Table names are part of the changelog topic names: renaming one loses its state.
TABLE_USER_STATE = "user-state"
TABLE_LEDGER = "program-ledger"
TABLE_LINK_STATE = "link-state"
TABLE_WAITING = "decide-waiting"


@dataclass(frozen=True)
class StageSpec:
    """One stage of the worker: the topic role it reads and the tables it owns.

    A stage's tables are partitioned like its input topic: the state of input
    partition ``p`` is changelog partition ``p`` (streams/state.py).
    """

    name: str
    reads: str
    tables: tuple[str, ...]


STAGES = (
    StageSpec("intake", "events", ()),
    StageSpec("link", "links", (TABLE_LINK_STATE,)),
    StageSpec("decide", "linked", (TABLE_USER_STATE, TABLE_LEDGER, TABLE_WAITING)),
)


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


def topic_specs(settings: Settings) -> list[TopicSpec]:
    names = settings.topic_names()
    described = {
        "events": "user events in, keyed by user_id",
        "decisions": "one decision per valid event",
        "fraud-alerts": "one alert per flagged event or pattern",
        "dead-letter": "invalid inputs with their reason and original bytes",
    }
    described |= {
        "links": "internal: events on their way through each device and network they name",
        "linked": "internal: events with their link facts, keyed by user_id, to be decided",
    }
    specs = [
        TopicSpec(role, names[role], settings.partitions, settings.replication_factor, text)
        for role, text in described.items()
    ]
    # Each table's changelog: compacted, partitioned like the topic its stage reads.
    specs += [
        TopicSpec(
            f"changelog:{table}",
            changelog_topic(settings.app_id, table),
            settings.partitions,
            settings.replication_factor,
            f"internal: the {table} table, one record per key, restored at assignment",
            compacted=True,
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
        )
    )
    return specs
