"""The stream graph: every topic, table and stage, declared once.

``topic_specs(settings)`` lists the topics this engine owns (used by
``rewardstream topics create``, the worker's start-up check and the deployment
tests); ``STAGES`` says which topics each stage of the worker reads and which
tables it owns; ``build`` binds the stages to the pipeline for the runtime.
The roles (``events``, ``decisions``, ``fraud-alerts``, ``dead-letter``) and
the table names never change; the Kafka topic names come from settings.
"""

from topologies.rewards import (
    STAGES,
    TABLE_LEDGER,
    TABLE_LINK_STATE,
    TABLE_USER_STATE,
    VIEWS,
    StageSpec,
    TopicSpec,
    build,
    changelog_topic,
    topic_specs,
)

__all__ = [
    "STAGES",
    "TABLE_LEDGER",
    "TABLE_LINK_STATE",
    "TABLE_USER_STATE",
    "VIEWS",
    "StageSpec",
    "TopicSpec",
    "build",
    "changelog_topic",
    "topic_specs",
]
