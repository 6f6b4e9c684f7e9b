"""The console's web side without Kafka: the records a reader hands it, the JSON the page
reads, the labels its buttons send, and who may do either."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from app.console.service import Console, ConsoleError, check_exposure
from app.console.web import ConsoleServer
from app.contract import Event, validate_event
from app.decisioning.ledger import Ledger, ledger_key
from app.erasure import receipt_subject
from app.kafkaio import Received
from app.settings import Settings

T0 = 1_780_000_000_000
HELD = f"d-{7:032x}"


def held_decision() -> dict[str, Any]:
    return {
        "kind": "decision",
        "decision_id": HELD,
        "event_id": "ev-7",
        "user_id": "u-1",
        "ts": T0,
        "action": "cashback",
        "channel": "web",
        "value": 3.0,
        "cost": 3.0,
        "propensity": 1.0,
        "risk": 0.7,
        "status": "held",
        "hold": "risk",
        "reasons": ["policy.exploit", "fraud.risk:0.70", "fraud.device.signups", "fraud.held"],
        "explanation": "Held cashback for review.",
        "model_version": "retail-loyalty@00000000/lr+0",
        "program": "retail-loyalty",
    }


def record(topic: str, value: bytes | None, key: bytes = b"u-1") -> Received:
    return Received(topic, 0, 0, key, value or b"", T0)


class Sent:
    def __init__(self) -> None:
        self.labels: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, user_id: str, value: bytes) -> None:
        self.labels.append((user_id, orjson.loads(value)))


@pytest.fixture
def console() -> Console:
    settings = Settings(console_port=0)
    console = Console(settings)
    console.send = Sent()
    console.take([record(settings.topic_decisions, orjson.dumps(held_decision()))])
    return console


def serve(console: Console, token: str = "") -> Iterator[ConsoleServer]:
    server = ConsoleServer("127.0.0.1", 0, console, token=token).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(console: Console) -> Iterator[ConsoleServer]:
    yield from serve(console)


@pytest.fixture
def guarded(console: Console) -> Iterator[ConsoleServer]:
    yield from serve(console, token="s3cret")


def call(
    server: ConsoleServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    sent = {"Content-Type": "application/json", "X-Console-Request": "1"} if body else {}
    connection.request(
        method, path, None if body is None else orjson.dumps(body), {**sent, **(headers or {})}
    )
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    return response.status, (orjson.loads(raw) if raw and raw[:1] == b"{" else {})


def release(server: ConsoleServer, **headers: str) -> tuple[int, dict[str, Any]]:
    body = {"user_id": "u-1", "action": "release"}
    return call(server, "POST", f"/api/holds/{HELD}/label", body, headers)


def test_the_pages_json_says_what_the_records_say(server: ConsoleServer) -> None:
    status, user = call(server, "GET", "/api/users/u-1")
    assert status == 200
    assert user["decisions"][0]["explanation"] == "Held cashback for review."
    assert user["hold"] == HELD
    status, queue = call(server, "GET", "/api/queue")
    assert [h["decision_id"] for h in queue["holds"]] == [HELD]
    assert queue["holds"][0]["factors"] == ["device.signups"]
    assert call(server, "GET", "/api/users/nobody")[0] == 404
    assert call(server, "GET", "/api/queue?kind=everything")[0] == 400


def test_the_page_and_its_script_are_served(server: ConsoleServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for path, kind in (("/", "text/html"), ("/static/console.js", "text/javascript")):
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        assert response.read()
        assert response.getheader("Content-Type", "").startswith(kind)
        assert "default-src 'self'" in response.getheader("Content-Security-Policy", "")
    connection.close()


def test_a_release_sends_one_valid_fraud_label_and_a_second_click_sends_nothing(
    console: Console, server: ConsoleServer
) -> None:
    status, answer = release(server)
    assert status == 202
    assert release(server)[0] == 409
    sent = console.send
    assert isinstance(sent, Sent)
    [(key, label)] = sent.labels
    assert key == "u-1"
    assert answer["event_id"] == label["event_id"]
    assert isinstance(validate_event(label), Event)
    assert label["type"] == "fraud_label"
    assert label["attributes"]["label"] == "cleared"
    assert label["attributes"]["held_decision_id"] == HELD
    assert call(server, "GET", "/api/queue")[1]["holds"][0]["label_sent"] == "cleared"


def test_a_label_for_a_hold_that_is_not_open_is_refused(server: ConsoleServer) -> None:
    body = {"user_id": "u-1", "action": "confirm"}
    assert call(server, "POST", f"/api/holds/d-{8:032x}/label", body)[0] == 409
    assert call(server, "POST", f"/api/holds/{HELD}/label", {"user_id": "u-1"})[0] == 400


def test_a_post_without_the_consoles_header_is_refused(console: Console) -> None:
    # What a form on another site could send to a console on this machine.
    server = ConsoleServer("127.0.0.1", 0, console).start()
    try:
        body = {"user_id": "u-1", "action": "release"}
        headers = {"Content-Type": "application/json", "X-Console-Request": "0"}
        assert call(server, "POST", f"/api/holds/{HELD}/label", body, headers)[0] == 403
    finally:
        server.stop()
    sent = console.send
    assert isinstance(sent, Sent)
    assert sent.labels == []


def test_a_loopback_console_answers_only_to_loopback_host_names(server: ConsoleServer) -> None:
    # A name rebound to 127.0.0.1 by another site's DNS.
    assert call(server, "GET", "/api/queue", headers={"Host": "evil.example:80"})[0] == 421
    assert call(server, "GET", "/api/queue", headers={"Host": "localhost"})[0] == 200


def test_with_a_token_every_page_needs_it(console: Console, guarded: ConsoleServer) -> None:
    assert call(guarded, "GET", "/")[0] == 401
    assert call(guarded, "GET", "/api/users/u-1")[0] == 401
    wrong = "Basic " + base64.b64encode(b"ana:wrong").decode()
    assert call(guarded, "GET", "/api/queue", headers={"Authorization": wrong})[0] == 401
    bearer = {"Authorization": "Bearer s3cret"}
    assert call(guarded, "GET", "/api/users/u-1", headers=bearer)[0] == 200
    basic = "Basic " + base64.b64encode(b"ana:s3cret").decode()
    assert release(guarded, Authorization=basic)[0] == 202
    sent = console.send
    assert isinstance(sent, Sent)
    assert sent.labels[0][1]["attributes"]["analyst"] == "ana"  # who released it


def test_beyond_loopback_the_console_will_not_start_without_a_token() -> None:
    with pytest.raises(ConsoleError, match="REWARDSTREAM_CONSOLE_TOKEN"):
        check_exposure(Settings(console_host="0.0.0.0"))
    with pytest.raises(ConsoleError):
        check_exposure(Settings(console_host="console.internal"))
    check_exposure(Settings(console_host="0.0.0.0", console_token="s3cret"))
    check_exposure(Settings(console_host="::1"))


def test_records_are_routed_by_topic_and_an_erasure_empties_the_user(console: Console) -> None:
    settings = console.settings
    ledger = Ledger(spent_total=25.0)
    changelog = console.topics.ledger
    console.take(
        [
            record(changelog, ledger.to_bytes(), key=ledger_key("retail-loyalty", 0)),
            record(settings.topic_decisions, b""),  # no value: nothing to show, no failure
            record(settings.topic_fraud_alerts, b"not json"),  # skipped, logged
        ]
    )
    budgets = {b["budget"]: b["left"] for b in console.program()["budgets"]["left"]}
    assert budgets["total"] == 100_000 - 25.0
    receipt = {"kind": "erasure_receipt", "subject": receipt_subject("u-1", settings.app_id)}
    console.take([record(settings.topic_erasures, orjson.dumps(receipt))])
    assert console.user("u-1") is None
    assert console.queue(("risk", "pending"))["holds"] == []
