"""Reason codes in words, for the page: why not each reward, and what a hold rests on.

A decision names every reward it passed over as ``skip.<reward>:<code>`` (docs/contract.md,
the decision record); these functions read those codes back. Codes are open-ended
(new ones can appear at any time), so an unknown code is shown as it is, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SKIP_PREFIX = "skip."
# What ends a hold, each followed by the held decision's id: a later decision of the
# same user that carries one of these closes the hold it names.
HOLD_ENDINGS = ("hold.released:", "hold.cancelled:", "hold.expired:", "hold.not_released:")

_FIXED_WORDS = {
    "contact.daily_limit": "the daily contact limit is reached",
    "contact.weekly_limit": "the weekly contact limit is reached",
    "contact.suppressed": "suppressed after repeated dismissals",
    "consent.marketing": "only marketing channels, and no marketing consent",
    "budget.total:exhausted": "the program's budget is spent",
    "budget.per_user:exhausted": "the user's budget is spent",
    "stock:exhausted": "out of stock",
    "value:unknown": "its value is unknown",
    "fraud.hold_open": "another reward of the user's is on hold",
}


def code_words(code: str) -> str:
    """One gate's refusal code as words (the code itself when it is not a known one)."""
    if code in _FIXED_WORDS:
        return _FIXED_WORDS[code]
    kind, _, rest = code.partition(".")
    name, _, verdict = rest.rpartition(":")
    if kind == "rule" and verdict == "failed":
        return f"rule {name} failed"
    if kind == "rule" and name:
        return f"rule {name} could not be checked"
    if kind == "budget" and verdict == "exhausted":
        return f"the {name} budget is spent"
    if kind == "contact":
        return f"contact limit: {rest.replace('_', ' ')}"
    if kind == "consent":
        return f"no {rest} consent"
    return code


def why_not(reasons: Iterable[str]) -> list[dict[str, str]]:
    """Each reward a decision passed over: ``reward``, the gate's ``code`` and ``words``."""
    found = []
    for reason in reasons:
        if reason.startswith(SKIP_PREFIX):
            reward, _, code = reason.removeprefix(SKIP_PREFIX).partition(":")
            found.append({"reward": reward, "code": code, "words": code_words(code)})
    return found


def risk_factors(reasons: Iterable[str]) -> list[str]:
    """The fraud signals a decision names (``fraud.<signal>``), strongest first, without
    the risk figure and the verdict codes."""
    verdicts = ("fraud.risk:", "fraud.held", "fraud.blocked", "fraud.label:", "fraud.hold_open")
    return [
        reason.removeprefix("fraud.")
        for reason in reasons
        if reason.startswith("fraud.") and not reason.startswith(verdicts)
    ]


def hold_ended(reasons: Iterable[str]) -> str | None:
    """The held decision id a decision ends (released, cancelled, expired or refused at
    release), or None."""
    for reason in reasons:
        for ending in HOLD_ENDINGS:
            if reason.startswith(ending):
                return reason.removeprefix(ending)
    return None


def budgets_left(reasons: Iterable[str]) -> dict[str, float]:
    """What a granted decision says is left of each budget and stock once it is paid
    (``budget.<name>_left:<amount>``, ``stock.<reward>_left:<n>``): partition shares."""
    left: dict[str, float] = {}
    for reason in reasons:
        name, _, amount = reason.partition("_left:")
        if amount and name.startswith(("budget.", "stock.")):
            try:
                left[name] = float(amount)
            except ValueError:
                continue
    return left


def annotate(decision: dict[str, Any]) -> dict[str, Any]:
    """A decision as the user view shows it: the record plus its reasons read back."""
    reasons = decision.get("reasons") or []
    return {
        **decision,
        "why_not": why_not(reasons),
        "risk_factors": risk_factors(reasons),
        "budgets_left": budgets_left(reasons),
    }
