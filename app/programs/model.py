"""A reward program as frozen values: what the loader builds and the engine reads.

Nothing here validates a file; :mod:`app.programs.loader` does that once, at
start-up, and only ever builds these objects from checked input. Every class is
immutable and hashable, so a program can be shared by every worker thread and
used as a cache key.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from app.programs.expressions import Expression, Undetermined

REWARD_KINDS = (
    "points",
    "cashback",
    "discount",
    "free_shipping",
    "badge",
    "voucher",
    "gift",
    "credit_card",
    "savings_bonus",
    "other",
)
CHANNELS = ("web", "mobile", "email", "sms", "store")
# Event types that may trigger a decision: things a user does.
TRIGGER_TYPES = ("signup", "session_start", "page_view", "purchase", "referral", "survey")
# Event types that report on rewards, consent, membership or fraud; they feed learning
# and state but can never trigger a reward themselves.
NEVER_TRIGGERS = (
    "reward_opened",
    "reward_redeemed",
    "reward_dismissed",
    "consent_updated",
    "fraud_label",
    "member_imported",
    "erasure_requested",
)
OPENED_POLICIES = ("ignore", "positive")
EXPLORATIONS = ("epsilon_greedy", "uniform", "softmax")
Opened = Literal["ignore", "positive"]
Exploration = Literal["epsilon_greedy", "uniform", "softmax"]

_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable mapping: lets frozen dataclasses hold lookups by key."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._items: dict[K, V] = dict(items or {})

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        # The dict's own lookup: Mapping.get goes through __getitem__ and a KeyError.
        return self._items.get(key, default)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


@dataclass(frozen=True, slots=True)
class Window:
    """A span of time, kept with the text it was written as ("7d") for reason codes."""

    seconds: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"30m"``, ``"12h"``, ``"1d"``, ``"4w"``: a positive whole number and a unit.

        Raises ValueError saying what a duration looks like.
        """
        match = _DURATION.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a duration: write a positive whole number and a unit, "
                "s, m, h, d or w, as in '30m', '12h', '7d' or '4w'"
            )
        count, unit = match.groups()
        return cls(int(count) * _UNIT_SECONDS[unit], text)


@dataclass(frozen=True, slots=True)
class Rule:
    """A named eligibility condition; the name appears in decision reason codes."""

    name: str
    expression: Expression


# A reward's value or cost: a fixed number, or an expression over the event and
# the user's features such as ``min(0.05 * amount, 20)``.
Amount = float | Expression


def resolve_amount(amount: Amount, env: Mapping[str, object]) -> float | None:
    """The amount for this event, or ``None`` if it cannot be determined.

    ``None`` also covers an expression whose result is not a finite,
    non-negative number (``amount - 100`` on a purchase of 50): a reward is
    never worth or charged a negative or infinite amount.
    """
    if not isinstance(amount, Expression):
        return amount
    try:
        result = amount.evaluate(env)
    except Undetermined:
        return None
    if isinstance(result, bool) or not isinstance(result, int | float):
        return None
    if not math.isfinite(result) or result < 0:
        return None
    return float(result)


@dataclass(frozen=True, slots=True)
class Reward:
    """One reward the program can grant.

    ``triggers`` is already resolved: the reward's own list, or the program's.
    ``stock`` of ``None`` means unlimited. ``lever`` scales the reward's
    priority against the others (1.0 is neutral).
    """

    id: str
    kind: str
    value: Amount
    cost: Amount
    channels: tuple[str, ...]
    triggers: tuple[str, ...]
    eligibility: tuple[Rule, ...] = ()
    stock: int | None = None
    lever: float = 1.0
    description: str = ""


@dataclass(frozen=True, slots=True)
class PeriodBudget:
    """At most ``limit`` spent on rewards within any ``window``."""

    window: Window
    limit: float


@dataclass(frozen=True, slots=True)
class Budgets:
    """Spending limits, in the program's currency. ``None`` means no limit.

    ``per_user`` applies within ``per_user_window``, or over the user's whole
    history when that is ``None``.
    """

    total: float | None = None
    per_user: float | None = None
    per_user_window: Window | None = None
    periods: tuple[PeriodBudget, ...] = ()


@dataclass(frozen=True, slots=True)
class ChannelLimit:
    """How often one channel may carry a reward to the same user."""

    max_per_day: int | None = None
    max_per_week: int | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """After ``dismissals`` dismissed rewards within ``within``, offer nothing for ``lasts``."""

    dismissals: int
    within: Window
    lasts: Window


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    """How often a user may be contacted with a reward, overall and per channel."""

    max_per_day: int | None = None
    max_per_week: int | None = None
    per_channel: Mapping[str, ChannelLimit] = field(default_factory=FrozenMap)
    suppression: Suppression | None = None


@dataclass(frozen=True, slots=True)
class Learning:
    """How the engine explores and learns from the users' answers to rewards.

    ``epsilon``: share of decisions that explore a random eligible reward (for a user
    the engine knows nothing about, when ``epsilon_half_after`` is set).
    ``epsilon_half_after``: answers after which a user's exploration rate halves
    (None: it never decays); ``min_epsilon``: the floor it decays to.
    ``prior``: the response rate assumed for a reward nobody has answered yet.
    ``response_window``: how long to wait for an answer before counting none.
    ``opened``: whether an opened (not yet redeemed) reward counts as positive.
    ``learning_rate``: step size of the online models.
    ``weight_step_start``: when set, the step of a model's weights (not its intercept's)
    after its n-th answer is ``max(weight_step_floor, weight_step_start / sqrt(n + 1))``:
    bold while a reward kind has few answers, settled once it has many (None: every
    step is ``learning_rate``). ``weight_step_floor``: the smallest it falls to.
    ``min_priority``: grant nothing when the best reward scores below this.
    ``exploration``: the policy (:mod:`app.decisioning.policy`): ``epsilon_greedy``
    (the best reward, or with probability epsilon a random eligible one) or
    ``uniform`` (a random eligible reward every time: the baseline to compare with) or
    ``softmax`` (each eligible reward, and no reward, with probability proportional to
    ``exp(priority / temperature)``, no reward scoring ``min_priority``).
    ``temperature``: for ``softmax``, in priority units: how far below the best a reward
    may score and still be tried often.
    """

    epsilon: float = 0.1
    epsilon_half_after: float | None = None
    min_epsilon: float = 0.0
    prior: float = 0.1
    response_window: Window = Window(3 * 86_400, "3d")
    opened: Opened = "ignore"
    learning_rate: float = 0.05
    weight_step_start: float | None = None
    weight_step_floor: float | None = None  # None: learning_rate
    min_priority: float = 0.0
    exploration: Exploration = "epsilon_greedy"
    temperature: float = 0.1

    def weight_step(self) -> tuple[float, float] | None:
        """(start, floor) of the weights' decaying step, or None for a constant step."""
        if self.weight_step_start is None:
            return None
        floor = self.learning_rate if self.weight_step_floor is None else self.weight_step_floor
        return self.weight_step_start, floor

    def epsilon_for(self, answers: int) -> float:
        """Exploration rate for a user who has answered ``answers`` offers."""
        if self.epsilon_half_after is None:
            return self.epsilon
        decayed = self.epsilon / (1.0 + answers / self.epsilon_half_after)
        return max(self.min_epsilon, decayed)


@dataclass(frozen=True, slots=True)
class Fraud:
    """How fraud risk (0-1, see :mod:`app.fraud`) changes what the engine does.

    ``alert``: publish a fraud alert for an event whose own signals score this much.
    ``hold``: a reward chosen for a user this risky is held for review, not granted.
    ``block``: at or above this, the reward is refused.
    ``hold_for``: a hold no analyst labelled within this time is cancelled.
    ``cleared_for``: after a ``cleared`` label, how long the user's shared-device
    and shared-network signals are ignored (a household, an office).
    ``new_account_pending``: when set, the first reward with a cost that an account
    earns within this time of its first event is held until the period is over
    (released at the user's next event after it, unless the user turned risky); the
    account earns no other reward meanwhile. None: no pending period.
    ``enabled``: False turns risk off (no scores, risk holds, blocks or alerts) and
    keeps the pending period, which is a separate defence: a program without fraud
    scoring may still want new accounts' first rewards to wait.
    """

    alert: float = 0.5
    hold: float = 0.6
    block: float = 0.85
    hold_for: Window = Window(7 * 86_400, "7d")
    cleared_for: Window = Window(30 * 86_400, "30d")
    new_account_pending: Window | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Consent:
    """What a user who never sent a consent event is taken to have agreed to."""

    personalization: bool = True
    marketing: bool = False


# The audit group of a user whose value is not one of the program's audit groups, and of
# a user with no value at all: with the listed groups, the only values the label takes.
AUDIT_OTHER = "other"
AUDIT_UNKNOWN = "unknown"
# The four-fifths rule of US employment-selection guidelines (29 CFR 1607.4 D): a group
# selected at under 80% of the best-served group's rate is evidence of adverse impact.
DEFAULT_AUDIT_MIN_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class Audit:
    """A fairness audit: decisions counted by the value of one profile field.

    Only observed (the ``rewardstream_audit_decisions_total`` metric), never used to
    decide. ``groups`` are the values counted under their own name; any other value
    counts as ``other`` and a user without one as ``unknown``, so the metric has a
    small, fixed set of labels whatever users send. ``min_ratio``: the lowest ratio of
    a group's grant rate to the best-served group's that the program accepts; below
    it ``rewardstream whatif`` fails and the live disparity alert fires
    (docs/fairness.md).
    """

    group_by: str
    groups: tuple[str, ...]
    min_ratio: float = DEFAULT_AUDIT_MIN_RATIO

    def group_of(self, profile: Mapping[str, object]) -> str:
        value = profile.get(self.group_by)
        if value is None:
            return AUDIT_UNKNOWN
        return value if isinstance(value, str) and value in self.groups else AUDIT_OTHER


Serves = Literal["program", "default", "nothing"]
SERVES: tuple[Serves, ...] = ("program", "default", "nothing")
# Where an experiment's hash of a user id falls, in [0, 1): 64 bits of it.
_HASH_SPAN = float(2**64)


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an experiment: its share of the users and what they get.

    ``serves``: ``program`` (the program's choice, with ``learning`` instead of the
    program's when the arm is a variant), ``default`` (a control: the program's
    ``non_personalized_default`` reward where it is eligible, else nothing) or
    ``nothing`` (a holdout: no reward at all).
    """

    name: str
    share: float
    serves: Serves = "program"
    learning: Learning | None = None


@dataclass(frozen=True, slots=True)
class Experiment:
    """Users split into arms by a salted hash of their id: a user stays in one arm
    across restarts, rebalances and replays, and changing ``id`` (the salt) draws a new
    split. Budgets and stock are split between the arms by their shares."""

    id: str
    arms: tuple[Arm, ...]

    def arm_for(self, user_id: str) -> Arm:
        """The arm ``user_id`` is in."""
        digest = hashlib.blake2b(f"{self.id}:{user_id}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / _HASH_SPAN
        bound = 0.0
        for arm in self.arms:
            bound += arm.share
            if point < bound:
                return arm
        return self.arms[-1]  # shares sum to 1 up to rounding: the last arm takes the rest


@dataclass(frozen=True, slots=True)
class ModelProfileField:
    """A profile field the propensity models may learn from, as a few named groups.

    ``bands``: for a number, the ascending bounds of its bands (``[25, 35]`` makes
    ``<25``, ``25-35`` and ``>=35``); ``values``: for text, the values it may take,
    anything else falling in ``other``. Exactly one of the two is set, so a model's
    inputs stay few and known whatever values producers send.
    """

    name: str
    bands: tuple[float, ...] = ()
    values: tuple[str, ...] = ()

    @property
    def groups(self) -> tuple[str, ...]:
        """The labels of this field's groups, in order (a group's index is its code):
        ``lt25``, ``25-35``, ``ge35`` for bands; the values and ``other`` for text."""
        if self.bands:
            edges = [f"{bound:g}" for bound in self.bands]
            inner = [f"{low}-{high}" for low, high in itertools.pairwise(edges)]
            return (f"lt{edges[0]}", *inner, f"ge{edges[-1]}")
        return (*self.values, "other")

    def inputs(self) -> tuple[str, ...]:
        """The model input of each group, by code: ``profile_<field>.<group>``."""
        return tuple(f"profile_{self.name}.{group}" for group in self.groups)

    def code(self, value: object) -> int | None:
        """The index of the group ``value`` falls in; None for no value or the wrong type."""
        if value is None:
            return None
        if self.bands:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            if not math.isfinite(value):
                return None
            return sum(1 for bound in self.bands if value >= bound)
        text = value if isinstance(value, str) else None
        if text is None:
            return None
        try:
            return self.values.index(text)
        except ValueError:
            return len(self.values)


@dataclass(frozen=True, slots=True)
class Program:
    """A whole reward program, validated. ``source_sha256`` versions decisions."""

    id: str
    name: str
    currency: str
    triggers: tuple[str, ...]
    rewards: tuple[Reward, ...]
    budgets: Budgets = Budgets()
    contact: ContactPolicy = ContactPolicy()
    levers: Mapping[str, float] = field(default_factory=FrozenMap)
    consent_defaults: Consent = Consent()
    marketing_channels: tuple[str, ...] = ("email", "sms")
    non_personalized_default: str | None = None
    profile_fields: tuple[str, ...] = ()
    model_profile: tuple[ModelProfileField, ...] = ()
    learning: Learning = Learning()
    fraud: Fraud = Fraud()
    audit: Audit | None = None
    experiment: Experiment | None = None
    source_sha256: str = ""

    def reward(self, reward_id: str) -> Reward:
        """The reward with this id; KeyError if the program has none."""
        for reward in self.rewards:
            if reward.id == reward_id:
                return reward
        raise KeyError(f"program {self.id!r} has no reward {reward_id!r}")

    def lever_for(self, reward: Reward) -> float:
        """The reward's own lever times the lever of its kind."""
        return reward.lever * self.levers.get(reward.kind, 1.0)
