"""A user's risk state, and the assessment of one event against it.

:func:`assess` is the one entry point the engine calls: it updates the user's
activity, gathers every signal (the user's own, the link stage's, the anomaly
detector's, the labelled model's), scores them, and carries the risk to the
user's next events, decaying, so that an account flagged at sign-up stays
suspect when it comes back to redeem.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec.structs import replace

from app.contract.records import Event
from app.fraud.links import LinkFacts
from app.fraud.scoring import (
    RiskModels,
    anomaly_can_alert,
    anomaly_features,
    decayed,
    noisy_or,
    signal_vector,
)
from app.fraud.signals import (
    Activity,
    RelatedNote,
    Signal,
    activity_signals,
    count_foreign,
    link_signals,
    observe_activity,
    redemption_signals,
    referral_signals,
    related_signal,
)

# How fast a user's carried risk fades without new signals.
LEVEL_HALF_LIFE_MS = 3 * 86_400_000


class Hold(msgspec.Struct, frozen=True, gc=False):
    """A reward chosen for a risky user and held for review."""

    decision_id: str
    reward_id: str
    kind: str
    channel: str | None
    value: float
    cost: float
    ts: int
    features: tuple[float, ...]
    learn: bool
    pending: bool = False  # held only because the account is new, not because it is risky
    # What the event that earned the reward said (its type, amount, currency and channel):
    # a release checks the reward's rules as they apply to that event, not to the one
    # that happens to release it. None on holds stored before these were kept.
    earned_type: str | None = None
    earned_amount: float | None = None
    earned_currency: str | None = None
    earned_channel: str | None = None


class RiskState(msgspec.Struct, frozen=True, gc=False):
    """What the engine keeps about one user's risk."""

    activity: Activity = Activity()
    level: float = 0.0  # the risk carried to the next event, before decay
    level_ts: int | None = None
    # The signals of the last flagged event.
    vector: dict[str, float] = msgspec.field(default_factory=dict)
    label: str | None = None  # the last analyst label: confirmed or cleared
    cleared_until: int | None = None
    hold: Hold | None = None
    # Other users' alerts that named this account since its last event: evidence for its
    # next event (see :func:`note_related`), then cleared.
    related: tuple[RelatedNote, ...] = ()

    @classmethod
    def from_document(cls, document: dict[str, Any] | None) -> RiskState:
        if not document:
            return cls()
        activity = document["activity"]
        hold = document.get("hold")
        return cls(
            activity=Activity(
                ts=activity["ts"],
                rates=tuple(activity["rates"]),
                amount_n=activity["amount_n"],
                amount_mean=activity["amount_mean"],
                amount_m2=activity["amount_m2"],
            ),
            level=document["level"],
            level_ts=document["level_ts"],
            vector=document["vector"],
            label=document["label"],
            cleared_until=document["cleared_until"],
            hold=None if hold is None else Hold(**{**hold, "features": tuple(hold["features"])}),
            related=tuple(RelatedNote(**note) for note in document.get("related", ())),
        )


class Assessment(msgspec.Struct, frozen=True, gc=False):
    """The risk of one event: ``score`` decides, ``event_score`` (its own signals) alerts.

    ``anomaly`` is the unsupervised detector's signal. It raises an alert's score and
    shows in its evidence, but never a decision's risk: what it learns depends on the
    order in which one worker happened to see all traffic, and a reward must not
    depend on that (offline replay reproduces every decision byte for byte).
    """

    score: float
    event_score: float
    signals: tuple[Signal, ...]
    anomaly: Signal | None = None

    @property
    def alert_score(self) -> float:
        extra = self.anomaly.weight if self.anomaly is not None else 0.0
        return round(noisy_or((self.event_score, extra)), 4)

    @property
    def related(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for signal in (*self.signals, *([self.anomaly] if self.anomaly else [])):
            for user in signal.related:
                seen.setdefault(user, None)
        return tuple(seen)[:10]


NO_RISK = Assessment(0.0, 0.0, ())


def assess(
    risk: RiskState,
    event: Event,
    *,
    links: tuple[LinkFacts, ...],
    models: RiskModels,
    granted: bool,
    granted_ts: int | None,
    own: bool = True,
    alert_at: float,
) -> tuple[RiskState, Assessment]:
    """The user's risk state after ``event``, and the event's assessment."""
    activity = observe_activity(risk.activity, event)
    answer = event.type in ("reward_redeemed", "reward_opened") and event.decision_id is not None
    if answer and not granted and not own:
        activity = count_foreign(activity)
    signals: list[Signal] = activity_signals(risk.activity, activity, event)
    signals += redemption_signals(
        event,
        granted=granted,
        granted_ts=granted_ts,
        own=own,
        foreign=activity.rate("foreign_1d"),
    )
    signals += referral_signals(event)
    signals += link_signals(links)
    fresh = tuple(n for n in risk.related if event.ts - n.ts <= RELATED_KEEP_MS)
    if fresh:
        signals.append(related_signal(fresh))
    if risk.cleared_until is not None and event.ts < risk.cleared_until:
        signals = [s for s in signals if not s.shared]
    learned = models.labelled_signal(signal_vector(signals))
    if learned is not None:
        signals.append(learned)
    event_score = noisy_or(s.weight for s in signals)
    found = models.anomaly_signal(
        anomaly_features(activity, links), wanted=anomaly_can_alert(event_score, alert_at)
    )
    carried = carried_risk(risk, event.ts)
    # The larger, not the noisy-OR, of now and before: a burst still under way is seen
    # again at every event, and the same evidence must not compound into certainty.
    score = 1.0 if risk.label == "confirmed" else max(event_score, carried)
    risk = replace(
        risk,
        activity=activity,
        level=max(carried, event_score),
        level_ts=max(event.ts, risk.level_ts or event.ts),
        vector=signal_vector(signals) if event_score >= alert_at else risk.vector,
        related=(),
    )
    return risk, Assessment(round(score, 4), round(event_score, 4), tuple(signals), found)


# How long a note that another alert named this account waits for its next event, and how
# many notes are kept (the newest).
RELATED_KEEP_MS = 7 * 86_400_000
MAX_RELATED_NOTES = 8


def note_related(risk: RiskState, note: RelatedNote) -> RiskState:
    """Another user's alert named this account: keep it for its next event's assessment.
    The same alert noted twice (a redelivery) is kept once."""
    if any(n.alert_id == note.alert_id for n in risk.related):
        return risk
    return replace(risk, related=(*risk.related, note)[-MAX_RELATED_NOTES:])


def carried_risk(risk: RiskState, ts: int) -> float:
    """The risk the user's earlier events left, decayed to ``ts``."""
    if risk.level_ts is None:
        return 0.0
    return decayed(risk.level, ts - risk.level_ts, LEVEL_HALF_LIFE_MS)


def label(risk: RiskState, event: Event, *, models: RiskModels, cleared_for_ms: int) -> RiskState:
    """An analyst's verdict: teach the labelled model, and confirm or clear the user."""
    verdict = event.attributes.get("label")
    if verdict not in ("confirmed", "cleared"):
        return risk
    if risk.vector:
        models.learn_label(risk.vector, verdict == "confirmed")
    if verdict == "confirmed":
        return replace(risk, label="confirmed", level=1.0, level_ts=event.ts)
    return replace(
        risk,
        label="cleared",
        level=0.0,
        level_ts=event.ts,
        cleared_until=event.ts + cleared_for_ms,
    )
