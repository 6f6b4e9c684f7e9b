"""Fraud signals of one event: each a reason code, a weight, and evidence an analyst can read.

A signal's ``weight`` is how strongly it alone says "fraud", in [0, 1]; the
scorer (:mod:`app.fraud.scoring`) combines them. The thresholds below are
where normal customers stop and scripts start, set from the simulated
population and the attack scenarios (``docs/benchmarks.md``); each is one
named constant so that it can be read, argued with and tested.

Per-user rates are exponentially decayed counts, not lists of timestamps: a
count that decays with time constant tau reads as "about this many in the last
tau" after a burst, and costs one float per rate whatever the traffic.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import orjson
from msgspec.structs import replace

from app.contract.records import Event
from app.fraud.links import LinkFacts

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# The decayed rates a user's risk state keeps: name -> time constant.
RATES: dict[str, int] = {
    "events_1m": MINUTE_MS,
    "events_1h": HOUR_MS,
    "earning_1h": HOUR_MS,  # events that can earn a reward
    "redemptions_10m": 10 * MINUTE_MS,
    "tiny_purchases_30m": 30 * MINUTE_MS,
    "purchases_10m": 10 * MINUTE_MS,
    "foreign_1d": 24 * HOUR_MS,  # answers to decisions that are not this user's
}
RATE_NAMES = tuple(RATES)
_RATE_INDEX = {name: index for index, name in enumerate(RATE_NAMES)}
_SCALES = tuple(RATES.values())
EARNING_TYPES = frozenset({"signup", "purchase", "session_start", "survey", "referral"})

TINY_PURCHASE = 5.0  # in the program's currency: below this a purchase is "tiny"
EVENTS_PER_MINUTE = 20.0
EVENTS_PER_HOUR = 120.0
EARNING_PER_HOUR = 20.0
REDEMPTIONS_PER_10M = 5.0
TINY_PURCHASES_PER_30M = 4.0  # weight 0.75; twice as many: 0.9
PURCHASES_PER_10M = 4.0
FAST_REDEMPTION_MS = 2 * MINUTE_MS
AMOUNT_Z = 4.0  # an amount this many standard deviations (of log amount) from the user's own
AMOUNT_HISTORY = 5  # ... once the user has this many purchases
DEVICE_SIGNUPS = 3  # sign-ups on one device within 24 h
NET_SIGNUPS = 4  # sign-ups on one network within 24 h
SAME_IP_ACCOUNTS = 5  # accounts on one address within 24 h
DEVICE_ACCOUNTS = 5  # accounts active on one device within 24 h


class Signal(msgspec.Struct, frozen=True, gc=False):
    """One reason to suspect an event.

    ``shared``: the signal only says the user shares a device or network with
    others, which a ``cleared`` label can vouch for (a household, an office).
    Signals of what the user did (forged, replayed, bursts) are never cleared away.
    """

    code: str
    weight: float
    evidence: str
    related: tuple[str, ...] = ()
    shared: bool = False


class Activity(msgspec.Struct, frozen=True, gc=False):
    """The per-user numbers the signals are computed from, kept in the user's state."""

    ts: int | None = None
    rates: tuple[float, ...] = (0.0,) * len(RATE_NAMES)
    amount_n: int = 0
    amount_mean: float = 0.0  # of log(1 + amount)
    amount_m2: float = 0.0

    def rate(self, name: str) -> float:
        return self.rates[_RATE_INDEX[name]]

    def amount_z(self, amount: float) -> float | None:
        """How unusual ``amount`` is for this user, before it is counted."""
        if self.amount_n < AMOUNT_HISTORY:
            return None
        std = math.sqrt(self.amount_m2 / (self.amount_n - 1))
        return (math.log1p(amount) - self.amount_mean) / max(std, 0.25)


def observe_activity(activity: Activity, event: Event) -> Activity:
    """The activity after ``event``: decayed rates bumped, the amount history updated."""
    now = event.ts if activity.ts is None else max(activity.ts, event.ts)
    elapsed = 0 if activity.ts is None else now - activity.ts
    # An event older than the newest one seen (it took another path, or came late) counts
    # for what it weighs now, decayed by its age: never as if it had just happened.
    late = now - event.ts
    is_purchase = event.type == "purchase"
    bumps = (  # in RATE_NAMES order
        1.0,
        1.0,
        float(event.type in EARNING_TYPES),
        float(event.type == "reward_redeemed"),
        float(is_purchase and (event.amount or 0.0) < TINY_PURCHASE),
        float(is_purchase),
        0.0,  # foreign_1d: counted by :func:`count_foreign`, which knows the decisions
    )
    if late == 0:  # the usual case: the bump weighs exp(0) = 1
        rates = tuple(
            [
                value * math.exp(-elapsed / scale) + bump
                for value, scale, bump in zip(activity.rates, _SCALES, bumps, strict=True)
            ]
        )
    else:
        rates = tuple(
            value * math.exp(-elapsed / scale) + bump * math.exp(-late / scale)
            for value, scale, bump in zip(activity.rates, _SCALES, bumps, strict=True)
        )
    activity = replace(activity, ts=now, rates=rates)
    if event.type == "purchase" and event.amount is not None:
        x = math.log1p(event.amount)
        n = activity.amount_n + 1
        delta = x - activity.amount_mean
        mean = activity.amount_mean + delta / n
        activity = replace(
            activity,
            amount_n=n,
            amount_mean=mean,
            amount_m2=activity.amount_m2 + delta * (x - mean),
        )
    return activity


def activity_signals(before: Activity, after: Activity, event: Event) -> list[Signal]:
    """Velocity, bursts and unusual amounts of this user."""
    signals: list[Signal] = []

    def over(name: str, limit: float, code: str, weight: float, what: str) -> None:
        value = after.rate(name)
        if value >= limit:
            signals.append(Signal(code, weight, f"about {value:.0f} {what}"))

    over("events_1m", EVENTS_PER_MINUTE, "velocity.events_per_minute", 0.7, "events in a minute")
    over("events_1h", EVENTS_PER_HOUR, "velocity.events_per_hour", 0.6, "events in an hour")
    over(
        "earning_1h",
        EARNING_PER_HOUR,
        "velocity.earning_per_hour",
        0.65,
        "reward-earning events in an hour",
    )
    if event.type == "reward_redeemed":
        over(
            "redemptions_10m",
            REDEMPTIONS_PER_10M,
            "redemption.burst",
            0.85,
            "redemptions in 10 minutes",
        )
    if event.type == "purchase":
        tiny = after.rate("tiny_purchases_30m")
        over(
            "tiny_purchases_30m",
            TINY_PURCHASES_PER_30M,
            "purchase.tiny_burst",
            0.9 if tiny >= 2 * TINY_PURCHASES_PER_30M else 0.75,
            f"purchases under {TINY_PURCHASE:g} in 30 minutes",
        )
        over(
            "purchases_10m", PURCHASES_PER_10M, "velocity.purchases", 0.7, "purchases in 10 minutes"
        )
        z = before.amount_z(event.amount or 0.0)
        if z is not None and abs(z) >= AMOUNT_Z:
            signals.append(
                Signal(
                    "purchase.amount_outlier",
                    0.3,
                    f"amount {event.amount:.2f} is {abs(z):.1f} standard deviations from "
                    f"this user's {before.amount_n} purchases",
                )
            )
    return signals


def count_foreign(activity: Activity) -> Activity:
    """One more answer to a decision that is not this user's."""
    index = RATE_NAMES.index("foreign_1d")
    rates = tuple(r + 1.0 if i == index else r for i, r in enumerate(activity.rates))
    return replace(activity, rates=rates)


def redemption_signals(
    event: Event, *, granted: bool, granted_ts: int | None, own: bool, foreign: float = 1.0
) -> list[Signal]:
    """An answer to a reward: one that is not this user's at all (made up, or another user's),
    one of this user's decisions that granted nothing, or one redeemed suspiciously fast.

    ``own``: the decision id is one the engine made for this user's recent events
    (ids are deterministic, so this can be checked without storing them).
    """
    if event.type not in ("reward_redeemed", "reward_opened") or event.decision_id is None:
        return []
    what = event.type.removeprefix("reward_")
    if not granted and not own:
        # One such answer can be an event that overtook its own decision's event (a
        # backfill, two devices); a second or third within a day is a forger trying ids.
        weight = 0.45 if foreign < 2 else (0.75 if foreign < 3 else 0.95)
        return [
            Signal(
                "redemption.foreign",
                weight,
                f"{what} decision {event.decision_id}, which was never made for this user "
                f"(about {foreign:.0f} such in a day)",
            )
        ]
    if not granted:
        # A stale screen or a client bug as often as an attempt: weak alone.
        return [
            Signal(
                "redemption.not_granted",
                0.2,
                f"{what} decision {event.decision_id}, which granted this user nothing",
            )
        ]
    if (
        event.type == "reward_redeemed"
        and granted_ts is not None
        and event.ts - granted_ts < FAST_REDEMPTION_MS
    ):
        seconds = max(0, event.ts - granted_ts) / 1000
        return [Signal("redemption.fast", 0.3, f"redeemed {seconds:.0f} s after it was granted")]
    return []


def referral_signals(event: Event) -> list[Signal]:
    """A user who refers themselves."""
    if event.type != "referral":
        return []
    if event.attributes.get("referred_user_id") == event.user_id:
        return [Signal("referral.self", 0.95, "the user referred their own account")]
    return []


# The weight of being named as a related account in another user's fraud alert: on its
# own under the alert threshold (0.5) and the hold threshold (0.6) of the shipped
# programs; with any other signal of 0.34 or more, over the hold threshold.
RELATED_WEIGHT = 0.4


def related_signal(notes: tuple[RelatedNote, ...]) -> Signal:
    """This account was named as related in other users' fraud alerts since its last event."""
    by = tuple(dict.fromkeys(note.by for note in notes))
    alerts = ", ".join(note.alert_id for note in notes[:3])
    return Signal(
        "account.related",
        RELATED_WEIGHT,
        f"named as a related account in fraud alert {alerts} (of {', '.join(by[:3])})",
        related=by,
        shared=True,  # a link to others, which an analyst's "cleared" vouches for
    )


class RelatedNote(msgspec.Struct, frozen=True, gc=False):
    """Another user's fraud alert named this account: which alert, whose, and when."""

    alert_id: str
    by: str
    ts: int

    def to_document(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "by": self.by, "ts": self.ts}

    def to_json(self) -> bytes:
        """The note as the decide stage sends it on the rekeyed topic."""
        return orjson.dumps(self.to_document())


def replay_signal(*, altered: bool) -> Signal:
    """An event id seen before: a replay, or (same bytes) a duplicate delivery."""
    if altered:
        return Signal("event.replayed_altered", 0.95, "event id seen before with different content")
    return Signal("event.replayed", 0.6, "event id seen before with the same content")


def link_signals(facts: tuple[LinkFacts, ...]) -> list[Signal]:
    """Accounts sharing a device or network, and referrals between them."""
    signals: list[Signal] = []
    for fact in facts:
        where = "device" if fact.kind == "device" else "network"
        if fact.referred_by is not None:
            weight = 0.9 if fact.kind == "device" else 0.75
            signals.append(
                Signal(
                    f"referral.linked_{where}",
                    weight,
                    f"referred by an account on the same {where}",
                    (fact.referred_by,),
                )
            )
        if fact.refers_linked is not None:
            signals.append(
                Signal(
                    f"referral.to_linked_{where}",
                    0.85,
                    f"referred an account already on the same {where}",
                    (fact.refers_linked,),
                )
            )
        signals.extend(_sharing(fact, where))
    return signals


def _sharing(fact: LinkFacts, where: str) -> list[Signal]:
    signals: list[Signal] = []
    if fact.kind == "device":
        if fact.signups_24h >= DEVICE_SIGNUPS:
            # Three can be a family on its tablet: not enough alone to alert.
            weight = 0.3 if fact.signups_24h == DEVICE_SIGNUPS else 0.9
            signals.append(
                Signal(
                    "device.signups",
                    weight,
                    f"{fact.signups_24h} accounts signed up on this device in 24 h",
                    fact.related,
                    shared=True,
                )
            )
        elif fact.accounts_24h >= DEVICE_ACCOUNTS:
            signals.append(
                Signal(
                    "device.shared",
                    0.5,
                    f"device shared by {fact.accounts_24h} accounts in 24 h",
                    fact.related,
                    shared=True,
                )
            )
        return signals
    if fact.signups_24h >= NET_SIGNUPS:
        signals.append(
            Signal(
                "network.signups",
                0.5,
                f"{fact.signups_24h} accounts signed up on this network in 24 h",
                fact.related,
                shared=True,
            )
        )
    if fact.same_ip_24h >= SAME_IP_ACCOUNTS:
        signals.append(
            Signal(
                "ip.shared",
                0.4,
                f"address shared by {fact.same_ip_24h} accounts in 24 h",
                fact.related,
                shared=True,
            )
        )
    return signals
