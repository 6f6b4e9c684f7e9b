"""The stream graph: every topic and table, declared once, and how agents connect.

``topic_specs(settings)`` lists the topics this engine owns (used by
``rewardstream topics create``, the worker's start-up check and the deployment
tests); ``build(settings)`` binds them and the tables to one Faust app.
The roles (``events``, ``decisions``, ``fraud-alerts``, ``dead-letter``) and the
table names never change; the Kafka topic names come from settings.
"""

from topologies.rewards import (
    TABLE_LEDGER,
    TABLE_USER_STATE,
    TopicSpec,
    Topology,
    build,
    topic_specs,
)

__all__ = ["TABLE_LEDGER", "TABLE_USER_STATE", "TopicSpec", "Topology", "build", "topic_specs"]
