"""A shadow program: a challenger that decides every event beside the live program.

Pega calls it a shadow (or challenger) strategy; teams use it to see what another
program would have done on the very traffic the live one serves, before it serves
anyone. Here the shadow is a second :class:`~app.decisioning.engine.Engine` with its
own program, its own models, and its own user-state and ledger tables, so that:

- **It grants nothing.** Its decisions go to the ``shadow-decisions`` topic only, with
  ``kind: shadow_decision`` and the shadow program's id, so their ids
  (``decision_id_for(shadow program, user, event)``) are never a live decision's.
  An answer naming a shadow decision id reaches the live engine as an answer to a
  decision that user never had, and its fraud layer treats it as such.
- **It spends no budget.** It counts what it would have spent in its own ledger, split
  by partition like the live one, so its budgets run out when they would have.
- **It sends no fraud verdicts.** Its fraud alerts and related-account notes are
  dropped; it reads the same link facts the live decision was given.
- **The live decisions do not change.** The live engine never sees the shadow's state,
  models or random draws; a shadow that fails costs a counted failure, never the live
  decision (tested byte for byte).

What it learns: the users saw only what the live program granted. A shadow's offer
learns from an answer only when the live program granted the same reward at the same
event (the answer then says what the user did with that reward); its other offers
are marked not to learn, so they neither teach it that an unseen reward was refused
nor count answers the user never gave. An answer to a live decision reaches the
shadow only in the first case, translated to the shadow's own decision id; the
shadow gives no decision for other answers. Its held rewards, released later, learn
nothing. Offline evaluation (``rewardstream evaluate --shadow``) values its choices
on the live answers instead, which does not depend on what it learned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson
from msgspec.structs import replace

from app.contract.records import Decision, Event, decision_id_for
from app.decisioning.engine import Engine
from app.decisioning.ledger import Ledger, ledger_key
from app.decisioning.policy import (
    Action,
    Candidate,
    Pick,
    Policy,
    Situation,
    choice_probabilities,
)
from app.features.state import PendingOffer, UserState
from app.fraud.links import LinkFacts

log = logging.getLogger(__name__)

SHADOW_KIND = "shadow_decision"
# Answers: the events that name a decision and report what its user did.
ANSWER_TYPES = frozenset({"reward_opened", "reward_redeemed", "reward_dismissed"})


T = TypeVar("T")


class Rows(Protocol[T]):
    """What the shadow needs of a table's rows (app.pipeline.OpenRows)."""

    def get(self, key: bytes) -> T: ...

    def put(self, key: bytes, value: T) -> None: ...


@dataclass(frozen=True, slots=True)
class LiveFacts:
    """What the live engine did with the event, as far as the shadow may know it."""

    decision: Decision
    # The reward of the live offer an answer event named (None: not an answer to a
    # live grant the live engine still knew).
    answered_reward: str | None = None


class NotingChoices:
    """A policy that chooses as ``inner`` does and notes the reward it chose for the
    decision at hand: a decision record names no reward when its verdict paid none
    (a new account's second reward, a budget run out), but valuing a shadow on the live
    log needs what its policy chose, as the live log's replay has it."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.noted: tuple[str, str | None] | None = None  # (decision id, reward id)

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        pick = self.inner.choose(candidates, situation)
        chosen = None if pick.chosen is None else pick.chosen.reward.id
        self.noted = (situation.decision_id, chosen)
        return pick

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        return choice_probabilities(self.inner, candidates, situation)


@dataclass(frozen=True, slots=True)
class ShadowDecision:
    """A shadow's decision, and the reward its policy chose at this event (whatever the
    verdict did with it; the reward paid when no policy chose, as for a release)."""

    decision: Decision
    chosen: str | None

    def to_json(self) -> bytes:
        # The decision's own JSON with one more field: the decision record's writer
        # stays the one every record uses.
        return self.decision.to_json()[:-1] + b',"chosen":' + orjson.dumps(self.chosen) + b"}"


class Shadow:
    """Decides each event as ``engine``'s program would have, beside the live one."""

    def __init__(
        self,
        engine: Engine,
        *,
        live_program_id: str,
        expired: Callable[[int | None, int], bool],
        count: Callable[[str], None],
    ) -> None:
        """``expired(last_ts, ts)``: whether a user silent since ``last_ts`` is forgotten
        at ``ts`` (the live pipeline's time to live); ``count(status)``: called once per
        shadow decision with its status, and with ``"failed"`` for each failure."""
        if engine.program.id == live_program_id:
            raise ValueError(
                f"the shadow program has the live program's id {live_program_id!r}: give it "
                "an id of its own (its decision ids, ledger and checkpoints are named by it)"
            )
        self.engine = engine
        # What the shadow's policy chose, noted at each choice (see NotingChoices).
        self.noting = NotingChoices(engine.policy)
        engine.policy = self.noting
        self.live_program_id = live_program_id
        self.expired = expired
        self.count = count

    @property
    def program_id(self) -> str:
        return self.engine.program.id

    def decide(
        self,
        users: Rows[UserState],
        ledgers: Rows[Ledger],
        partition: int,
        event: Event,
        links: tuple[LinkFacts, ...],
        live: LiveFacts,
    ) -> ShadowDecision | None:
        """The shadow's decision on ``event`` (None when it gives none), its state kept
        in ``users`` and ``ledgers``. Never raises: a failure is logged and counted."""
        try:
            return self._decide(users, ledgers, partition, event, links, live)
        except Exception:  # the live decision must not depend on the shadow
            log.exception("shadow.failed program=%s event=%s", self.program_id, event.event_id)
            self.count("failed")
            return None

    def _decide(
        self,
        users: Rows[UserState],
        ledgers: Rows[Ledger],
        partition: int,
        event: Event,
        links: tuple[LinkFacts, ...],
        live: LiveFacts,
    ) -> ShadowDecision | None:
        user_key = event.user_id.encode()
        user = users.get(user_key)
        if self.expired(user.last_ts, event.ts):
            user = UserState()
        if event.type in ANSWER_TYPES:
            translated = self._answer(user, event, live.answered_reward)
            if translated is None:
                return None
            event = translated
        engine = self.engine
        arm = engine.arm_of(event.user_id)
        key = ledger_key(engine.program.id, partition, None if arm is None else arm.name)
        ledger = ledgers.get(key)
        self.noting.noted = None
        outcome = engine.process(user, ledger, event, partition=partition, links=links)
        if outcome.duplicate:
            return None
        decision = outcome.records[0]
        assert isinstance(decision, Decision)
        after = self._unseen_offers_unlearned(user, outcome.user, live.decision)
        if after is not user:
            users.put(user_key, after)
        if outcome.ledger is not ledger:
            ledgers.put(key, outcome.ledger)
        self.count(decision.status)
        noted = self.noting.noted
        chosen = noted[1] if noted and noted[0] == decision.decision_id else decision.action
        return ShadowDecision(replace(decision, kind=SHADOW_KIND), chosen)

    def _answer(self, user: UserState, event: Event, reward: str | None) -> Event | None:
        """``event`` (an answer to a live decision) as an answer to the shadow's offer at
        the same event, if the shadow offered the reward the user answered about."""
        if reward is None or event.decision_id is None:
            return None
        for seen in user.recent_event_ids:
            if decision_id_for(self.live_program_id, event.user_id, seen) != event.decision_id:
                continue
            own = decision_id_for(self.program_id, event.user_id, seen)
            offer = next((p for p in user.pending if p.decision_id == own), None)
            if offer is None or offer.reward_id != reward:
                return None
            return replace(event, decision_id=own)
        return None

    @staticmethod
    def _unseen_offers_unlearned(before: UserState, after: UserState, live: Decision) -> UserState:
        """``after`` with every offer this event opened marked not to learn, unless the
        live program granted the same reward at the same event (the user saw it)."""
        known = {p.decision_id for p in before.pending}

        def keeps(offer: PendingOffer) -> bool:
            seen = live.status == "granted" and offer.reward_id == live.action
            return offer.decision_id in known or not offer.learn or seen

        if all(keeps(p) for p in after.pending):
            return after
        pending = tuple(p if keeps(p) else replace(p, learn=False) for p in after.pending)
        return replace(after, pending=pending)
