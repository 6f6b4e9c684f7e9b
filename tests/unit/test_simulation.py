"""The simulator: reproducible from a seed, realistic enough, and malformed where asked."""

from __future__ import annotations

from collections import Counter

from app.contract import Event, Rejection, parse_event
from harness.simulation import EventSimulator, SimulatorConfig


def take(config: SimulatorConfig, n: int) -> list[bytes]:
    simulator = EventSimulator(config)
    return [simulator.next_message() for _ in range(n)]


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    assert take(SimulatorConfig(seed=3), 300) == take(SimulatorConfig(seed=3), 300)
    assert take(SimulatorConfig(seed=3), 300) != take(SimulatorConfig(seed=4), 300)


def test_valid_stream_is_all_valid_and_starts_each_user_with_signup() -> None:
    first_type: dict[str, str] = {}
    types: Counter[str] = Counter()
    for raw in take(SimulatorConfig(users=200), 5_000):
        event = parse_event(raw, max_bytes=65_536)
        assert isinstance(event, Event), event
        first_type.setdefault(event.user_id, event.type)
        types[event.type] += 1
    assert set(first_type.values()) == {"signup"}
    assert {"purchase", "page_view", "reward_redeemed", "consent_updated"} <= set(types)


def test_invalid_ratio_produces_rejections_of_several_kinds() -> None:
    reasons: Counter[str] = Counter()
    messages = take(SimulatorConfig(invalid_ratio=0.2), 5_000)
    for raw in messages:
        result = parse_event(raw, max_bytes=65_536)
        if isinstance(result, Rejection):
            reasons[result.reason] += 1
    assert 800 < sum(reasons.values()) < 1_200
    assert {"bad_json", "not_an_object", "schema", "bad_timestamp", "oversized"} <= set(reasons)
