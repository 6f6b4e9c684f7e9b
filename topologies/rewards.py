"""The reward engine's topics and tables.

    events ──▶ [decide] ──▶ decisions
                  │  ╰────▶ fraud-alerts
                  │  ╰────▶ dead-letter     (invalid input, with its reason)
                  │
    [checkpoint timer] ───▶ model-checkpoints (compacted; read back at start-up)
                  ├─ user-state table       (changelog: <app_id>-user-state-changelog)
                  ╰─ program-ledger table   (budget and stock spent, one row per partition)

``events`` is keyed by ``user_id`` and the user-state table is partitioned the
same way, so each worker owns the whole state of the users on its partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from app.settings import Settings

# Table names are part of the changelog topic names: renaming one loses its state.
TABLE_USER_STATE = "user-state"
TABLE_LEDGER = "program-ledger"


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
    user_state: Any
    ledger: Any


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
        user_state=table(TABLE_USER_STATE),
        ledger=table(TABLE_LEDGER),
    )
