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
the same engine serves the worker, offline replay and the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec.structs import replace

from app.contract.records import (
    OUTCOME_TYPES,
    Decision,
    DecisionStatus,
    Event,
    FraudAlert,
    HoldKind,
    alert_id_for,
    decision_id_for,
)
from app.decisioning import checks
from app.decisioning.explain import explain, fraud_codes, fraud_words, risk_words
from app.decisioning.ledger import Ledger, Share
from app.decisioning.policy import Candidate, Policy, Situation, policy_for
from app.features.derive import (
    BANDED_FEATURES,
    as_vector,
    event_features,
    from_vector,
    profile_codes,
    profile_inputs,
    reward_features,
    rule_env,
)
from app.features.state import (
    WEEK_MS,
    Grant,
    PendingOffer,
    UserState,
    close_offer,
    content_digest,
    decision_ref,
    observe,
    prune,
    record_grant,
)
from app.fraud import NO_RISK, Assessment, Hold, LinkFacts, RiskModels, assess, label
from app.fraud.assess import carried_risk, note_related
from app.fraud.scoring import noisy_or
from app.fraud.signals import RelatedNote, replay_signal
from app.models import PropensityModels
from app.models.deferral import Step as Deferred
from app.programs import Arm, Program, Reward


class Answer(msgspec.Struct, frozen=True, gc=False):
    """A user's answer to one offer: redeemed (or opened, when the program counts that),
    or not (dismissed, or silent until the response window closed).

    ``predicted`` is the model's probability of a redemption for that offer, made just
    before it learned from this answer: scored against the answer, it says how good the
    model was on data it had not seen yet. None when the answer trained no model (the
    user declined personalization).
    """

    reward_id: str
    redeemed: bool
    predicted: float | None


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What processing one event produced. A ``duplicate`` (an event id seen before) is
    not decided again: the user's state only counts it (and its risk rises if the
    content differs)."""

    user: UserState
    ledger: Ledger
    records: tuple[Decision | FraudAlert, ...]
    duplicate: bool = False
    answers: tuple[Answer, ...] = ()

    @property
    def learned(self) -> int:
        """How many learning steps the models took."""
        return sum(1 for answer in self.answers if answer.predicted is not None)


class Skipped(msgspec.Struct, frozen=True, gc=False):
    """A reward that could not be offered, and why."""

    reward: Reward
    verdict: checks.Verdict


class Choice(msgspec.Struct, frozen=True, gc=False):
    """The arbitration's answer: a candidate (or None), how it was chosen, and the field."""

    chosen: Candidate | None
    probability: float
    mode: str  # exploit, explore, default, below_minimum, nothing_eligible, not_a_trigger, outcome
    candidates: tuple[Candidate, ...] = ()
    skipped: tuple[Skipped, ...] = ()


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """What risk made of a choice: the status, and any fraud reason codes beyond the signals."""

    status: DecisionStatus
    codes: tuple[str, ...] = ()


NO_VERDICT = Verdict("none")  # an event no reward was chosen for


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

    def __init__(
        self,
        program: Program,
        *,
        seed: int = 7,
        partitions: int = 1,
        policy: Policy | None = None,
    ) -> None:
        """``policy`` chooses among the gated candidates (default: the one the program's
        ``learning.exploration`` names, see :mod:`app.decisioning.policy`). The program's
        ``fraud.enabled`` switches risk on or off; its pending period is separate."""
        self.program = program
        self.defend = program.fraud.enabled
        self.seed = seed
        self.policy = policy if policy is not None else policy_for(program, seed=seed)
        self.experiment = program.experiment
        # An arm with a learning block of its own chooses with its own policy.
        self.arm_policies: dict[str, Policy] = {
            arm.name: policy_for(dataclasses.replace(program, learning=arm.learning), seed=seed)
            for arm in (program.experiment.arms if program.experiment else ())
            if arm.learning is not None
        }
        self.partitions = partitions
        learning = program.learning
        self.models = PropensityModels(
            prior=learning.prior,
            learning_rate=learning.learning_rate,
            banded=BANDED_FEATURES,
            weight_step=learning.weight_step(),
        )
        self.risk_models = RiskModels(seed=seed)
        self.bucket_ms = _bucket_ms(program)
        self.keep_ledger_ms = max(
            (p.window.seconds * 1000 for p in program.budgets.periods), default=0
        )
        per_user_window = program.budgets.per_user_window
        self.keep_grants_ms = max(WEEK_MS, per_user_window.seconds * 1000 if per_user_window else 0)
        suppression = program.contact.suppression
        self.keep_dismissals_ms = suppression.within.seconds * 1000 if suppression else 0
        # Fixed with the program, and read by every trigger event: worked out once.
        self.rewards_for: dict[str, tuple[Reward, ...]] = {
            trigger: tuple(r for r in program.rewards if trigger in r.triggers)
            for trigger in {t for r in program.rewards for t in r.triggers}
        }
        self.listed_order = {r.id: i for i, r in enumerate(program.rewards)}
        self.reward_indicators = _reward_indicators(program.rewards)

    @contextlib.contextmanager
    def holding_learning(self, into: list[Deferred]) -> Iterator[None]:
        """Inside the block, every learning step of every model is held in ``into``, to be
        run once the batch is committed (app.models.deferral)."""
        with self.models.deferral.holding(into), self.risk_models.deferral.holding(into):
            yield

    @property
    def model_version(self) -> str:
        return f"{self.program.id}@{self.program.source_sha256[:8]}/lr+{self.models.updates}"

    # ------------------------------------------------------------ one event

    def arm_of(self, user_id: str) -> Arm | None:
        """The experiment arm ``user_id`` is in; None when the program runs none."""
        return None if self.experiment is None else self.experiment.arm_for(user_id)

    def process(
        self,
        user: UserState,
        ledger: Ledger,
        event: Event,
        *,
        partition: int = 0,
        links: tuple[LinkFacts, ...] = (),
    ) -> Outcome:
        """Decide ``event`` for ``user``; ``links`` is what the link stage found about it."""
        if user.has_seen(event.event_id):
            return self._repeat(user, ledger, event)
        arm = self.arm_of(event.user_id)
        share = Share(partition, self.partitions, 1.0 if arm is None else arm.share)
        user = observe(user, event, profile_fields=self.program.profile_fields)
        user = prune(
            user,
            event.ts,
            keep_grants_ms=self.keep_grants_ms,
            keep_dismissals_ms=self.keep_dismissals_ms,
        )
        user, answers = self.expire_offers(user, event.ts)
        user, notes = self._expire_hold(user, event.ts)
        user, assessment = self._assess(user, event, links)
        if event.type == "fraud_label":
            user, ledger, decision = self._label(user, ledger, event, share, assessment, notes)
            return Outcome(
                user, ledger, (decision, *self._alerts(user, event, assessment)), answers=answers
            )
        if event.type == "member_imported":  # no reward, nor a held one's release
            choice, notes = Choice(None, 1.0, "not_a_trigger"), (*notes, "member.imported")
        elif event.type in OUTCOME_TYPES:
            user, answered, choice = self._outcome(user, event)
            answers += answered
        elif self._pending_due(user, event.ts, assessment):
            hold = user.risk.hold
            assert hold is not None
            codes = (*notes, "policy.pending_over", *fraud_codes(assessment))
            why = "the new account's pending period is over"
            user, ledger, released = self._release(user, ledger, event, share, hold, codes, why)
            return Outcome(
                user, ledger, (released, *self._alerts(user, event, assessment)), answers=answers
            )
        elif event.type in self.program.triggers and arm is not None and arm.serves == "nothing":
            choice = Choice(None, 1.0, "holdout")
        elif event.type in self.program.triggers:
            # Below the hold threshold risk prices the reward (smaller or none); at or
            # above it, the reward a clean user would get is chosen, then held or blocked.
            soft = assessment.score if assessment.score < self.program.fraud.hold else 0.0
            choice = self._arbitrate(user, ledger, event, share, risk=soft, arm=arm)
        else:
            choice = Choice(None, 1.0, "not_a_trigger")
        verdict = self._verdict(choice, assessment, user, event.ts)
        budget_codes: tuple[str, ...] = ()
        if choice.chosen is not None and verdict.status == "granted":
            budget_codes = checks.budget_left(
                self.program,
                user,
                ledger,
                share,
                choice.chosen.reward,
                cost=choice.chosen.cost,
                ts=event.ts,
                bucket_ms=self.bucket_ms,
            )
        decision = self._decision(
            event, user, choice, budget_codes, assessment, verdict, notes=notes
        )
        if choice.chosen is not None and verdict.status == "granted":
            user, ledger = self._grant(user, ledger, event, decision, choice.chosen)
        elif choice.chosen is not None and verdict.status == "held":
            pending = "fraud.new_account_pending" in verdict.codes
            user = self._hold(user, event, decision, choice.chosen, pending=pending)
        alerts = self._alerts(user, event, assessment)
        records: tuple[Decision | FraudAlert, ...] = (decision, *alerts)
        return Outcome(user, ledger, records, answers=answers)

    # ------------------------------------------------------------ risk

    def _assess(
        self, user: UserState, event: Event, links: tuple[LinkFacts, ...]
    ) -> tuple[UserState, Assessment]:
        if not self.defend:
            return user, NO_RISK
        granted_ts: int | None = None
        granted = own = True
        if event.type in OUTCOME_TYPES and event.decision_id is not None:
            offer = next((p for p in user.pending if p.decision_id == event.decision_id), None)
            grant = user.granted(event.decision_id)
            granted = offer is not None or grant is not None
            granted_ts = offer.ts if offer is not None else (grant.ts if grant else None)
            own = granted or any(
                decision_id_for(self.program.id, event.user_id, seen) == event.decision_id
                for seen in user.recent_event_ids
            )
        risk, assessment = assess(
            user.risk,
            event,
            links=links,
            models=self.risk_models,
            granted=granted,
            granted_ts=granted_ts,
            own=own,
            alert_at=self.program.fraud.alert,
        )
        return replace(user, risk=risk), assessment

    def _verdict(self, choice: Choice, assessment: Assessment, user: UserState, ts: int) -> Verdict:
        """Granted, held or blocked: what the risk (and a new account's pending period)
        allows for the chosen reward."""
        if choice.chosen is None:
            return NO_VERDICT
        fraud = self.program.fraud
        if self.defend and assessment.score >= fraud.block:
            return Verdict("blocked", ("fraud.blocked",))
        if self.defend and assessment.score >= fraud.hold:
            if user.risk.hold is not None:
                return Verdict("blocked", ("fraud.hold_open",))
            return Verdict("held", ("fraud.held",))
        if self._pending(user, ts) and choice.chosen.cost > 0:
            if user.risk.hold is not None:
                # One reward waits per new account; the rest of its first period earns none.
                return Verdict("none", ("hold.pending_open",))
            return Verdict("held", ("fraud.new_account_pending",))
        return Verdict("granted")

    def _pending(self, user: UserState, ts: int) -> bool:
        """Is ``user`` still inside the program's pending period for new accounts?"""
        period = self.program.fraud.new_account_pending
        return (
            period is not None
            and user.first_ts is not None
            and (ts < user.first_ts + period.seconds * 1000)
        )

    def _pending_due(self, user: UserState, ts: int, assessment: Assessment) -> bool:
        """A reward held only for the pending period, now over, for a user not risky now."""
        hold = user.risk.hold
        return (
            hold is not None
            and hold.pending
            and not self._pending(user, ts)
            and assessment.score < self.program.fraud.hold
        )

    def _alerts(
        self, user: UserState, event: Event, assessment: Assessment
    ) -> tuple[FraudAlert, ...]:
        """One alert for an event whose own signals reach the program's alert threshold.

        ``user`` is the state that counted the message: its ordinal keeps the alerts of
        one event id (the event's own, each copy's) apart."""
        found = [*assessment.signals, *([assessment.anomaly] if assessment.anomaly else [])]
        if assessment.alert_score < self.program.fraud.alert or not found:
            return ()
        signals = sorted(found, key=lambda s: (-s.weight, s.code))
        evidence: dict[str, str] = {}
        for signal in signals:
            evidence.setdefault(signal.code, signal.evidence)
        return (
            FraudAlert(
                alert_id=alert_id_for(
                    self.program.id, event.user_id, event.event_id, signals[0].code, user.messages
                ),
                event_id=event.event_id,
                user_id=event.user_id,
                ts=event.ts,
                score=round(noisy_or((assessment.score, assessment.alert_score)), 4),
                reasons=tuple(evidence),
                evidence=evidence,
                related_users=tuple(u for u in assessment.related if u != event.user_id),
                program=self.program.id,
            ),
        )

    def _repeat(self, user: UserState, ledger: Ledger, event: Event) -> Outcome:
        """An event id seen before: never a second decision, always an alert.

        The same id with other content is a replay made to earn twice: the user's risk
        carries its full weight. The same bytes again may be a producer's retry, or a
        replay of an event that earned: each such copy adds :data:`REPEAT_WEIGHT` to the
        user's carried risk (noisy-OR), so one retry only prices the user's next rewards
        a little while a run of copies reaches the hold threshold (four copies: 0.68).
        Either way the state counts the copy, so that each copy's alert has an id of
        its own.
        """
        ledger = self._recharge(user, ledger, event)
        if not self.defend:
            return Outcome(user, ledger, (), duplicate=True)
        altered = user.digest_of(event.event_id) != content_digest(event)
        signal = replay_signal(altered=altered)
        user = replace(user, repeats=user.repeats + 1)
        risk = user.risk
        carried = carried_risk(risk, event.ts)
        assessment = Assessment(round(max(signal.weight, carried), 4), signal.weight, (signal,))
        level = max(carried, signal.weight) if altered else noisy_or((carried, REPEAT_WEIGHT))
        risk = replace(
            risk,
            level=level,
            level_ts=max(event.ts, risk.level_ts or event.ts),
            vector={signal.code: signal.weight} if altered else risk.vector,
        )
        user = replace(user, risk=risk)
        return Outcome(user, ledger, self._alerts(user, event, assessment), duplicate=True)

    def note_related(self, user: UserState, note: RelatedNote) -> UserState:
        """Another user's fraud alert named ``user`` as related: evidence for the user's
        next event (signal ``account.related``, weight
        :data:`app.fraud.signals.RELATED_WEIGHT`). Nothing when fraud scoring is off."""
        if not self.defend:
            return user
        risk = note_related(user.risk, note)
        return user if risk is user.risk else replace(user, risk=risk)

    def _charge(self, ledger: Ledger, grant: Grant) -> Ledger:
        return ledger.charge(
            ts=grant.ts,
            cost=grant.cost,
            reward_id=grant.reward,
            bucket_ms=self.bucket_ms,
            keep_ms=self.keep_ledger_ms,
            ref=grant.ref,
        )

    def _recharge(self, user: UserState, ledger: Ledger, event: Event) -> Ledger:
        """A repeat of an event whose grant the user's state recorded but the ledger does
        not (a crash persisted one and not the other): charge it now, once."""
        grant = user.granted(decision_id_for(self.program.id, event.user_id, event.event_id))
        if grant is None or ledger.has_charged(grant.ref) or not ledger.remembers(grant.ts):
            return ledger
        return self._charge(ledger, grant)

    def _expire_hold(self, user: UserState, ts: int) -> tuple[UserState, tuple[str, ...]]:
        hold = user.risk.hold
        if hold is None or ts < hold.ts + self.program.fraud.hold_for.seconds * 1000:
            return user, ()
        return replace(user, risk=replace(user.risk, hold=None)), (
            f"hold.expired:{hold.decision_id}",
        )

    def _hold(
        self,
        user: UserState,
        event: Event,
        decision: Decision,
        chosen: Candidate,
        *,
        pending: bool = False,
    ) -> UserState:
        hold = Hold(
            decision_id=decision.decision_id,
            reward_id=chosen.reward.id,
            kind=chosen.reward.kind,
            channel=chosen.channel,
            value=chosen.value,
            cost=chosen.cost,
            ts=event.ts,
            features=as_vector(chosen.features, chosen.profile_codes, self.program.model_profile),
            learn=self._consents(user)[0],
            pending=pending,
            earned_type=event.type,
            earned_amount=event.amount,
            earned_currency=event.currency,
            earned_channel=event.channel,
        )
        return replace(user, risk=replace(user.risk, hold=hold))

    def _label(
        self,
        user: UserState,
        ledger: Ledger,
        event: Event,
        share: Share,
        assessment: Assessment,
        notes: tuple[str, ...],
    ) -> tuple[UserState, Ledger, Decision]:
        """An analyst's verdict: release or cancel the user's held reward, and learn."""
        verdict = event.attributes.get("label")
        risk = label(
            user.risk,
            event,
            models=self.risk_models,
            cleared_for_ms=self.program.fraud.cleared_for.seconds * 1000,
        )
        hold = user.risk.hold
        user = replace(user, risk=replace(risk, hold=None))
        decision_id = decision_id_for(self.program.id, event.user_id, event.event_id)
        codes = (f"fraud.label:{verdict}", *notes)
        if hold is None or verdict not in ("confirmed", "cleared"):
            sentence = f"Recorded the analyst's label ({verdict}); no reward was on hold."
            return user, ledger, self._plain(event, user, decision_id, "none", codes, sentence)
        if verdict == "confirmed":
            sentence = f"Cancelled {hold.reward_id} held by {hold.decision_id}: fraud confirmed."
            codes = (*codes, f"hold.cancelled:{hold.decision_id}")
            return (
                user,
                ledger,
                self._plain(
                    event, user, decision_id, "blocked", codes, sentence, action=hold.reward_id
                ),
            )
        return self._release(user, ledger, event, share, hold, codes, "cleared after review")

    def _release(
        self,
        user: UserState,
        ledger: Ledger,
        event: Event,
        share: Share,
        hold: Hold,
        codes: tuple[str, ...],
        why: str,
    ) -> tuple[UserState, Ledger, Decision]:
        """Grant a held reward in ``event``'s decision, if every gate of a grant still
        lets it through (:meth:`_admit_release`); else end the hold without it."""
        decision_id = decision_id_for(self.program.id, event.user_id, event.event_id)
        user = replace(user, risk=replace(user.risk, hold=None))
        reward = self.program.reward(hold.reward_id)
        admission = self._admit_release(user, ledger, event, share, hold, reward)
        if not admission.verdict.passed:
            failed = admission.verdict
            sentence = f"Could not release {hold.reward_id} ({why}): {failed.words}."
            codes = (*codes, f"hold.not_released:{hold.decision_id}", failed.code)
            return (
                user,
                ledger,
                self._plain(event, user, decision_id, "none", codes, sentence),
            )
        decision = replace(
            self._plain(
                event,
                user,
                decision_id,
                "granted",
                (*codes, f"hold.released:{hold.decision_id}"),
                f"Released {hold.reward_id} held by {hold.decision_id}: {why}.",
                action=hold.reward_id,
            ),
            channel=admission.channel,
            value=round(hold.value, 4),
            cost=round(hold.cost, 4),
        )
        user, ledger = self._record_grant(
            user,
            ledger,
            decision_id,
            reward,
            ts=event.ts,
            channel=admission.channel,
            cost=hold.cost,
            features=hold.features,
            learn=hold.learn,
        )
        return user, ledger, decision

    def _admit_release(
        self,
        user: UserState,
        ledger: Ledger,
        event: Event,
        share: Share,
        hold: Hold,
        reward: Reward,
    ) -> checks.Admission:
        """The gates of every grant, for a held reward released at ``event``: its rules as
        they apply to the event that earned it (with the user as they are now), the
        contact policy and consent now, the budgets and stock now, at the held amounts."""
        earning = event
        if hold.earned_type is not None:
            earning = replace(
                event,
                type=hold.earned_type,
                amount=hold.earned_amount,
                currency=hold.earned_currency,
                channel=hold.earned_channel,
            )
        return checks.admit(
            self.program,
            reward,
            user,
            ledger,
            share,
            env=rule_env(user, earning),
            channel=hold.channel,
            marketing=self._consents(user)[1],
            ts=event.ts,
            bucket_ms=self.bucket_ms,
            amounts=(hold.value, hold.cost),
        )

    def _plain(
        self,
        event: Event,
        user: UserState,
        decision_id: str,
        status: DecisionStatus,
        codes: tuple[str, ...],
        sentence: str,
        *,
        action: str | None = None,
    ) -> Decision:
        return Decision(
            decision_id=decision_id,
            event_id=event.event_id,
            user_id=event.user_id,
            ts=event.ts,
            action=action,
            channel=None,
            value=0.0,
            cost=0.0,
            propensity=1.0,
            risk=0.0,
            status=status,
            reasons=codes,
            explanation=sentence,
            model_version=self.model_version,
            program=self.program.id,
            arm=self._arm_name(event.user_id),
            consent=CONSENT_STATES[self._consents(user)],
        )

    def _arm_name(self, user_id: str) -> str | None:
        arm = self.arm_of(user_id)
        return None if arm is None else arm.name

    # ------------------------------------------------------------ arbitration

    def _arbitrate(
        self,
        user: UserState,
        ledger: Ledger,
        event: Event,
        share: Share,
        *,
        risk: float = 0.0,
        arm: Arm | None = None,
    ) -> Choice:
        personalized = self._consents(user)[0]
        control = arm is not None and arm.serves == "default"
        rewards = self.rewards_for.get(event.type, ())
        if not personalized or control:
            default = self.program.non_personalized_default
            rewards = tuple(r for r in rewards if r.id == default)
        env = rule_env(user, event)
        profile = self._profile_inputs(user)
        base = event_features(user, event)
        survivors: list[Candidate] = []
        skipped: list[Skipped] = []
        counts = checks.contact_counts(user, event.ts)
        for reward in rewards:
            result = self._gate(
                reward,
                user,
                ledger,
                event,
                env,
                share,
                risk,
                scored=personalized and not control,
                counts=counts,
                profile=profile,
                base=base,
            )
            (survivors if isinstance(result, Candidate) else skipped).append(result)  # type: ignore[arg-type]
        if not personalized or control:
            chosen = survivors[0] if survivors else None
            mode = "default" if not personalized else "control"
            return Choice(chosen, 1.0, mode, tuple(survivors), tuple(skipped))
        if not survivors:
            return Choice(None, 1.0, "nothing_eligible", (), tuple(skipped))
        policy = self.policy if arm is None else self.arm_policies.get(arm.name, self.policy)
        return self._choose(event, user, survivors, skipped, policy)

    def _gate(
        self,
        reward: Reward,
        user: UserState,
        ledger: Ledger,
        event: Event,
        env: dict[str, Any],
        share: Share,
        risk: float = 0.0,
        *,
        scored: bool = True,
        counts: checks.ContactCounts | None = None,
        profile: tuple[tuple[float, ...], dict[str, float]] = ((), {}),
        base: dict[str, float],
    ) -> Candidate | Skipped:
        """``reward`` through every gate, then scored by the model, or (``scored`` False:
        the standard reward of a user without personalization, or of a control arm) given
        the program's prior: such a choice is not the model's, and its record carries no
        model score."""
        admission = checks.admit(
            self.program,
            reward,
            user,
            ledger,
            share,
            env=env,
            channel=event.channel,
            marketing=self._consents(user)[1],
            ts=event.ts,
            bucket_ms=self.bucket_ms,
            counts=counts,
        )
        if not admission.verdict.passed:
            return Skipped(reward, admission.verdict)
        channel, value, cost = admission.channel, admission.value, admission.cost
        rule_codes = admission.rule_codes
        features = reward_features(base, user, kind=reward.kind, channel=channel)
        codes, inputs = profile
        features.update(inputs)
        if scored:
            propensity = self._propensity(reward, features, user)
        else:
            propensity = self.program.learning.prior
        lever = self.program.lever_for(reward)
        # Expected value to the program: a risky user's reward may be paying a fraudster,
        # with probability ``risk``, so its cost counts against it.
        priority = propensity * value * lever - risk * cost
        return Candidate(
            reward, channel, value, cost, propensity, lever, priority, features, rule_codes, codes
        )

    def _profile_inputs(self, user: UserState) -> tuple[tuple[float, ...], dict[str, float]]:
        """The groups of the profile fields the program's models learn from, and their
        model inputs: the same for every reward of the event, worked out once."""
        fields = self.program.model_profile
        if not fields:
            return (), {}
        codes = profile_codes(user.profile, fields)
        return codes, profile_inputs(codes, fields)

    def _propensity(self, reward: Reward, features: dict[str, float], user: UserState) -> float:
        """P(user redeems ``reward`` if offered now): the model, then the user's own answers."""
        model_p = self.models.predict_one(
            reward.kind, {**features, **self.reward_indicators.get(reward.id, {})}
        )
        return personalize(model_p, user, reward.kind)

    def _choose(
        self,
        event: Event,
        user: UserState,
        survivors: list[Candidate],
        skipped: list[Skipped],
        policy: Policy,
    ) -> Choice:
        # Highest priority first; ties go to the reward listed first in the program.
        order = self.listed_order
        ranked = tuple(sorted(survivors, key=lambda c: (-c.priority, order[c.reward.id])))
        decision_id = decision_id_for(self.program.id, event.user_id, event.event_id)
        pick = policy.choose(ranked, Situation(event, user, decision_id, self.program))
        if pick.chosen is not None and pick.chosen not in ranked:
            raise ValueError(f"the policy chose {pick.chosen.reward.id}, not a gated candidate")
        return Choice(pick.chosen, pick.probability, pick.mode, ranked, tuple(skipped))

    # ------------------------------------------------------------ outcomes and learning

    def _outcome(
        self, user: UserState, event: Event
    ) -> tuple[UserState, tuple[Answer, ...], Choice]:
        offer = next((p for p in user.pending if p.decision_id == event.decision_id), None)
        if offer is None:
            return user, (), Choice(None, 1.0, "outcome_unknown_decision")
        if event.type == "reward_opened" and self.program.learning.opened == "ignore":
            return user, (), Choice(None, 1.0, "outcome_opened")
        redeemed = event.type in ("reward_redeemed", "reward_opened")
        answer = self._learn(user, offer, redeemed)
        user = close_offer(
            user, offer.decision_id, redeemed=redeemed, dismissed=event.type == "reward_dismissed"
        )
        if event.type == "reward_dismissed":
            user = self._dismissed(user, event.ts)
        mode = f"outcome_{event.type.removeprefix('reward_')}"
        return user, (answer,), Choice(None, 1.0, mode)

    def expire_offers(self, user: UserState, ts: int) -> tuple[UserState, tuple[Answer, ...]]:
        """Close the user's offers whose response window is over at ``ts`` as not redeemed,
        and learn that from each: at the user's next event, or when the partition's event
        time passes :meth:`offers_due_at` though the user sent nothing (app.timers)."""
        wait_ms = self.response_window_ms
        answers: tuple[Answer, ...] = ()
        for offer in [p for p in user.pending if p.ts + wait_ms <= ts]:
            answers += (self._learn(user, offer, redeemed=False),)
            user = close_offer(user, offer.decision_id, redeemed=False, dismissed=False)
        return user, answers

    @property
    def response_window_ms(self) -> int:
        return self.program.learning.response_window.seconds * 1000

    def offers_due_at(self, user: UserState) -> int | None:
        """When the user's first waiting offer's response window ends (None: none waits)."""
        if not user.pending:
            return None
        return min(offer.ts for offer in user.pending) + self.response_window_ms

    def _learn(self, user: UserState, offer: PendingOffer, redeemed: bool) -> Answer:
        # Users who opted out of personalization (then or now) train no model.
        if not offer.learn or not self._consents(user)[0]:
            return Answer(offer.reward_id, redeemed, None)
        features = self.offer_inputs(offer)
        predicted = self.models.predict_one(offer.kind, features)
        self.models.learn_one(offer.kind, features, redeemed)
        return Answer(offer.reward_id, redeemed, predicted)

    def offer_inputs(self, offer: PendingOffer) -> dict[str, float]:
        """What the model of the offer's kind learns from when the offer is answered: the
        features stored with it and its reward's indicators."""
        return {
            **from_vector(offer.features, self.program.model_profile),
            **self.reward_indicators.get(offer.reward_id, {}),
        }

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
        return self._record_grant(
            user,
            ledger,
            decision.decision_id,
            chosen.reward,
            ts=event.ts,
            channel=chosen.channel,
            cost=chosen.cost,
            features=as_vector(chosen.features, chosen.profile_codes, self.program.model_profile),
            learn=self._consents(user)[0],
        )

    def _record_grant(
        self,
        user: UserState,
        ledger: Ledger,
        decision_id: str,
        reward: Reward,
        *,
        ts: int,
        channel: str | None,
        cost: float,
        features: tuple[float, ...],
        learn: bool,
    ) -> tuple[UserState, Ledger]:
        """What granting ``reward`` in ``decision_id`` leaves: an offer awaiting the
        user's answer, the grant in the user's state, and its cost charged to the
        ledger. A fresh grant and a released hold both end here."""
        offer = PendingOffer(decision_id, reward.id, reward.kind, ts, features, learn)
        grant = Grant(ts, channel, cost, decision_ref(decision_id), reward.id)
        user = record_grant(user, grant, offer)
        return user, self._charge(ledger, grant)

    def _decision(
        self,
        event: Event,
        user: UserState,
        choice: Choice,
        budget_codes: tuple[str, ...],
        assessment: Assessment = NO_RISK,
        verdict: Verdict = NO_VERDICT,
        *,
        notes: tuple[str, ...] = (),
    ) -> Decision:
        chosen = choice.chosen
        reasons, sentence = explain(self, event, choice, budget_codes)
        status = verdict.status
        paid = chosen is not None and status in ("granted", "held")
        if assessment.signals or verdict.codes:
            reasons = (*reasons, *verdict.codes, *fraud_codes(assessment))
        period = self.program.fraud.new_account_pending
        if "fraud.new_account_pending" in verdict.codes and chosen is not None and period:
            sentence = (
                f"Held {chosen.reward.id} until this new account's {period.text} pending "
                f"period is over (released at its next event after that). {sentence}"
            )
        elif "hold.pending_open" in verdict.codes and chosen is not None and period:
            sentence = (
                f"No reward: this new account already has a reward waiting out its "
                f"{period.text} pending period (this event would have earned "
                f"{chosen.reward.id})."
            )
        elif status in ("held", "blocked") and chosen is not None:
            sentence = fraud_words(status, chosen.reward.id, assessment)
        elif assessment.signals and event.type in self.program.triggers:
            sentence = f"{sentence} {risk_words(assessment)}"
        if notes:
            reasons = (*reasons, *notes)
        return Decision(
            decision_id=decision_id_for(self.program.id, event.user_id, event.event_id),
            event_id=event.event_id,
            user_id=event.user_id,
            ts=event.ts,
            action=chosen.reward.id if chosen and status != "none" else None,
            channel=chosen.channel if paid and chosen else None,
            value=round(chosen.value, 4) if paid and chosen else 0.0,
            cost=round(chosen.cost, 4) if paid and chosen else 0.0,
            propensity=round(choice.probability, 6),
            risk=round(assessment.score, 4),
            status=status,
            reasons=reasons,
            explanation=sentence,
            model_version=self.model_version,
            program=self.program.id,
            hold=_hold_kind(status, verdict),
            arm=self._arm_name(event.user_id),
            consent=CONSENT_STATES[self._consents(user)],
        )


# The consent a decision was made under, by (personalization, marketing): four shared
# records, never changed, rather than a new dict per decision.
CONSENT_STATES: dict[tuple[bool, bool], dict[str, bool]] = {
    (p, m): {"personalization": p, "marketing": m} for p in (True, False) for m in (True, False)
}


def _hold_kind(status: DecisionStatus, verdict: Verdict) -> HoldKind | None:
    """Why a reward is held: the new account's pending period, or the user's risk."""
    if status != "held":
        return None
    return "pending" if "fraud.new_account_pending" in verdict.codes else "risk"


# What each identical copy of an event adds to its user's carried risk (noisy-OR).
REPEAT_WEIGHT = 0.25

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


def _reward_indicators(rewards: tuple[Reward, ...]) -> dict[str, dict[str, float]]:
    """Per reward, the inputs that tell it from the other rewards of its kind (which
    share a model): ``reward.<id>`` for each of them, 1 for this one and 0 for the
    others. All are sent every time: the models' scaler learns a feature's spread from
    the values it sees, and an indicator sent only as 1 would have none and be scaled
    to nothing. A reward alone in its kind needs none."""
    indicators: dict[str, dict[str, float]] = {}
    for reward in rewards:
        siblings = [other.id for other in rewards if other.kind == reward.kind]
        indicators[reward.id] = (
            {f"reward.{other}": float(other == reward.id) for other in siblings}
            if len(siblings) > 1
            else {}
        )
    return indicators
