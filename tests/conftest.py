"""Shared fixtures: a real Apache Kafka broker for the session, settings per test.

The broker is started only when a test marked ``kafka`` asks for it. If it cannot
start, such tests skip on a developer machine and FAIL under ``CI=true``: a
skipped integration test must never count as a pass in CI.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess

# Settings a developer may set for the whole run; any other REWARDSTREAM_* is ignored here.
_KEPT = {"REWARDSTREAM_CACHE_DIR", "REWARDSTREAM_KAFKA_VERSION", "REWARDSTREAM_KAFKA_HEAP"}


def base_settings() -> Settings:
    """Defaults plus the machine's cache location, ignoring a developer's other overrides."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("REWARDSTREAM_") or k in _KEPT
    }
    return Settings.from_env(environ=environ)


def start_broker_or_fail(home: Path, **options: Any) -> localkafka.BrokerInfo:
    """A local broker in ``home``; if it cannot start, the test skips on a developer's
    machine and fails under ``CI=true`` (a skipped broker test never passes CI)."""
    settings = base_settings()
    try:
        return localkafka.start(
            home,
            cache_dir=settings.cache_dir,
            version=settings.kafka_version,
            port=0,
            heap=settings.kafka_heap,
            **options,
        )
    except localkafka.BrokerError as error:
        fail_or_skip(f"the Kafka broker could not start: {error}")
        raise


def fail_or_skip(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def required_binary(name: str) -> str:
    """The path of a tool `make prometheus-bin` installs (``prometheus``, ``promtool``);
    missing, the test fails under CI=true and skips elsewhere."""
    binary = shutil.which(name)
    if binary is None:
        fail_or_skip(f"{name} is missing: `make prometheus-bin` installs it")
        raise AssertionError("unreachable")  # fail_or_skip raises
    return binary


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.BrokerInfo]:
    home = tmp_path_factory.mktemp("kafka")
    info = start_broker_or_fail(home)
    yield info
    localkafka.stop(home, discard=True)  # its data goes with the temporary directory


@pytest.fixture
def test_settings(tmp_path: Path) -> Settings:
    """Settings whose topics, consumer group, state and port belong to this test alone."""
    suffix = uuid.uuid4().hex[:8]
    return dataclasses.replace(
        base_settings(),
        app_id=f"rewardstream-test-{suffix}",
        topic_events=f"events-{suffix}",
        topic_decisions=f"decisions-{suffix}",
        topic_fraud_alerts=f"fraud-alerts-{suffix}",
        topic_dead_letter=f"dead-letter-{suffix}",
        topic_fraud_labels=f"fraud-labels-{suffix}",
        topic_consent=f"consent-{suffix}",
        topic_members=f"members-{suffix}",
        topic_model_checkpoints=f"model-checkpoints-{suffix}",
        topic_erasure_requests=f"erasure-requests-{suffix}",
        topic_erasures=f"erasures-{suffix}",
        data_dir=tmp_path / "state",
        web_port=localkafka.free_port(),
    )


@pytest.fixture
def kafka_settings(kafka_broker: localkafka.BrokerInfo, test_settings: Settings) -> Settings:
    """Per-test settings pointed at the session's broker."""
    return dataclasses.replace(test_settings, bootstrap_servers=kafka_broker.bootstrap_servers)


@pytest.fixture
def start_worker() -> Iterator[Callable[[Settings, Path], WorkerProcess]]:
    """Start ``rewardstream worker`` processes; every one still running is stopped when
    the test ends, whether it passed or failed."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, log_path: Path) -> WorkerProcess:
        process = WorkerProcess(settings, log_path).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
