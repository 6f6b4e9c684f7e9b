"""A loaded program in a few plain lines: what ``rewardstream program check`` prints.

The loader has already refused anything wrong; this says what the file means once
defaults are filled in, so a change can be read before a worker runs it (a reward's
triggers resolved from the program's, the exploration policy, each limit).
"""

from __future__ import annotations

from app.programs.expressions import Expression
from app.programs.model import Amount, Learning, Program, Reward


def summarize(program: Program) -> str:
    """Several lines: the program, its rewards, budgets, contact limits, learning and
    experiment."""
    lines = [
        f"{program.id} ({program.name}), sha256 {program.source_sha256[:8] or 'unknown'}",
        f"  currency {program.currency}; triggers {', '.join(program.triggers)}",
        f"  rewards ({len(program.rewards)}):",
        *(f"    {_reward(reward)}" for reward in program.rewards),
        f"  budgets: {_budgets(program)}",
        f"  contact: {_contact(program)}",
        f"  learning: {_learning(program.learning)}",
    ]
    if program.non_personalized_default is not None:
        lines.append(f"  without personalization: {program.non_personalized_default}")
    if program.model_profile:
        fields = ", ".join(field.name for field in program.model_profile)
        lines.append(f"  models also learn from: {fields}")
    if program.experiment is not None:
        arms = ", ".join(
            f"{arm.name} {arm.share:.0%} ({arm.serves})" for arm in program.experiment.arms
        )
        lines.append(f"  experiment {program.experiment.id}: {arms}")
    return "\n".join(lines)


def _reward(reward: Reward) -> str:
    parts = [
        f"{reward.id}: {reward.kind}",
        f"value {_amount(reward.value)}",
        f"cost {_amount(reward.cost)}",
        f"on {', '.join(reward.triggers)}",
        f"via {', '.join(reward.channels)}",
    ]
    if reward.eligibility:
        parts.append(f"if {' and '.join(rule.name for rule in reward.eligibility)}")
    if reward.stock is not None:
        parts.append(f"stock {reward.stock}")
    if reward.lever != 1.0:
        parts.append(f"lever {reward.lever:g}")
    return "; ".join(parts)


def _amount(amount: Amount) -> str:
    return amount.source if isinstance(amount, Expression) else f"{amount:g}"


def _budgets(program: Program) -> str:
    budgets = program.budgets
    parts = []
    if budgets.total is not None:
        parts.append(f"total {budgets.total:g}")
    if budgets.per_user is not None:
        within = budgets.per_user_window.text if budgets.per_user_window else "ever"
        parts.append(f"per user {budgets.per_user:g} within {within}")
    parts += [f"{period.limit:g} per {period.window.text}" for period in budgets.periods]
    return ", ".join(parts) or "none"


def _contact(program: Program) -> str:
    contact = program.contact
    parts = []
    if contact.max_per_day is not None:
        parts.append(f"{contact.max_per_day} a day")
    if contact.max_per_week is not None:
        parts.append(f"{contact.max_per_week} a week")
    for channel, limit in sorted(contact.per_channel.items()):
        caps = [
            f"{count} a {unit}"
            for count, unit in ((limit.max_per_day, "day"), (limit.max_per_week, "week"))
            if count is not None
        ]
        parts.append(f"{channel} {' and '.join(caps)}")
    if contact.suppression is not None:
        suppression = contact.suppression
        parts.append(
            f"{suppression.dismissals} dismissals within {suppression.within.text} "
            f"suppress for {suppression.lasts.text}"
        )
    return ", ".join(parts) or "no limits"


def _learning(learning: Learning) -> str:
    policy: str = learning.exploration
    if policy == "epsilon_greedy":
        policy += f" (epsilon {learning.epsilon:g}"
        if learning.epsilon_half_after is not None:
            policy += f", halving after {learning.epsilon_half_after:g} answers"
        policy += ")"
    elif policy == "softmax":
        policy += f" (temperature {learning.temperature:g})"
    step = learning.weight_step()
    rate = f"learning rate {learning.learning_rate:g}"
    if step is not None:
        rate += f" (weights {step[0]:g} / sqrt(answers + 1), at least {step[1]:g})"
    return (
        f"{policy}, {rate}, prior {learning.prior:g}, "
        f"min priority {learning.min_priority:g}, answers within {learning.response_window.text}"
    )
