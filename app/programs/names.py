"""The names a program's expressions may use: the contract with the engine.

The engine evaluates every expression against one flat mapping from these
names to values. What each name means:

- behavioural features, computed by the engine from the user's history
  (:data:`BEHAVIOURAL_FEATURES`);
- fields of the event being decided (:data:`EVENT_FIELDS`);
- the program's own ``profile_fields``, copied by the engine from the events'
  ``attributes`` into the user's profile (the latest value sent wins).

A value the engine does not have is passed as ``None`` (or left out); the
expression is then undetermined wherever it needs that value.

Protected attributes may never be profile fields nor appear in an expression,
and ``age`` may appear only in eligibility rules (legal suitability, such as
18+ for a credit card), never in how much a reward is worth or costs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BEHAVIOURAL_FEATURES = frozenset(
    {
        "events",  # events seen from the user, of any type
        "purchases",  # purchase events
        "spend",  # sum of purchase amounts
        "avg_order_value",  # spend / purchases; None before the first purchase
        "days_since_signup",  # days since the user's first event
        "days_since_last_purchase",  # None before the first purchase
        "days_since_last_reward",  # None before the first reward
        "rewards_granted",  # counts over the user's history
        "rewards_redeemed",
        "rewards_dismissed",
        "engagement_7d",  # recent activity: a count of events that halves every 7 days
        "preferred_channel",  # the channel the user uses most, e.g. "mobile"
    }
)

EVENT_FIELDS = frozenset(
    {
        "event_type",  # the event's ``type``, e.g. "purchase"
        "amount",  # None unless the event carries one
        "currency",
        "channel",
    }
)

# The only functions an expression may call.
FUNCTIONS = frozenset({"abs", "max", "min", "round"})

PROTECTED_ATTRIBUTES = frozenset(
    {
        "disability",
        "ethnicity",
        "gender",
        "health",
        "marital_status",
        "nationality",
        "political_opinion",
        "pregnancy",
        "race",
        "religion",
        "sex",
        "sexual_orientation",
        "union_membership",
    }
)

# Names allowed in eligibility rules only: deciding whether a product may be
# offered at all (a credit card needs an adult) is legal suitability; paying
# people differently by age is not.
ELIGIBILITY_ONLY = frozenset({"age"})

# Profile fields become expression names: lower-case identifiers, and never with
# a leading underscore (the evaluator's own helpers use those).
PROFILE_FIELD_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

ENGINE_NAMES = BEHAVIOURAL_FEATURES | EVENT_FIELDS


def protected_term_in(name: str) -> str | None:
    """The protected attribute ``name`` is or contains as a whole word, if any.

    Words are separated by underscores, so ``gender_code`` and ``is_pregnancy``
    are caught while ``essex_store`` is not: a renamed protected attribute is
    still a protected attribute.
    """
    words = name.lower().split("_")
    for term in sorted(PROTECTED_ATTRIBUTES):
        term_words = term.split("_")
        width = len(term_words)
        if any(words[i : i + width] == term_words for i in range(len(words) - width + 1)):
            return term
    return None


def protected(name: str, term: str) -> str:
    """How an error says that ``name`` is (or contains) the protected attribute ``term``."""
    if name == term:
        return f"{name!r} is a protected attribute"
    return f"{name!r} contains the protected attribute {term!r}"


def expression_names(profile_fields: Iterable[str]) -> frozenset[str]:
    """Every name an expression of a program with these profile fields may use."""
    return ENGINE_NAMES | frozenset(profile_fields)
