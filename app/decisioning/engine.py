"""The decision core: ``Engine.process(user, ledger, event) -> Outcome``.

For each new event the engine:

1. updates the user's features and closes offers whose response window passed
   (no response is a "no"), learning from each;
2. if the event is an outcome (``reward_redeemed``/``dismissed``/``opened``),
   learns from it and records it;
3. if the event may lead to a reward, puts every candidate reward through the
   gates (eligibility rules, consent, contact policy, budgets, stock), scores
   the survivors with priority = propensity x value x lever, and chooses:
   the best, or with probability epsilon a uniformly random survivor
   (exploration), or no reward when even the best is under the program's
   minimum priority;
4. returns the new state and exactly one decision that says why.

Everything but the learned models is passed in and returned, never kept, so
the same engine serves the Faust worker, offline replay and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from app.contract.records import OUTCOME_TYPES, Decision, Event, FraudAlert, decision_id_for
from app.decisioning import checks
from app.decisioning.explain import explain
from app.decisioning.ledger import Ledger, Share
from app.features.derive import as_vector, from_vector, model_features, rule_env
from app.features.state import (
    WEEK_MS,
    Grant,
    PendingOffer,
    UserState,
    close_offer,
    observe,
    prune,
    record_grant,
)
from app.models import PropensityModels, explore_draw
from app.programs import Program, Reward, resolve_amount


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event produced. A ``duplicate`` changes nothing."""

    user: UserState
    ledger: Ledger
    records: tuple[Decision | FraudAlert, ...]
    duplicate: bool = False
    learned: int = 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reward that passed every gate, with its score."""

    reward: Reward
    channel: str | None
    value: float
    cost: float
    propensity: float
    lever: float
    priority: float
    features: dict[str, float]
    rule_codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A reward that could not be offered, and why."""

    reward: Reward
    verdict: checks.Verdict


@dataclass(frozen=True, slots=True)
class Choice:
    """The arbitration's answer: a candidate (or None), how it was chosen, and the field."""

    chosen: Candidate | None
    probability: float
    mode: str  # exploit, explore, default, below_minimum, nothing_eligible, not_a_trigger, outcome
    candidates: tuple[Candidate, ...] = ()
    skipped: tuple[Skipped, ...] = ()


class Engine:
    """Decides, explains and learns for one reward program.

    >>> from app.contract import Event
    >>> from app.programs import load_builtin
    >>> engine = Engine(load_builtin("retail-loyalty"), seed=7)
    >>> signup = Event(event_id="e1", user_id="u1", type="signup", ts=1767225600000,
    ...                channel="web", attributes={"age": 30, "country": "DE"})
    >>> outcome = engine.process(UserState(), Ledger(), signup)
    >>> outcome.records[0].status in ("granted", "none")
    True
    """

    def __init__(self, program: Program, *, seed: int = 7, partitions: int = 1) -> None:
        self.program = program
        self.seed = seed
        self.partitions = partitions
        learning = program.learning
        self.models = PropensityModels(prior=learning.prior, learning_rate=learning.learning_rate)
        self.bucket_ms = _bucket_ms(program)
        self.keep_ledger_ms = max(
            (p.window.seconds * 1000 for p in program.budgets.periods), default=0
        )
        per_user_window = program.budgets.per_user_window
        self.keep_grants_ms = max(WEEK_MS, per_user_window.seconds * 1000 if per_user_window else 0)
        suppression = program.contact.suppression
        self.keep_dismissals_ms = suppression.within.seconds * 1000 if suppression else 0

    @property
    def model_version(self) -> str:
        return f"{self.program.id}@{self.program.source_sha256[:8]}/lr+{self.models.updates}"

    # ------------------------------------------------------------ one event

    def process(
        self, user: UserState, ledger: Ledger, event: Event, *, partition: int = 0
    ) -> Outcome:
        if user.has_seen(event.event_id):
            return Outcome(user, ledger, (), duplicate=True)
        user = observe(user, event, profile_fields=self.program.profile_fields)
        user = prune(
            user,
            event.ts,
            keep_grants_ms=self.keep_grants_ms,
            keep_dismissals_ms=self.keep_dismissals_ms,
        )
        user, learned = self._expire_offers(user, event.ts)
        if event.type in OUTCOME_TYPES:
            user, learned_now, choice = self._outcome(user, event)
            learned += learned_now
        elif event.type in self.program.triggers:
            choice = self._arbitrate(user, ledger, event, Share(partition, self.partitions))
        else:
            choice = Choice(None, 1.0, "not_a_trigger")
        budget_codes: tuple[str, ...] = ()
        if choice.chosen is not None:
            budget_codes = checks.budget_left(
                self.program,
                user,
                ledger,
                Share(partition, self.partitions),
                choice.chosen.reward,
                cost=choice.chosen.cost,
                ts=event.ts,
                bucket_ms=self.bucket_ms,
            )
        decision = self._decision(event, choice, budget_codes)
        if choice.chosen is not None:
            user, ledger = self._grant(user, ledger, event, decision, choice.chosen)
        return Outcome(user, ledger, (decision,), learned=learned)

    # ------------------------------------------------------------ arbitration

    def _arbitrate(self, user: UserState, ledger: Ledger, event: Event, share: Share) -> Choice:
        personalized = self._consents(user)[0]
        rewards = [r for r in self.program.rewards if event.type in r.triggers]
        if not personalized:
            default = self.program.non_personalized_default
            rewards = [r for r in rewards if r.id == default]
        env = rule_env(user, event)
        survivors: list[Candidate] = []
        skipped: list[Skipped] = []
        for reward in rewards:
            result = self._gate(reward, user, ledger, event, env, share)
            (survivors if isinstance(result, Candidate) else skipped).append(result)  # type: ignore[arg-type]
        if not personalized:
            chosen = survivors[0] if survivors else None
            return Choice(chosen, 1.0, "default", tuple(survivors), tuple(skipped))
        if not survivors:
            return Choice(None, 1.0, "nothing_eligible", (), tuple(skipped))
        return self._choose(event, user, survivors, skipped)

    def _gate(
        self,
        reward: Reward,
        user: UserState,
        ledger: Ledger,
        event: Event,
        env: dict[str, Any],
        share: Share,
    ) -> Candidate | Skipped:
        verdict, rule_codes = checks.eligibility(reward, env)
        if not verdict.passed:
            return Skipped(reward, verdict)
        verdict = checks.contact(self.program, user, event.ts)
        if not verdict.passed:
            return Skipped(reward, verdict)
        channel, verdict = checks.pick_channel(
            self.program,
            reward,
            user,
            event.channel,
            marketing=self._consents(user)[1],
            ts=event.ts,
        )
        if not verdict.passed:
            return Skipped(reward, verdict)
        value, cost = resolve_amount(reward.value, env), resolve_amount(reward.cost, env)
        if value is None or cost is None:
            return Skipped(reward, checks.Verdict(False, "value:unknown", "its value is unknown"))
        for verdict in (
            checks.budget(
                self.program, user, ledger, share, cost=cost, ts=event.ts, bucket_ms=self.bucket_ms
            ),
            checks.stock(reward, ledger, share),
        ):
            if not verdict.passed:
                return Skipped(reward, verdict)
        features = model_features(user, event, kind=reward.kind, channel=channel)
        propensity = self._propensity(reward, features, user)
        lever = self.program.lever_for(reward)
        priority = propensity * value * lever
        return Candidate(
            reward, channel, value, cost, propensity, lever, priority, features, rule_codes
        )

    def _propensity(self, reward: Reward, features: dict[str, float], user: UserState) -> float:
        """P(user redeems ``reward`` if offered now): the model, then the user's own answers."""
        model_p = self.models.predict_one(reward.kind, {**features, f"reward={reward.id}": 1.0})
        return personalize(model_p, user, reward.kind)

    def _choose(
        self, event: Event, user: UserState, survivors: list[Candidate], skipped: list[Skipped]
    ) -> Choice:
        # Highest priority first; ties go to the reward listed first in the program.
        order = {r.id: i for i, r in enumerate(self.program.rewards)}
        ranked = sorted(survivors, key=lambda c: (-c.priority, order[c.reward.id]))
        best, n = ranked[0], len(ranked)
        # With one candidate, exploring only matters below the minimum priority: it is how a
        # reward that looks not worth it gets the answers that could prove otherwise.
        answered = sum(r.offered for r in user.responses.values()) - len(user.pending)
        epsilon = self.program.learning.epsilon_for(max(0, answered))
        decision_id = decision_id_for(self.program.id, event.user_id, event.event_id)
        field = (tuple(ranked), tuple(skipped))
        below = best.priority < self.program.learning.min_priority
        if explore_draw(self.seed, decision_id, "explore") < epsilon:
            pick = ranked[int(explore_draw(self.seed, decision_id, "pick") * n)]
            if below or pick is not best:
                return Choice(pick, epsilon / n, "explore", *field)
        if below:
            return Choice(None, 1.0 - epsilon, "below_minimum", *field)
        return Choice(best, 1.0 - epsilon + epsilon / n, "exploit", *field)

    # ------------------------------------------------------------ outcomes and learning

    def _outcome(self, user: UserState, event: Event) -> tuple[UserState, int, Choice]:
        offer = next((p for p in user.pending if p.decision_id == event.decision_id), None)
        if offer is None:
            return user, 0, Choice(None, 1.0, "outcome_unknown_decision")
        if event.type == "reward_opened" and self.program.learning.opened == "ignore":
            return user, 0, Choice(None, 1.0, "outcome_opened")
        redeemed = event.type in ("reward_redeemed", "reward_opened")
        learned = self._learn(user, offer, redeemed)
        user = close_offer(
            user, offer.decision_id, redeemed=redeemed, dismissed=event.type == "reward_dismissed"
        )
        if event.type == "reward_dismissed":
            user = self._dismissed(user, event.ts)
        return user, learned, Choice(None, 1.0, f"outcome_{event.type.removeprefix('reward_')}")

    def _expire_offers(self, user: UserState, ts: int) -> tuple[UserState, int]:
        wait_ms = self.program.learning.response_window.seconds * 1000
        learned = 0
        for offer in [p for p in user.pending if p.ts + wait_ms <= ts]:
            learned += self._learn(user, offer, redeemed=False)
            user = close_offer(user, offer.decision_id, redeemed=False, dismissed=False)
        return user, learned

    def _learn(self, user: UserState, offer: PendingOffer, redeemed: bool) -> int:
        # Users who opted out of personalization (then or now) train no model.
        if not offer.learn or not self._consents(user)[0]:
            return 0
        features = {**from_vector(offer.features), f"reward={offer.reward_id}": 1.0}
        self.models.learn_one(offer.kind, features, redeemed)
        return 1

    def _dismissed(self, user: UserState, ts: int) -> UserState:
        suppression = self.program.contact.suppression
        user = replace(user, dismissals=(*user.dismissals, ts))
        if suppression is None:
            return user
        recent = [d for d in user.dismissals if d > ts - suppression.within.seconds * 1000]
        if len(recent) >= suppression.dismissals:
            return replace(user, suppressed_until=ts + suppression.lasts.seconds * 1000)
        return user

    # ------------------------------------------------------------ records

    def _consents(self, user: UserState) -> tuple[bool, bool]:
        defaults = self.program.consent_defaults
        personalization = (
            defaults.personalization if user.personalization is None else user.personalization
        )
        marketing = defaults.marketing if user.marketing is None else user.marketing
        return personalization, marketing

    def _grant(
        self, user: UserState, ledger: Ledger, event: Event, decision: Decision, chosen: Candidate
    ) -> tuple[UserState, Ledger]:
        offer = PendingOffer(
            decision_id=decision.decision_id,
            reward_id=chosen.reward.id,
            kind=chosen.reward.kind,
            ts=event.ts,
            features=as_vector(chosen.features),
            learn=self._consents(user)[0],
        )
        user = record_grant(user, Grant(event.ts, chosen.channel, chosen.cost), offer)
        ledger = ledger.charge(
            ts=event.ts,
            cost=chosen.cost,
            reward_id=chosen.reward.id,
            bucket_ms=self.bucket_ms,
            keep_ms=self.keep_ledger_ms,
        )
        return user, ledger

    def _decision(self, event: Event, choice: Choice, budget_codes: tuple[str, ...]) -> Decision:
        chosen = choice.chosen
        reasons, sentence = explain(self, event, choice, budget_codes)
        return Decision(
            decision_id=decision_id_for(self.program.id, event.user_id, event.event_id),
            event_id=event.event_id,
            user_id=event.user_id,
            ts=event.ts,
            action=chosen.reward.id if chosen else None,
            channel=chosen.channel if chosen else None,
            value=round(chosen.value, 4) if chosen else 0.0,
            cost=round(chosen.cost, 4) if chosen else 0.0,
            propensity=round(choice.probability, 6),
            risk=0.0,
            status="granted" if chosen else "none",
            reasons=reasons,
            explanation=sentence,
            model_version=self.model_version,
            program=self.program.id,
        )


# How many answers the model's estimate is worth when blended with the user's own answers.
MODEL_PSEUDO_ANSWERS = 1.5


def personalize(model_p: float, user: UserState, kind: str) -> float:
    """Blend the model's estimate with this user's own answers to rewards of ``kind``.

    The model's probability acts as a prior worth a few answers; each of the
    user's answered offers of this kind (redeemed, or not: dismissed or no answer
    in time) moves it towards what this user actually does. A user who redeemed
    two cashbacks out of two is not an average user, whatever the model has
    learned so far.
    """
    response = user.response(kind)
    waiting = sum(1 for offer in user.pending if offer.kind == kind)
    answered = max(0, response.offered - waiting)
    if answered == 0:
        return model_p
    return (response.redeemed + MODEL_PSEUDO_ANSWERS * model_p) / (answered + MODEL_PSEUDO_ANSWERS)


def _bucket_ms(program: Program) -> int:
    """Bucket width for period budgets: a 24th of the shortest window, at least a minute."""
    shortest = min((p.window.seconds for p in program.budgets.periods), default=3600)
    return max(60, shortest // 24) * 1000
