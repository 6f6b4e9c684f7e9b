"""The reward engine's topics and tables.

    events ──▶ [intake] ──▶ dead-letter          (invalid input, with its reason)
                  │
                  ▼
     <app>-links (keyed device:<id>, then net:<network>)
                  │ ◀──╮
              [link] ──╯  one hop per device and network the event names
                  │       ╰─ link-state table    (accounts, sign-ups, referrals per key)
                  ▼
     <app>-linked (keyed by user_id)
                  │
              [decide] ──▶ decisions
                  │   ╰──▶ fraud-alerts
                  ├─ user-state table            (changelog: <app_id>-user-state-changelog)
                  ╰─ program-ledger table        (budget and stock spent, one row per partition)

    [checkpoint timer] ──▶ model-checkpoints     (compacted; read back at start-up)

Each stage's table is partitioned like the topic it reads, so a worker owns
the whole state of the users, devices and networks on its partitions. Users
on different partitions who share a device meet in that device's state: that
is what the link stage is for (docs/decisions.md, entries 6 and 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from app.settings import Settings

# Table names are part of the changelog topic names: renaming one loses its state.
TABLE_USER_STATE = "user-state"
TABLE_LEDGER = "program-ledger"
TABLE_LINK_STATE = "link-state"


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


@dataclass(frozen=True)
class Topology:
    """The Faust app with its topics and tables bound; agents read from here."""

    app: faust.App
    events: Any
    decisions: Any
    fraud_alerts: Any
    dead_letter: Any
    model_checkpoints: Any
    links: Any
    linked: Any
    user_state: Any
    ledger: Any
    link_state: Any


def build(settings: Settings, **faust_options: Any) -> Topology:
    """A Faust app for ``settings`` with every topic and table declared on it."""
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        datadir=str(settings.data_dir / "worker"),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_host=settings.web_host,
        web_port=settings.web_port,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=settings.processing_guarantee,
        **faust_options,
    )
    names = settings.topic_names()

    def topic(role: str) -> Any:
        return app.topic(
            names[role], key_type=bytes, value_type=bytes, partitions=settings.partitions
        )

    def table(name: str) -> Any:
        return app.Table(
            name, default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes
        )

    return Topology(
        app=app,
        events=topic("events"),
        decisions=topic("decisions"),
        fraud_alerts=topic("fraud-alerts"),
        dead_letter=topic("dead-letter"),
        model_checkpoints=app.topic(
            names["model-checkpoints"], key_type=bytes, value_type=bytes, partitions=1
        ),
        links=topic("links"),
        linked=topic("linked"),
        user_state=table(TABLE_USER_STATE),
        ledger=table(TABLE_LEDGER),
        link_state=table(TABLE_LINK_STATE),
    )
