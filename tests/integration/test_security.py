"""SASL/SCRAM and TLS on the real broker, and no personal data in logs or metric labels.

The broker gets two more listeners: SASL_PLAINTEXT with SCRAM-SHA-256 and one user,
and SSL with a self-signed certificate. The worker and the CLI connect through them
with the settings; a wrong password or an untrusted certificate fails fast with a
message that says so, and the password is never printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from app.kafkaio import client_options, event_routes, produce, read
from app.settings import Settings
from harness import localkafka
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from tests.conftest import start_broker_or_fail
from tests.integration.conftest import topics_create

pytestmark = pytest.mark.kafka
USER, PASSWORD = "rewardstream-worker", "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.BrokerInfo]:
    home = tmp_path_factory.mktemp("scram-kafka")
    info = start_broker_or_fail(home, scram_users={USER: PASSWORD}, tls=True)
    yield info
    localkafka.stop(home, discard=True)


def scram_settings(test_settings: Settings, info: localkafka.BrokerInfo, password: str) -> Settings:
    assert info.sasl_bootstrap_servers is not None
    return dataclasses.replace(
        test_settings,
        bootstrap_servers=info.sasl_bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=USER,
        sasl_password=password,
    )


async def test_the_worker_and_the_cli_work_over_scram_and_log_no_personal_data(
    scram_broker: localkafka.BrokerInfo, test_settings: Settings, tmp_path: Path
) -> None:
    settings = scram_settings(test_settings, scram_broker, PASSWORD)
    simulator = EventSimulator(SimulatorConfig(users=40, seed=5, program=settings.program))
    lines = [simulator.next_message() for _ in range(120)]
    lines = [line for line in lines if not orjson.loads(line)["type"].startswith("reward_")]
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        client = client_options(settings)
        await produce(
            settings.bootstrap_servers,
            settings.topic_events,
            lines,
            client=client,
            routes=event_routes(settings),
        )
        decided = set()
        async for record in read(
            settings.bootstrap_servers,
            [settings.topic_decisions],
            idle_timeout_s=20.0,
            max_records=len(lines),
            client=client,
        ):
            decided.add(orjson.loads(record.value)["event_id"])
        metrics = worker.get("/metrics")[1].decode()
    finally:
        worker.stop()
    assert decided == {orjson.loads(line)["event_id"] for line in lines}

    # Personal data: no user id, device id or address in the log (INFO and above) or in
    # any metric label. The password is never printed either.
    documents = [orjson.loads(line) for line in lines]
    personal = {
        d[field] for d in documents for field in ("user_id", "device_id", "ip") if d.get(field)
    }
    assert len(personal) > 40
    text = log.read_text()
    assert "INFO" in text  # the scan read a real INFO log
    assert not {p for p in personal if p in text}
    labels = "\n".join(line for line in metrics.splitlines() if "{" in line)
    assert not {p for p in personal if p in labels}
    assert PASSWORD not in text


def test_a_wrong_password_fails_fast_and_says_why(
    scram_broker: localkafka.BrokerInfo, test_settings: Settings
) -> None:
    settings = scram_settings(test_settings, scram_broker, "not-the-password")
    returncode, output = topics_create(settings)
    assert returncode != 0
    assert "authentication" in output.lower(), output[-2000:]
    assert "not-the-password" not in output


def tls_settings(test_settings: Settings, info: localkafka.BrokerInfo, cafile: str) -> Settings:
    assert info.ssl_bootstrap_servers is not None
    return dataclasses.replace(
        test_settings,
        bootstrap_servers=info.ssl_bootstrap_servers,
        security_protocol="SSL",
        ssl_cafile=cafile,
    )


async def test_the_worker_decides_over_tls_trusting_the_configured_ca(
    scram_broker: localkafka.BrokerInfo, test_settings: Settings, tmp_path: Path
) -> None:
    assert scram_broker.ca_file is not None
    settings = tls_settings(test_settings, scram_broker, scram_broker.ca_file)
    lines = [
        orjson.dumps(
            {"event_id": f"t-{n}", "user_id": f"u-{n}", "type": "signup", "ts": 1772366400000}
        )
        for n in range(10)
    ]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        client = client_options(settings)
        await produce(
            settings.bootstrap_servers,
            settings.topic_events,
            lines,
            client=client,
            routes=event_routes(settings),
        )
        decided = {
            orjson.loads(record.value)["event_id"]
            async for record in read(
                settings.bootstrap_servers,
                [settings.topic_decisions],
                idle_timeout_s=20.0,
                max_records=len(lines),
                client=client,
            )
        }
    finally:
        worker.stop()
    assert decided == {f"t-{n}" for n in range(10)}


def test_an_untrusted_certificate_fails_fast_and_says_why(
    scram_broker: localkafka.BrokerInfo, test_settings: Settings, tmp_path: Path
) -> None:
    # A CA file that is not the broker's: the handshake must fail, not hang.
    other = tmp_path / "other-ca.pem"
    other.write_text(Path(__file__).with_name("other-ca.pem").read_text())
    settings = tls_settings(test_settings, scram_broker, str(other))
    returncode, output = topics_create(settings)
    assert returncode != 0
    assert "certificate verify failed" in output.lower(), output[-2000:]
