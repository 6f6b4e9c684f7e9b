"""A real Prometheus scrapes a real worker: the figures users rely on, read back through
Prometheus's own HTTP API.

The worker decides a simulated stream on the session's broker; Prometheus (Debian's
``prometheus`` package: ``make prometheus-bin``) runs as a child process on a free
loopback port, scraping the worker's web port every second into a store under the
test's temporary directory. Without the binary the test skips on a developer's
machine and FAILS under ``CI=true``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafkaio import event_routes, produce, read
from app.programs.loader import BUILTIN_DIR
from app.settings import Settings
from harness import localkafka
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from tests.conftest import required_binary

pytestmark = pytest.mark.kafka

LOOPBACK = "127.0.0.1"
JOB = "rewardstream"
EVENTS = 300
MALFORMED = [b"{not json", b"[1, 2]", b'{"event_id": "x", "type": "signup", "ts": 1}']
TRIGGERS = {"signup", "purchase", "session_start", "survey", "referral"}  # retail-loyalty's
AUDIT = "\naudit:\n  group_by: country\n  groups: [DE, FR]\n"


class Prometheus:
    """Queries to a Prometheus server through its HTTP API."""

    def __init__(self, port: int) -> None:
        self.url = f"http://{LOOPBACK}:{port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, f"{promql}: HTTP {status}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of ``promql``, None when it has no series."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def by(self, label: str, promql: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def prometheus_binary() -> str:
    return required_binary("prometheus")


@pytest.fixture
def settings(kafka_settings: Settings, tmp_path: Path) -> Settings:
    """The shipped retail program under its own id, with a fairness audit by country."""
    program = tmp_path / "retail-loyalty.yaml"
    program.write_text((BUILTIN_DIR / "retail-loyalty.yaml").read_text() + AUDIT)
    return dataclasses.replace(kafka_settings, program=str(program), web_host=LOOPBACK)


@pytest.fixture
def prometheus(prometheus_binary: str, settings: Settings, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the worker's web port every second, stopped when the test ends."""
    port = localkafka.free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['{LOOPBACK}:{settings.web_port}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(port)
    try:
        wait_for(
            lambda: process.poll() is None and server.get("/-/ready")[0] == 200,
            f"Prometheus ready (log: {log_path})",
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def decisions_on_kafka(settings: Settings, expected: int) -> list[dict[str, Any]]:
    decisions: list[dict[str, Any]] = []
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, [settings.topic_decisions], idle_timeout_s=60.0)
    async with aclosing(records):
        async for record in records:
            decisions.append(record.document())
            if len(decisions) >= expected:
                break
    return decisions


async def test_prometheus_scrapes_what_the_worker_decided(
    settings: Settings,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    worker = start_worker(settings, tmp_path / "worker.log")
    worker.wait_ready(timeout_s=120)
    # Ten minutes of event time between events: two days in all, so new accounts' pending
    # periods end, rewards are granted and answered, and the models learn.
    config = SimulatorConfig(users=60, seed=5, events_per_second=1 / 600, program="retail-loyalty")
    simulator = EventSimulator(config)
    valid = [simulator.next_message() for _ in range(EVENTS)]
    events = [orjson.loads(value) for value in valid]
    await produce(
        settings.bootstrap_servers,
        settings.topic_events,
        valid + MALFORMED,
        routes=event_routes(settings),
    )
    decisions = await decisions_on_kafka(settings, expected=EVENTS)
    assert len(decisions) == EVENTS

    # Prometheus has scraped the worker after its last decision.
    total = f'sum(rewardstream_decisions_total{{job="{JOB}"}})'
    wait_for(lambda: prometheus.value(total) == EVENTS, "a scrape with every decision")
    assert prometheus.value(f'up{{job="{JOB}"}}') == 1

    statuses = Counter(d["status"] for d in decisions)
    by_status = prometheus.by("status", "sum by (status) (rewardstream_decisions_total)")
    assert by_status == {status: float(n) for status, n in statuses.items()}
    rewards = Counter(d["action"] or "" for d in decisions if d["status"] == "granted")
    granted = 'sum by (reward) (rewardstream_decisions_total{status="granted"})'
    assert prometheus.by("reward", granted) == {r: float(n) for r, n in rewards.items()}
    assert prometheus.value("sum(rewardstream_dead_letters_total)") == len(MALFORMED)

    # One latency observation per decision, measured from the events' Kafka timestamps.
    latency = prometheus.value("rewardstream_event_to_decision_seconds_count")
    assert latency == EVENTS
    assert (prometheus.value("rewardstream_event_to_decision_seconds_sum") or 0) > 0
    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) (rewardstream_event_to_decision_seconds_bucket))"
    )
    assert p99 is not None
    assert 0 < p99 <= 30

    # Lag per owned partition of the events topic: all handled, so none is behind.
    lag = f'rewardstream_consumer_lag_records{{topic="{settings.topic_events}"}}'
    wait_for(lambda: prometheus.value(f"sum({lag})") == 0, "no lag left on the events topic")
    partitions = set(prometheus.by("partition", lag))
    assert partitions == {str(p) for p in range(settings.partitions)}

    # The fairness audit: every decision on a trigger event, in a bounded set of groups.
    audit = prometheus.by("group", "sum by (group) (rewardstream_audit_decisions_total)")
    assert set(audit) <= {"DE", "FR", "other", "unknown"}
    assert sum(audit.values()) == sum(1 for e in events if e["type"] in TRIGGERS)

    # Every partition's share of the total budget, less what its grants cost.
    remaining = prometheus.by(
        "budget", 'sum by (budget) (rewardstream_budget_remaining{program="retail-loyalty"})'
    )
    assert set(remaining) == {"total", "1d", "7d"}
    spent = sum(d["cost"] for d in decisions if d["status"] == "granted")
    assert spent > 0
    assert remaining["total"] == pytest.approx(100_000 - spent)

    # The rolling ratios: exploration, redemptions per reward, the model's log loss.
    exploration = prometheus.value('rewardstream_exploration_ratio{program="retail-loyalty"}')
    assert exploration is not None
    assert 0 <= exploration <= 1
    redemption = prometheus.by("reward", "rewardstream_redemption_ratio")
    assert set(redemption) <= set(rewards)  # a ratio for the rewards granted
    assert any(ratio > 0 for ratio in redemption.values())
    assert (prometheus.value("sum(rewardstream_model_updates_total)") or 0) > 0
    log_loss = prometheus.value('rewardstream_model_log_loss{program="retail-loyalty"}')
    assert log_loss is not None
    assert log_loss > 0
    # No label carries a user, an event or a device.
    page = worker.get("/metrics")[1].decode()
    assert not any(e["user_id"] in page or e["event_id"] in page for e in events)
