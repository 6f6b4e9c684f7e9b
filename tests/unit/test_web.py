"""The worker's web port: /ready says 200 only once the worker has its partitions and
their state is restored; /health answers whenever the process does."""

from __future__ import annotations

import inspect
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from app.decisioning import Engine
from app.metrics import Metrics
from app.pipeline import Pipeline
from app.programs import load_builtin
from app.settings import Settings
from streams.runtime import StageRunner
from streams.web import WebServer
from topologies import STAGES


def status(server: WebServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as page:
            return int(page.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def runner() -> StageRunner:
    metrics = Metrics(CollectorRegistry())
    pipeline = Pipeline(Engine(load_builtin("retail-loyalty")), metrics, max_event_bytes=4096)
    return StageRunner(Settings(), pipeline, STAGES)


@pytest.fixture
def web(runner: StageRunner) -> Iterator[WebServer]:
    registry = runner.pipeline.metrics.registry
    server = WebServer("127.0.0.1", 0, registry, lambda: runner.ready).start()
    try:
        yield server
    finally:
        server.stop()


async def test_ready_only_with_partitions_assigned_and_state_restored(
    runner: StageRunner, web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (status(web, "/health"), status(web, "/ready")) == (200, 503)
    seen_while_restoring: list[int] = []

    async def restore(tps: set[TopicPartition]) -> None:
        # The state is being restored: not ready yet.
        seen_while_restoring.append(status(web, "/ready"))
        runner.owned |= tps

    monkeypatch.setattr(runner, "_take", restore)
    await runner.on_assigned({TopicPartition(runner.topic_of_role["events"], 0)})
    assert seen_while_restoring == [503]
    assert status(web, "/ready") == 200
    revoked = runner.on_revoked()  # a rebalance begins
    if inspect.isawaitable(revoked):  # it waits for the transactions in flight
        await revoked
    assert (status(web, "/health"), status(web, "/ready")) == (200, 503)


def test_metrics_page_serves_the_registry(runner: StageRunner, web: WebServer) -> None:
    runner.pipeline.metrics.intake_paused.set(1)
    url = f"http://127.0.0.1:{web.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        body = page.read().decode()
    assert "rewardstream_intake_paused 1.0" in body
    assert status(web, "/nowhere") == 404
