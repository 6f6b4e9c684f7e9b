"""The worker's web port: /ready says 200 only once the worker has its partitions and
their state is restored (what Runtime.healthy says, as the worker serves it); /health
answers whenever the process does."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from streams import runtime as runtime_module
from streams.runtime import Runtime, RuntimeConfig
from streams.topology import Stage, Topology
from streams.web import WebServer
from tests.unit.fakekafka import FakeBroker, FakeClients


def status(server: WebServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as page:
            return int(page.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def ready_body(server: WebServer) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ready", timeout=5) as page:
            return dict(orjson.loads(page.read()))
    except urllib.error.HTTPError as error:
        return dict(orjson.loads(error.read()))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def clients() -> FakeClients:
    broker = FakeBroker()
    for topic in ("in", "t-changelog"):
        broker.create_topic(topic, 1)
    return FakeClients(broker)


@pytest.fixture
def runner(metrics: Metrics, clients: FakeClients) -> Runtime:
    topology = Topology(stages=(Stage("s", ("in",), ("t",), lambda batch: []),))
    config = RuntimeConfig(
        group_id="g",
        transactional=True,
        partitions=1,
        batch_max_records=10,
        topic_of_role={"in": "in"},
        snapshot_dir=None,
        snapshot_interval_s=0,
    )
    return Runtime(config, topology, clients, metrics)


@pytest.fixture
def web(runner: Runtime, metrics: Metrics) -> Iterator[WebServer]:
    server = WebServer("127.0.0.1", 0, metrics.registry, runner.problems).start()
    try:
        yield server
    finally:
        server.stop()


async def test_ready_only_with_partitions_assigned_and_state_restored(
    runner: Runtime, clients: FakeClients, web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await runner.start()
    try:
        assert (status(web, "/health"), status(web, "/ready")) == (200, 503)
        # A 503 says why, for the probe's log and the operator.
        assert ready_body(web) == {
            "status": "not ready",
            "problems": ["not assigned, restoring or rebalancing"],
        }
        seen_while_restoring: list[int] = []
        restore = runtime_module.restore

        async def restoring(*args: object, **kwargs: object) -> object:
            # The state is being restored: not ready yet.
            seen_while_restoring.append(status(web, "/ready"))
            return await restore(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(runtime_module, "restore", restoring)
        assert clients.consumer is not None
        await clients.consumer.rebalance({TopicPartition("in", 0)})  # the group assigns
        assert seen_while_restoring == [503]
        assert status(web, "/ready") == 200
        assert ready_body(web) == {"status": "ready"}
        await runner.on_revoked()  # a rebalance begins
        assert (status(web, "/health"), status(web, "/ready")) == (200, 503)
    finally:
        await runner.stop()


def test_metrics_page_serves_the_registry(metrics: Metrics, web: WebServer) -> None:
    metrics.intake_paused.set(1)
    url = f"http://127.0.0.1:{web.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        body = page.read().decode()
    assert "rewardstream_intake_paused 1.0" in body
    assert status(web, "/nowhere") == 404
