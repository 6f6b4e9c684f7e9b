"""Features derived from a user's state and the current event.

Two views of the same user:

- :func:`rule_env`: named values reward-program rules are written against
  (``purchases``, ``days_since_signup``, ``age`` ...), with ``None`` where a
  value is unknown;
- :func:`model_features`: the numeric context the propensity models learn
  from: the user's behaviour, and (:func:`profile_inputs`) the profile fields a
  program names in ``model_profile``, each as a few fixed groups. A program can
  never name a protected attribute as a profile field, nor ``age`` as a model
  input (the loader refuses both), the models score only users who consented to
  personalization, and the fairness audit (docs/fairness.md) watches what a
  profile-aware model does to each group.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any

from app.contract.records import Event
from app.features.state import DAY_MS, UserState
from app.programs import REWARD_KINDS, ModelProfileField

CHANNELS = ("web", "mobile", "email", "sms", "store")
TRIGGER_TYPES = ("signup", "session_start", "page_view", "purchase", "referral", "survey")

MODEL_FEATURES: tuple[str, ...] = (
    "events_log",
    "purchases_log",
    "purchase_ratio",
    "spend_log",
    "avg_order_value_log",
    "days_since_purchase",
    "engagement_log",
    "days_since_reward",
    "kind_redeem_rate",
    "kind_dismiss_rate",
    "kind_offers_log",
    "redeem_rate",
    *(f"taste_{k}" for k in sorted(REWARD_KINDS)),
    *(f"channel_{c}" for c in CHANNELS),
    *(f"event_{t}" for t in TRIGGER_TYPES),
    "amount_log",
)

# The continuous ones among them: the models see each also as the band its standardised
# value falls in (app.models.propensity.StandardBands). Not the indicators (channel,
# event type) nor the user's answers per kind (taste_*), which are 0 until they answer.
BANDED_FEATURES: tuple[str, ...] = tuple(
    name for name in MODEL_FEATURES if not name.startswith(("taste_", "channel_", "event_"))
)


def _days_since(ts: int, then: int | None) -> float | None:
    return None if then is None else max(0.0, (ts - then) / DAY_MS)


def rule_env(state: UserState, event: Event) -> dict[str, Any]:
    """The names program rules and amount expressions may use."""
    aov = state.spend / state.purchases if state.purchases else None
    return {
        **state.profile,
        "events": state.events,
        "purchases": state.purchases,
        "spend": state.spend,
        "avg_order_value": aov,
        "days_since_signup": _days_since(event.ts, state.first_ts),
        "days_since_last_purchase": _days_since(event.ts, state.last_purchase_ts),
        "days_since_last_reward": _days_since(event.ts, state.last_reward_ts),
        "rewards_granted": state.rewards_granted,
        "rewards_redeemed": state.rewards_redeemed,
        "rewards_dismissed": state.rewards_dismissed,
        "engagement_7d": round(state.engagement_at(event.ts), 4),
        "preferred_channel": state.preferred_channel,
        "event_type": event.type,
        "amount": event.amount,
        "currency": event.currency,
        "channel": event.channel,
    }


def _capped_days(days: float | None, cap: float) -> float:
    return 1.0 if days is None else min(days, cap) / cap


def model_features(
    state: UserState, event: Event, *, kind: str, channel: str | None
) -> dict[str, float]:
    """The propensity model's view of offering a reward of ``kind`` on ``channel`` now."""
    return reward_features(event_features(state, event), state, kind=kind, channel=channel)


def event_features(state: UserState, event: Event) -> dict[str, float]:
    """What :func:`model_features` is for every reward of one event: worked out once per
    event, and completed per reward by :func:`reward_features` (a copy each)."""
    answered_all = state.rewards_redeemed + state.rewards_dismissed
    features = {
        "events_log": math.log1p(state.events),
        "purchases_log": math.log1p(state.purchases),
        "purchase_ratio": state.purchases / state.events if state.events else 0.0,
        "spend_log": math.log1p(state.spend),
        "avg_order_value_log": math.log1p(state.spend / state.purchases)
        if state.purchases
        else 0.0,
        "days_since_purchase": _capped_days(_days_since(event.ts, state.last_purchase_ts), 90.0),
        "engagement_log": math.log1p(state.engagement_at(event.ts)),
        "days_since_reward": _capped_days(_days_since(event.ts, state.last_reward_ts), 30.0),
        # The reward's kind's own: set by reward_features (here for their place in order).
        "kind_redeem_rate": 0.0,
        "kind_dismiss_rate": 0.0,
        "kind_offers_log": 0.0,
        "redeem_rate": (state.rewards_redeemed + 0.5) / (answered_all + 1.0),
        "amount_log": math.log1p(event.amount or 0.0),
    }
    features.update(_tastes(state))
    for _, feature in _CHANNEL_FEATURES:
        features[feature] = 0.0  # the reward's channel's: set by reward_features
    for name, feature in _EVENT_FEATURES:
        features[feature] = 1.0 if event.type == name else 0.0
    return features


def reward_features(
    base: dict[str, float], state: UserState, *, kind: str, channel: str | None
) -> dict[str, float]:
    """:func:`event_features` ``base`` completed for a reward of ``kind`` on ``channel``
    (a new dict, in the same order of names)."""
    response = state.response(kind)
    features = base.copy()
    # Smoothed towards "unknown" (0.5 share) with one pseudo-answer on each side.
    features["kind_redeem_rate"] = (response.redeemed + 0.5) / (response.offered + 1.0)
    features["kind_dismiss_rate"] = (response.dismissed + 0.5) / (response.offered + 1.0)
    features["kind_offers_log"] = math.log1p(response.offered)
    feature = _CHANNEL_FEATURE.get(channel) if channel is not None else None
    if feature is not None:
        features[feature] = 1.0
    return features


def _tastes(state: UserState) -> dict[str, float]:
    """The user's answers to every reward kind, centred on "unknown" (0).

    Tastes are related across kinds (who redeems every cashback may ignore free
    shipping), so each kind's model sees the user's answers to all kinds.
    """
    waiting: dict[str, int] = {}
    for offer in state.pending:
        waiting[offer.kind] = waiting.get(offer.kind, 0) + 1
    tastes = dict.fromkeys(_TASTE_FEATURES.values(), 0.0)
    for kind, response in state.responses.items():
        answered = max(0, response.offered - waiting.get(kind, 0))
        feature = _TASTE_FEATURES.get(kind)
        if answered and feature is not None:
            tastes[feature] = (response.redeemed + 0.5) / (answered + 1.0) - 0.5
    return tastes


# Feature names built once (in the order the features are listed), not per event.
_CHANNEL_FEATURES = tuple((name, f"channel_{name}") for name in CHANNELS)
_CHANNEL_FEATURE = dict(_CHANNEL_FEATURES)
_EVENT_FEATURES = tuple((name, f"event_{name}") for name in TRIGGER_TYPES)
_TASTE_FEATURES = {kind: f"taste_{kind}" for kind in REWARD_KINDS}


NO_GROUP = -1.0  # a profile code for a user without a value (or one of the wrong type)


def profile_codes(
    profile: dict[str, Any], fields: tuple[ModelProfileField, ...]
) -> tuple[float, ...]:
    """The group of each of ``fields`` the user's profile falls in, by index."""
    codes = []
    for field in fields:
        code = field.code(profile.get(field.name))
        codes.append(NO_GROUP if code is None else float(code))
    return tuple(codes)


def profile_inputs(
    codes: tuple[float, ...], fields: tuple[ModelProfileField, ...]
) -> dict[str, float]:
    """The model inputs of these codes: an indicator per group of each field, 1 for
    the user's group and 0 for the others (all 0 without a value). Every indicator is
    always there: the models' scaler learns a feature's spread from the values it sees,
    and an indicator sent only when it is 1 would have none, and be scaled to nothing."""
    inputs: dict[str, float] = {}
    for field, code in zip(fields, codes, strict=True):
        for index, name in enumerate(field.inputs()):
            inputs[name] = 1.0 if index == code else 0.0
    return inputs


@functools.lru_cache(maxsize=64)  # a program's fields: worked out at every grant and answer
def fingerprint(fields: tuple[ModelProfileField, ...]) -> float:
    """A number that changes when the fields, their order or their groups do (an exact
    float: 24 bits)."""
    described = "|".join(f"{field.name}:{','.join(field.groups)}" for field in fields)
    return float(zlib.crc32(described.encode()) & 0xFFFFFF)


def as_vector(
    features: dict[str, float],
    codes: tuple[float, ...] = (),
    fields: tuple[ModelProfileField, ...] = (),
) -> tuple[float, ...]:
    """Compact, ordered form for storing with a pending offer (4 decimals are plenty):
    the behavioural features, then (with ``codes`` of ``fields``) the fields'
    :func:`fingerprint` and the codes."""
    behaviour = (round(features[name], 4) for name in MODEL_FEATURES)
    if not codes:
        return tuple(behaviour)
    return (*behaviour, fingerprint(fields), *codes)


def from_vector(
    vector: tuple[float, ...], fields: tuple[ModelProfileField, ...] = ()
) -> dict[str, float]:
    """The features stored by :func:`as_vector`. Profile codes are read only when they
    were stored under the same ``fields``, in the same order and with the same groups:
    an offer made under a program that named other fields (or none) is learned from
    its behaviour alone, never with a code read as another field's or group's."""
    width = len(MODEL_FEATURES)
    features = dict(zip(MODEL_FEATURES, vector[:width], strict=True))
    stored = vector[width:]
    if fields and len(stored) == len(fields) + 1 and stored[0] == fingerprint(fields):
        features.update(profile_inputs(stored[1:], fields))
    return features
