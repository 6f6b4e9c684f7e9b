"""The models' features: worked out once per event, completed per reward."""

from __future__ import annotations

import math

import pytest

from app.contract.records import Event
from app.features.derive import (
    CHANNELS,
    MODEL_FEATURES,
    event_features,
    model_features,
    reward_features,
)
from app.features.state import KindResponse, UserState

T0 = 1_772_366_400_000
USER = UserState(
    events=12,
    purchases=3,
    spend=180.0,
    first_ts=T0 - 30 * 86_400_000,
    last_ts=T0 - 3_600_000,
    last_purchase_ts=T0 - 5 * 86_400_000,
    engagement=4.0,
    responses={
        "points": KindResponse(offered=4, redeemed=3, dismissed=0),
        "cashback": KindResponse(offered=2, redeemed=0, dismissed=2),
    },
    rewards_granted=6,
    rewards_redeemed=3,
    rewards_dismissed=2,
)
EVENT = Event(event_id="e-1", user_id="u-1", type="purchase", ts=T0, channel="web", amount=60.0)


@pytest.mark.parametrize("kind", ["points", "cashback", "free_shipping"])
@pytest.mark.parametrize("channel", [*CHANNELS, None, "kiosk"])
def test_a_rewards_features_are_its_kinds_answers_and_its_channel(
    kind: str, channel: str | None
) -> None:
    features = model_features(USER, EVENT, kind=kind, channel=channel)
    assert set(features) == set(MODEL_FEATURES)
    response = USER.response(kind)
    assert features["kind_redeem_rate"] == (response.redeemed + 0.5) / (response.offered + 1)
    assert features["kind_dismiss_rate"] == (response.dismissed + 0.5) / (response.offered + 1)
    assert features["kind_offers_log"] == math.log1p(response.offered)
    assert {name: features[f"channel_{name}"] for name in CHANNELS} == {
        name: 1.0 if name == channel else 0.0 for name in CHANNELS
    }
    assert features["event_purchase"] == 1.0
    assert features["amount_log"] == math.log1p(60.0)


def test_every_reward_of_an_event_gets_its_own_features_in_one_order() -> None:
    """The event's part is shared; one reward's completion must not leak into the next,
    and the names come in one order (a model sums its terms in the order it is given)."""
    base = event_features(USER, EVENT)
    before = dict(base)
    points = reward_features(base, USER, kind="points", channel="email")
    cashback = reward_features(base, USER, kind="cashback", channel="web")
    assert base == before
    assert list(points) == list(cashback) == list(base)
    assert points["channel_email"] == 1.0
    assert cashback["channel_email"] == 0.0
    assert points["kind_redeem_rate"] != cashback["kind_redeem_rate"]
    assert points == model_features(USER, EVENT, kind="points", channel="email")
