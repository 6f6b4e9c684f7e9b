"""The decision core: ``Engine.process(state, event) -> Outcome``.

Until reward programs exist, a fixed starter rule picks the reward: a welcome
reward on sign-up and cashback on purchases over a threshold. The shape (state
in, state and records out, one decision per new event, repeats recognised) is
the one the full engine keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.contract.records import OUTCOME_TYPES, Decision, Event, FraudAlert, decision_id_for
from app.features.state import UserState, record_reward, update

STARTER_MODEL_VERSION = "starter-rules-1"
CASHBACK_THRESHOLD = 50.0
CASHBACK_RATE = 0.05
CASHBACK_CAP = 20.0
WELCOME_POINTS_VALUE = 5.0
WELCOME_POINTS_COST = 0.5


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event produced. ``duplicate`` events change nothing."""

    state: UserState
    records: tuple[Decision | FraudAlert, ...]
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class _Choice:
    action: str | None
    value: float
    cost: float
    reasons: tuple[str, ...]
    explanation: str


class Engine:
    """Decides the reward for each event of one program.

    >>> from app.contract.records import Event
    >>> engine = Engine(program="retail-loyalty")
    >>> event = Event(event_id="e1", user_id="u1", type="signup", ts=1767225600000)
    >>> outcome = engine.process(UserState(), event)
    >>> outcome.records[0].action, outcome.records[0].status
    ('welcome-points', 'granted')
    """

    def __init__(self, *, program: str) -> None:
        self.program = program

    def process(self, state: UserState, event: Event) -> Outcome:
        if state.has_seen(event.event_id):
            return Outcome(state, (), duplicate=True)
        state = update(state, event)
        choice = self._choose(state, event)
        if choice.action is not None:
            state = record_reward(state, cost=choice.cost, ts=event.ts)
        return Outcome(state, (self._decision(event, choice),))

    def _choose(self, state: UserState, event: Event) -> _Choice:
        if event.type == "signup":
            return self._welcome(state)
        if event.type == "purchase":
            return _cashback(event.amount or 0.0, event.currency or "")
        if event.type in OUTCOME_TYPES:
            return _no_reward("outcome.recorded", f"Recorded the user's {event.type} outcome.")
        return _no_reward(
            "trigger.not_a_trigger", f"A {event.type} event does not lead to a reward."
        )

    def _welcome(self, state: UserState) -> _Choice:
        if state.rewards_granted > 0:
            return _no_reward("rule.welcome_already_given", "The welcome reward was given before.")
        return _Choice(
            "welcome-points",
            WELCOME_POINTS_VALUE,
            WELCOME_POINTS_COST,
            ("rule.welcome_on_signup:passed",),
            "Granted welcome points because this is the user's sign-up.",
        )

    def _decision(self, event: Event, choice: _Choice) -> Decision:
        return Decision(
            decision_id=decision_id_for(self.program, event.user_id, event.event_id),
            event_id=event.event_id,
            user_id=event.user_id,
            ts=event.ts,
            action=choice.action,
            channel=event.channel if choice.action is not None else None,
            value=choice.value,
            cost=choice.cost,
            propensity=1.0,  # a fixed rule chooses with certainty
            risk=0.0,
            status="granted" if choice.action is not None else "none",
            reasons=choice.reasons,
            explanation=choice.explanation,
            model_version=STARTER_MODEL_VERSION,
            program=self.program,
        )


def _cashback(amount: float, currency: str) -> _Choice:
    if amount < CASHBACK_THRESHOLD:
        return _no_reward(
            "rule.cashback_min_amount:failed",
            f"No reward: the purchase of {amount:.2f} {currency} "
            f"is under {CASHBACK_THRESHOLD:.0f}.",
        )
    value = round(min(amount * CASHBACK_RATE, CASHBACK_CAP), 2)
    return _Choice(
        "cashback",
        value,
        value,
        ("rule.cashback_min_amount:passed",),
        f"Granted {value:.2f} {currency} cashback because the purchase of "
        f"{amount:.2f} {currency} is at least {CASHBACK_THRESHOLD:.0f}.",
    )


def _no_reward(reason: str, explanation: str) -> _Choice:
    return _Choice(None, 0.0, 0.0, (reason,), explanation)
