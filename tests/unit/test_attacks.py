"""The attack generator: reproducible, valid, each attack showing its signature, normal
traffic showing none, and labels that agree with the ground truth built from them."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.contract import Event, decision_id_for, validate_event
from harness.simulation.attacks import (
    SCENARIOS,
    AttackConfig,
    LabelledEvent,
    attacker_accounts,
    generate,
    ground_truth,
    write_jsonl,
)
from harness.simulation.events import START_MS

Document = dict[str, Any]
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
CONFIG = AttackConfig(
    seed=11,
    start_ms=START_MS,
    duration_ms=36 * HOUR,
    normal_users=400,
    normal_events=12_000,
)
OUTCOMES = ("reward_opened", "reward_redeemed", "reward_dismissed")


@pytest.fixture(scope="module")
def events() -> list[LabelledEvent]:
    return generate(CONFIG)


def documents_of(events: Iterable[LabelledEvent], scenario: str | None) -> list[Document]:
    return [event.document for event in events if event.scenario == scenario]


def by_actor(events: Iterable[LabelledEvent], scenario: str) -> dict[str, list[Document]]:
    actors: dict[str, list[Document]] = defaultdict(list)
    for event in events:
        if event.scenario == scenario:
            actors[str(event.actor)].append(event.document)
    return actors


def own_decisions(documents: Iterable[Document]) -> dict[str, set[str]]:
    """user_id -> the decision id of every event that user sent."""
    decisions: dict[str, set[str]] = defaultdict(set)
    for document in documents:
        user_id = document["user_id"]
        decisions[user_id].add(decision_id_for(CONFIG.program, user_id, document["event_id"]))
    return decisions


# --- signatures: what each attack looks like, checked on attacks and on normal traffic ---


def crowded_devices(documents: Iterable[Document], *, accounts: int = 8) -> set[str]:
    """Devices used by at least ``accounts`` distinct users within some 24 hours."""
    seen: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for document in documents:
        if "device_id" in document:
            seen[document["device_id"]].append((document["ts"], document["user_id"]))
    crowded = set()
    for device, uses in seen.items():
        uses.sort()
        in_window: Counter[str] = Counter()
        first = 0
        for ts, user_id in uses:
            in_window[user_id] += 1
            while uses[first][0] < ts - DAY:
                in_window[uses[first][1]] -= 1
                first += 1
            if sum(1 for count in in_window.values() if count > 0) >= accounts:
                crowded.add(device)
    return crowded


def referral_graph(
    documents: Iterable[Document], *, self_loops: bool = True
) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for document in documents:
        if document["type"] == "referral":
            referrer, referred = document["user_id"], document["attributes"]["referred_user_id"]
            if self_loops or referrer != referred:
                graph[referrer].add(referred)
    return graph


def has_cycle(graph: dict[str, set[str]]) -> bool:
    done: set[str] = set()

    def reaches_itself(node: str, path: set[str]) -> bool:
        if node in path:
            return True
        if node in done:
            return False
        path.add(node)
        found = any(reaches_itself(nxt, path) for nxt in sorted(graph.get(node, ())))
        path.discard(node)
        done.add(node)
        return found

    return any(reaches_itself(node, set()) for node in sorted(graph))


def within(times: list[int], count: int, window_ms: int) -> bool:
    """Whether ``count`` of the sorted ``times`` fall within one ``window_ms``."""
    return any(times[i + count - 1] - times[i] <= window_ms for i in range(len(times) - count + 1))


def bursting_accounts(documents: Iterable[Document]) -> set[str]:
    """Users with >= 20 purchases under 5 EUR within 10 minutes."""
    tiny: dict[str, list[int]] = defaultdict(list)
    for document in documents:
        if document["type"] == "purchase" and document["amount"] < 5:
            tiny[document["user_id"]].append(document["ts"])
    return {user for user, times in tiny.items() if within(sorted(times), 20, 10 * MINUTE)}


def rapid_redeemers(documents: list[Document]) -> set[str]:
    """Users who redeem >= 8 of their own decisions within 10 minutes."""
    decisions = own_decisions(documents)
    redeemed: dict[str, list[int]] = defaultdict(list)
    for document in documents:
        user_id = document["user_id"]
        if document["type"] == "reward_redeemed" and document["decision_id"] in decisions[user_id]:
            redeemed[user_id].append(document["ts"])
    return {user for user, times in redeemed.items() if within(sorted(times), 8, 10 * MINUTE)}


# --- the tests --------------------------------------------------------------------------


def test_same_config_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    def written(config: AttackConfig, name: str) -> tuple[bytes, bytes]:
        events_path, labels_path = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-labels.jsonl"
        write_jsonl(generate(config), events_path, labels_path)
        return events_path.read_bytes(), labels_path.read_bytes()

    small = AttackConfig(
        seed=3, start_ms=CONFIG.start_ms, duration_ms=DAY, normal_users=100, normal_events=2_000
    )
    assert written(small, "a") == written(small, "b")
    other = dataclasses.replace(small, seed=4)
    assert written(small, "a")[0] != written(other, "c")[0]


def test_every_document_is_a_valid_event_in_the_window_in_ts_order(
    events: list[LabelledEvent],
) -> None:
    for event in events:
        assert isinstance(validate_event(event.document), Event), event
    times = [event.document["ts"] for event in events]
    assert times == sorted(times)
    assert CONFIG.start_ms <= times[0]
    assert times[-1] < CONFIG.start_ms + CONFIG.duration_ms


def test_every_scenario_has_its_instances_and_intensity_scales_them(
    events: list[LabelledEvent],
) -> None:
    for scenario in SCENARIOS:
        assert len(by_actor(events, scenario)) == CONFIG.instances(scenario) >= 3
    quiet = dataclasses.replace(CONFIG, normal_events=500, intensity=0.3)
    busy = dataclasses.replace(quiet, intensity=2.0)
    quiet_actors = {event.actor for event in generate(quiet) if event.scenario}
    busy_actors = {event.actor for event in generate(busy) if event.scenario}
    assert len(SCENARIOS) <= len(quiet_actors) < len(busy_actors)
    none = dataclasses.replace(quiet, intensity=0.0)
    assert all(event.scenario is None for event in generate(none))
    only_rings = dataclasses.replace(quiet, scenarios=("referral_ring",))
    assert {event.scenario for event in generate(only_rings)} == {None, "referral_ring"}


def test_a_short_window_squeezes_every_attack_in_with_its_signature() -> None:
    short = dataclasses.replace(CONFIG, duration_ms=2 * HOUR, normal_events=1_000)
    events = generate(short)
    times = [event.document["ts"] for event in events]
    assert short.start_ms <= min(times)
    assert max(times) < short.start_ms + short.duration_ms
    for actor, documents in by_actor(events, "referral_ring").items():
        assert has_cycle(referral_graph(documents, self_loops=False)), actor
    signatures = {"account_farm": crowded_devices, "bot_burst": bursting_accounts}
    for scenario, signature in signatures.items():
        for actor, documents in by_actor(events, scenario).items():
            assert signature(documents), actor


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="teleport"):
        dataclasses.replace(CONFIG, scenarios=("teleport",))


def test_account_farm_signs_up_many_accounts_on_one_device(events: list[LabelledEvent]) -> None:
    for actor, documents in by_actor(events, "account_farm").items():
        signups = [document for document in documents if document["type"] == "signup"]
        assert crowded_devices(signups), actor
        welcome = {decision_id_for(CONFIG.program, d["user_id"], d["event_id"]) for d in signups}
        redeemed = {d["decision_id"] for d in documents if d["type"] == "reward_redeemed"}
        assert len(redeemed & welcome) >= len(signups) // 2, actor


def test_redemption_velocity_redeems_own_decisions_within_minutes(
    events: list[LabelledEvent],
) -> None:
    for actor, documents in by_actor(events, "redemption_velocity").items():
        assert rapid_redeemers(documents), actor


def test_referral_ring_closes_a_cycle_and_some_refer_themselves(
    events: list[LabelledEvent],
) -> None:
    self_referrals = 0
    for actor, documents in by_actor(events, "referral_ring").items():
        accounts = {document["user_id"] for document in documents}
        assert 3 <= len(accounts) <= 8, actor
        assert has_cycle(referral_graph(documents, self_loops=False)), actor
        graph = referral_graph(documents)
        self_referrals += sum(1 for user, referred in graph.items() if user in referred)
    assert self_referrals > 0


def test_forged_redemptions_point_at_decisions_the_user_never_had(
    events: list[LabelledEvent],
) -> None:
    everyone = own_decisions(event.document for event in events)
    anybody = set().union(*everyone.values())
    forged = [d for d in documents_of(events, "forged_redemption") if d["type"] in OUTCOMES]
    assert forged
    for document in forged:
        assert re.fullmatch(r"d-[0-9a-f]{32}", document["decision_id"]), document
        assert document["decision_id"] not in everyone[document["user_id"]], document
    stolen = [d for d in forged if d["decision_id"] in anybody]
    assert 0 < len(stolen) < len(forged)  # both other users' ids and made-up ones


def test_replays_repeat_earlier_event_ids_exactly_or_with_a_bigger_amount(
    events: list[LabelledEvent],
) -> None:
    copies: dict[str, list[LabelledEvent]] = defaultdict(list)
    for event in events:
        copies[event.document["event_id"]].append(event)
    repeated = {event_id: group for event_id, group in copies.items() if len(group) > 1}
    assert repeated
    exact = bigger = 0
    for group in repeated.values():
        original, *replays = group
        assert original.scenario != "replayed_events"
        assert all(replay.scenario == "replayed_events" for replay in replays)
        for replay in replays:
            same = orjson.dumps(replay.document) == orjson.dumps(original.document)
            exact += same
            bigger += replay.document.get("amount", 0) > original.document.get("amount", 0)
    assert exact
    assert bigger
    # Replays are the only repeats: every other event id is unique.
    labelled_replays = sum(1 for event in events if event.scenario == "replayed_events")
    assert sum(len(group) - 1 for group in repeated.values()) == labelled_replays


def test_bot_burst_fires_dozens_of_tiny_purchases_within_minutes(
    events: list[LabelledEvent],
) -> None:
    for actor, documents in by_actor(events, "bot_burst").items():
        assert bursting_accounts(documents), actor


def test_normal_traffic_alone_shows_no_attack_signature(events: list[LabelledEvent]) -> None:
    normal = documents_of(events, None)
    assert len(normal) == CONFIG.normal_events
    assert not crowded_devices(normal)
    assert not has_cycle(referral_graph(normal))
    assert not bursting_accounts(normal)
    assert not rapid_redeemers(normal)
    assert len({document["event_id"] for document in normal}) == len(normal)


def test_normal_users_look_diverse_and_redeem_only_their_own_decisions(
    events: list[LabelledEvent],
) -> None:
    normal = documents_of(events, None)
    users = {document["user_id"] for document in normal}
    devices = Counter(document["device_id"] for document in normal)
    assert len(users) > CONFIG.normal_users // 2
    assert len(devices) >= len(users)
    accounts_per_device = Counter(
        device for device, _ in {(d["device_id"], d["user_id"]) for d in normal}
    )
    assert max(accounts_per_device.values()) <= 3  # a household's shared tablet at most
    assert len({document["ip"] for document in normal}) >= 0.9 * len(users)
    decisions = own_decisions(normal)
    outcomes = [document for document in normal if document["type"] in OUTCOMES]
    assert outcomes
    assert all(d["decision_id"] in decisions[d["user_id"]] for d in outcomes)


def test_attackers_use_the_same_id_formats_as_everyone_else(events: list[LabelledEvent]) -> None:
    formats = {
        "user_id": r"u-\d{7}",
        "event_id": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "device_id": r"dev-[0-9a-f]{12}",
        "ip": r"10\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    }
    for event in events:
        for name, pattern in formats.items():
            assert re.fullmatch(pattern, event.document[name]), (name, event)


def test_ground_truth_and_attacker_accounts_agree_with_the_labels(
    events: list[LabelledEvent],
) -> None:
    truth, accounts = ground_truth(events), attacker_accounts(events)
    assert set(truth) == set(accounts) == set(SCENARIOS)
    for scenario in SCENARIOS:
        documents = documents_of(events, scenario)
        assert truth[scenario] == {document["event_id"] for document in documents}
        assert accounts[scenario] == {document["user_id"] for document in documents}
    actors_scenarios = {(event.actor, event.scenario) for event in events if event.scenario}
    assert len({actor for actor, _ in actors_scenarios}) == len(actors_scenarios)
    assert all((event.actor is None) == (event.scenario is None) for event in events)
    # Only a replay reuses a normal event's id or a normal user's account.
    normal = documents_of(events, None)
    normal_ids = {document["event_id"] for document in normal}
    normal_users = {document["user_id"] for document in normal}
    for scenario in SCENARIOS:
        if scenario != "replayed_events":
            assert not truth[scenario] & normal_ids, scenario
            assert not accounts[scenario] & normal_users, scenario


def test_write_jsonl_writes_events_and_labels_line_for_line(
    events: list[LabelledEvent], tmp_path: Path
) -> None:
    events_path, labels_path = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    assert write_jsonl(events, events_path, labels_path) == len(events)
    lines = events_path.read_bytes().splitlines()
    labels = [orjson.loads(line) for line in labels_path.read_bytes().splitlines()]
    assert len(lines) == len(labels) == len(events)
    for line, label, event in zip(lines, labels, events, strict=True):
        assert line == orjson.dumps(event.document)
        assert label == {
            "event_id": event.document["event_id"],
            "scenario": event.scenario,
            "actor": event.actor,
        }
