"""A real Apache Kafka broker for development, tests and the demo, started by the project.

``ensure_jars`` fetches the broker from Maven Central once per version;
``start``/``status``/``stop`` manage one KRaft broker+controller per home
directory, on 127.0.0.1 only. Production clusters are the operator's; this is
never used by the worker itself.
"""

from harness.localkafka.broker import (
    BrokerError,
    BrokerInfo,
    answers,
    ensure_jars,
    free_port,
    start,
    start_cluster,
    status,
    stop,
)

__all__ = [
    "BrokerError",
    "BrokerInfo",
    "answers",
    "ensure_jars",
    "free_port",
    "start",
    "start_cluster",
    "status",
    "stop",
]
