"""Kafka ACLs on the real broker: only the allowed principals write each input.

The broker enforces ACLs (the KRaft authorizer; what no ACL allows is refused) on a
SASL/SCRAM listener with one user per party: the admin (a super user), the worker, a
shop (a producer of events), an analyst (of fraud labels) and the consent service.
`rewardstream topics create --acls`, run as the admin, grants what the settings say.
Then each party writes what it may and is refused what it may not, and a worker running
as its own principal decides the shop's events and applies the analyst's verdict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from app.kafkaio import client_options, event_routes, produce, read
from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess
from tests.conftest import start_broker_or_fail
from tests.integration.conftest import topics_create

pytestmark = pytest.mark.kafka

ADMIN, WORKER, SHOP, ANALYST, CONSENT = "admin", "worker", "shop", "analyst", "consent-service"
PASSWORDS = {name: f"{name}-password" for name in (ADMIN, WORKER, SHOP, ANALYST, CONSENT)}
Document = dict[str, Any]


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.BrokerInfo]:
    home = tmp_path_factory.mktemp("acl-kafka")
    info = start_broker_or_fail(home, scram_users=PASSWORDS, acl_super_users=[f"User:{ADMIN}"])
    yield info
    localkafka.stop(home, discard=True)


@pytest.fixture
def admin_settings(test_settings: Settings, acl_broker: localkafka.BrokerInfo) -> Settings:
    """This test's settings as the admin, with the principals allowed to write each input."""
    assert acl_broker.sasl_bootstrap_servers is not None
    return dataclasses.replace(
        test_settings,
        bootstrap_servers=acl_broker.sasl_bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=ADMIN,
        sasl_password=PASSWORDS[ADMIN],
        acl_event_producers=f"User:{SHOP}",
        acl_label_producers=f"User:{ANALYST}",
        acl_consent_producers=f"User:{CONSENT}",
        acl_worker_principal=f"User:{WORKER}",
    )


def as_user(settings: Settings, name: str) -> Settings:
    return dataclasses.replace(settings, sasl_username=name, sasl_password=PASSWORDS[name])


async def send(settings: Settings, documents: list[Document], topic: str | None = None) -> int:
    """Produce ``documents`` as ``settings``' user: to ``topic``, else each to its type's."""
    return await produce(
        settings.bootstrap_servers,
        topic or settings.topic_events,
        [orjson.dumps(d) for d in documents],
        client=client_options(settings),
        routes=None if topic else event_routes(settings),
    )


async def read_until(
    settings: Settings, topic: str, enough: Callable[[list[Document]], bool]
) -> list[Document]:
    """Records of ``topic`` until ``enough`` of them arrived (or none for 60 s)."""
    found: list[Document] = []
    # read() is an async generator: closed here, its consumer stops when we have enough.
    records = read(
        settings.bootstrap_servers,
        [topic],
        idle_timeout_s=60.0,
        client=client_options(settings),
    )
    async with aclosing(records):
        async for record in records:
            found.append(orjson.loads(record.value))
            if enough(found):
                break
    return found


def event(event_id: str, user: str, kind: str, ts: int, **fields: Any) -> Document:
    return {"event_id": event_id, "user_id": user, "type": kind, "ts": ts, **fields}


async def test_each_principal_writes_only_its_own_inputs_and_the_worker_applies_a_label(
    admin_settings: Settings, tmp_path: Path
) -> None:
    returncode, output = topics_create(admin_settings, "--acls")
    assert returncode == 0, output
    for line in (
        f"ALLOW User:{SHOP}",
        f"WRITE  topic {admin_settings.topic_events}",
        f"WRITE  topic {admin_settings.topic_fraud_labels}",
        f"WRITE  topic {admin_settings.topic_consent}",
        f"WRITE  transactional id {admin_settings.app_id}-task-*",
        f"WRITE  transactional id {admin_settings.app_id}-worker-*",
        f"READ   group {admin_settings.app_id}",
    ):
        assert line in output, output
    shop, analyst, consent = (as_user(admin_settings, n) for n in (SHOP, ANALYST, CONSENT))
    now = int(time.time() * 1000)
    label = event(
        "case-1", "u-fraud", "fraud_label", now - 20_000, attributes={"label": "confirmed"}
    )
    consent_change = event(
        "consent-1", "u-ok", "consent_updated", now - 20_000, attributes={"marketing": False}
    )

    # Refused: a shop's verdict or consent (on their topics), a shop forging a decision,
    # an analyst writing events. The broker says no before any record is stored.
    forged = event("forged-1", "u-ok", "signup", now)
    refused = [
        (shop, label, None),
        (shop, consent_change, None),
        (shop, forged, admin_settings.topic_decisions),
        (analyst, event("a-1", "u-ok", "signup", now), None),
    ]
    for who, document, topic in refused:
        with pytest.raises(TopicAuthorizationFailedError):
            await send(who, [document], topic)

    # Allowed: the shop's events (a fraud_label among them, which Kafka lets onto `events`
    # and the worker dead-letters), the analyst's label, the consent service's change.
    purchase = {"amount": 80.0, "currency": "EUR", "channel": "web"}
    shop_events = [
        event("s-1", "u-ok", "signup", now - 60_000),
        event("s-2", "u-fraud", "signup", now - 60_000),
        event("s-3", "u-ok", "purchase", now - 50_000, **purchase),
    ]
    assert await send(shop, shop_events) == 3
    smuggled = event(
        "case-2", "u-fraud", "fraud_label", now - 40_000, attributes={"label": "cleared"}
    )
    assert await send(shop, [smuggled], shop.topic_events) == 1
    assert await send(analyst, [label]) == 1
    assert await send(consent, [consent_change]) == 1

    worker = WorkerProcess(as_user(admin_settings, WORKER), tmp_path / "worker.log").start()
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        expected = {d["event_id"] for d in [*shop_events, label, consent_change]}
        decisions = await read_until(
            admin_settings,
            admin_settings.topic_decisions,
            lambda found: expected <= {d["event_id"] for d in found},
        )
        by_event = {d["event_id"]: d for d in decisions}
        assert expected <= set(by_event), worker.log_tail()
        assert "fraud.label:confirmed" in by_event["case-1"]["reasons"]
        dead = await read_until(admin_settings, admin_settings.topic_dead_letter, bool)
        assert [(d["event_id"], d["reason"]) for d in dead] == [("case-2", "unauthorized")]

        # The analyst's verdict holds: the shop's next purchase for that user pays nothing.
        await send(shop, [event("s-4", "u-fraud", "purchase", now - 10_000, **purchase)])
        later = await read_until(
            admin_settings,
            admin_settings.topic_decisions,
            lambda found: any(d["event_id"] == "s-4" for d in found),
        )
        [after] = [d for d in later if d["event_id"] == "s-4"]
    finally:
        worker.stop()
    assert after["risk"] == 1.0, after
    assert after["status"] in ("blocked", "none"), after

    # The worker may create its topics (they all exist now), but not grant ACLs.
    returncode, output = topics_create(as_user(admin_settings, WORKER), "--acls")
    assert returncode != 0
    assert f"User:{WORKER} may not create ACLs" in output, output[-2000:]


def test_without_an_authorizer_acls_fail_and_say_why(kafka_settings: Settings) -> None:
    settings = dataclasses.replace(kafka_settings, acl_worker_principal=f"User:{WORKER}")
    returncode, output = topics_create(settings, "--acls")
    assert returncode != 0
    assert "the broker has no authorizer" in output, output[-2000:]
    assert "Traceback" not in output


def test_acls_without_the_worker_principal_fail_before_anything_changes(
    admin_settings: Settings,
) -> None:
    settings = dataclasses.replace(admin_settings, acl_worker_principal="")
    returncode, output = topics_create(settings, "--acls")
    assert returncode != 0
    assert "REWARDSTREAM_ACL_WORKER_PRINCIPAL" in output, output[-2000:]
    assert admin_settings.topic_events not in output  # no topic was created
