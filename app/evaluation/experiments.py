"""An experiment's arms read back from the decision log: per arm, users, decisions,
grants, redemptions and cost, the lift against the control arm with a confidence
interval, and a sample-ratio-mismatch (SRM) test.

The unit of an experiment is the user (arms are drawn per user: app.programs'
``Experiment.arm_for``), so the lift compares redemptions per user between arms, with
Welch's interval on the difference of two means (users are independent; a user's
decisions are not). The SRM test is Pearson's chi-square of the users each arm got
against the program's split: a split that drifts from the one intended (a producer
that loses one arm's events, a bug in assignment) biases every comparison, and
experiment platforms stop reading results at p < 0.001. A passing test says little
about a small experiment, so the report also states the loss of each arm's users the
test would flag in half of such experiments at the users counted (its power: a 3% loss
of a 90% arm needs about 130,000 users, docs/decisions.md §48).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

from app.programs import Experiment

# Experiment platforms alarm at this p-value of the sample-ratio test.
SRM_ALARM_P = 0.001
# The report states the loss of an arm's users the test flags with this probability.
DETECTION_POWER = 0.5
REDEEMED = "reward_redeemed"


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square with ``df`` degrees of freedom: the regularised
    upper incomplete gamma Q(df/2, statistic/2), by its series below a + 1 and its
    continued fraction above (Numerical Recipes' gammq)."""
    if df < 1:
        raise ValueError("the chi-square test needs at least one degree of freedom")
    if statistic <= 0.0:
        return 1.0
    a, x = df / 2.0, statistic / 2.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_critical(p: float, df: int) -> float:
    """The statistic at which :func:`chi2_sf` falls to ``p`` (by bisection)."""
    low, high = 0.0, 1.0
    while chi2_sf(high, df) > p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if chi2_sf(middle, df) > p:
            low = middle
        else:
            high = middle
    return high


def noncentral_chi2_sf(statistic: float, df: int, noncentrality: float) -> float:
    """P(X >= statistic) for X noncentral chi-square with ``df`` degrees of freedom: a
    Poisson(noncentrality / 2) mixture of central chi-squares with df + 2k degrees."""
    half = noncentrality / 2.0
    if half <= 0.0:
        return chi2_sf(statistic, df)
    # The Poisson weights from the start to well past their mode (10 deviations).
    last = int(half + 10.0 * math.sqrt(half) + 20.0)
    total = 0.0
    for k in range(last + 1):
        weight = math.exp(-half + k * math.log(half) - math.lgamma(k + 1.0))
        total += weight * chi2_sf(statistic, df + 2 * k)
    return min(1.0, total)


def _noncentrality_for_power(df: int, power: float) -> float:
    """The noncentrality at which the test at :data:`SRM_ALARM_P` alarms with ``power``."""
    critical = chi2_critical(SRM_ALARM_P, df)
    low, high = 0.0, 1.0
    while noncentral_chi2_sf(critical, df, high) < power:
        high *= 2.0
    for _ in range(60):
        middle = (low + high) / 2.0
        if noncentral_chi2_sf(critical, df, middle) < power:
            low = middle
        else:
            high = middle
    return high


def _loss_noncentrality(users: int, shares: Mapping[str, float], arm: str, lost: float) -> float:
    """The chi-square's noncentrality among ``users`` users when ``arm`` has lost the
    share ``lost`` of its users and the other arms none."""
    left = 1.0 - shares[arm] * lost  # of the users, what the loss leaves
    total = 0.0
    for name, share in shares.items():
        kept = share * (1.0 - lost) if name == arm else share
        total += (kept / left - share) ** 2 / share
    return users * total


def loss_flag_probability(users: int, shares: Mapping[str, float], arm: str, lost: float) -> float:
    """The probability that the SRM test flags the loss of the share ``lost`` of
    ``arm``'s users among ``users`` users (its power against that loss)."""
    df = max(1, len(shares) - 1)
    noncentrality = _loss_noncentrality(users, shares, arm, lost)
    return noncentral_chi2_sf(chi2_critical(SRM_ALARM_P, df), df, noncentrality)


def detectable_losses(
    users: int, shares: Mapping[str, float], power: float = DETECTION_POWER
) -> dict[str, float | None]:
    """Per arm, the share of its users whose loss (the other arms' kept) the SRM test
    flags with probability ``power`` among ``users`` users; None when not even losing
    the whole arm would be flagged that often."""
    if not shares:
        return {}
    needed = _noncentrality_for_power(max(1, len(shares) - 1), power)
    found: dict[str, float | None] = {}
    for arm in shares:
        if _loss_noncentrality(users, shares, arm, 1.0) < needed:
            found[arm] = None
            continue
        low, high = 0.0, 1.0
        for _ in range(60):
            middle = (low + high) / 2.0
            if _loss_noncentrality(users, shares, arm, middle) < needed:
                low = middle
            else:
                high = middle
        found[arm] = high
    return found


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The SRM test: the chi-square statistic, its p-value, and the arm out of line (the
    one furthest short of its share), named when p is under the alarm; and per arm, the
    loss of its users the test flags in half of such experiments at these users (None:
    not even the whole arm)."""

    statistic: float
    p_value: float
    worst_arm: str
    mismatch: bool
    detectable_loss: dict[str, float | None]


def sample_ratio(users: Mapping[str, int], experiment: Experiment) -> SampleRatio:
    """Pearson's chi-square of the users per arm against the arms' shares."""
    total = sum(users.get(arm.name, 0) for arm in experiment.arms)
    if total == 0:
        raise ValueError("no users in any arm: nothing to test")
    statistic, ranked = 0.0, []
    for arm in experiment.arms:
        expected = total * arm.share
        observed = users.get(arm.name, 0)
        statistic += (observed - expected) ** 2 / expected
        # Losing an arm's users is the usual cause (its events dropped on the way), gaining
        # them is not, so the arm named is the one furthest short of its share, relative to
        # it. Not the largest standardised residual: with a 10% holdout, 3% of the other
        # arm's users lost leaves the holdout's residual three times the other's (the same
        # surplus over a smaller expected count), and it would be named for the loss.
        ranked.append((round((observed - expected) / expected, 12), arm.name))
    worst = min(ranked)[1]
    p = chi2_sf(statistic, len(experiment.arms) - 1)
    shares = {arm.name: arm.share for arm in experiment.arms}
    return SampleRatio(statistic, p, worst, p < SRM_ALARM_P, detectable_losses(total, shares))


@dataclass(frozen=True, slots=True)
class Lift:
    """An arm's redemptions per user minus the baseline arm's (the control arm, else the
    holdout), with its interval, and the same as a ratio to the baseline's (None when
    the baseline redeemed nothing)."""

    difference: float
    low: float
    high: float
    relative: float | None


@dataclass(frozen=True, slots=True)
class ArmFigures:
    arm: str
    serves: str
    share: float
    users: int
    decisions: int
    grants: int
    redemptions: int
    cost: float
    redemptions_per_user: float
    cost_per_redemption: float | None
    lift: Lift | None  # None for the control arm itself, or without one


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    control: str | None
    arms: tuple[ArmFigures, ...]
    sample_ratio: SampleRatio


def report(
    experiment: Experiment,
    decisions: Iterable[Mapping[str, object]],
    events: Iterable[Mapping[str, object]] = (),
    *,
    level: float = 0.95,
) -> ExperimentReport:
    """The experiment's figures from its ``decisions`` (records of the decisions topic)
    and the ``events`` that answered them (``reward_redeemed`` naming a decision)."""
    redeemed = {
        str(e["decision_id"])
        for e in events
        if e.get("type") == REDEEMED and isinstance(e.get("decision_id"), str)
    }
    arms = {arm.name: arm for arm in experiment.arms}
    users: dict[str, set[str]] = defaultdict(set)
    per_user: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for decision in decisions:
        arm = decision.get("arm")
        if decision.get("kind", "decision") != "decision" or arm not in arms:
            continue
        name, user = str(arm), str(decision["user_id"])
        users[name].add(user)
        figures = counts[name]
        figures[0] += 1
        if decision.get("status") == "granted":
            figures[1] += 1
            figures[3] += float(decision.get("cost") or 0.0)  # type: ignore[arg-type]
            if decision.get("decision_id") in redeemed:
                figures[2] += 1
                per_user[name][user] += 1
    # The baseline: the control arm (the standard reward), else the holdout (nothing).
    control = next((a.name for a in experiment.arms if a.serves == "default"), None)
    if control is None:
        control = next((a.name for a in experiment.arms if a.serves == "nothing"), None)
    outcomes = {name: [per_user[name].get(user, 0) for user in users[name]] for name in arms}
    rows = []
    for arm in experiment.arms:
        decided, grants, redemptions, cost = counts[arm.name]
        n = len(users[arm.name])
        lift = None
        if control is not None and arm.name != control:
            lift = _lift(outcomes[arm.name], outcomes[control], level)
        rows.append(
            ArmFigures(
                arm=arm.name,
                serves=arm.serves,
                share=arm.share,
                users=n,
                decisions=int(decided),
                grants=int(grants),
                redemptions=int(redemptions),
                cost=round(cost, 4),
                redemptions_per_user=redemptions / n if n else 0.0,
                cost_per_redemption=cost / redemptions if redemptions else None,
                lift=lift,
            )
        )
    ratio = sample_ratio({name: len(found) for name, found in users.items()}, experiment)
    return ExperimentReport(experiment.id, control, tuple(rows), ratio)


def _lift(arm: list[int], control: list[int], level: float) -> Lift | None:
    """Welch's interval on the difference of the mean redemptions per user."""
    if len(arm) < 2 or len(control) < 2:
        return None
    mean_a, mean_c = sum(arm) / len(arm), sum(control) / len(control)
    var_a = sum((x - mean_a) ** 2 for x in arm) / (len(arm) - 1)
    var_c = sum((x - mean_c) ** 2 for x in control) / (len(control) - 1)
    error = math.sqrt(var_a / len(arm) + var_c / len(control))
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    difference = mean_a - mean_c
    relative = difference / mean_c if mean_c > 0 else None
    return Lift(difference, difference - z * error, difference + z * error, relative)


def render(found: ExperimentReport) -> str:
    """The report as a table a person reads."""
    lines = [
        f"Experiment {found.experiment}"
        + (f", lift against arm {found.control}" if found.control else ", no control arm"),
        "",
        f"{'arm':<14} {'serves':<8} {'share':>6} {'users':>8} {'decisions':>10} {'grants':>8} "
        f"{'redeemed':>9} {'per user':>9} {'cost/red.':>10}  lift per user (95%)",
    ]
    for arm in found.arms:
        cost = "-" if arm.cost_per_redemption is None else f"{arm.cost_per_redemption:.2f}"
        if arm.lift is None:
            lift = "-" if arm.arm != found.control else "(control)"
        else:
            relative = "" if arm.lift.relative is None else f", {arm.lift.relative:+.1%}"
            lift = (
                f"{arm.lift.difference:+.4f} [{arm.lift.low:+.4f}, {arm.lift.high:+.4f}]{relative}"
            )
        lines.append(
            f"{arm.arm:<14} {arm.serves:<8} {arm.share:>6.1%} {arm.users:>8,} "
            f"{arm.decisions:>10,} {arm.grants:>8,} {arm.redemptions:>9,} "
            f"{arm.redemptions_per_user:>9.4f} {cost:>10}  {lift}"
        )
    ratio = found.sample_ratio
    verdict = (
        f"SAMPLE RATIO MISMATCH: arm {ratio.worst_arm} is out of line; do not read the lift"
        if ratio.mismatch
        else "the split matches the program's shares"
    )
    losses = ", ".join(
        f"arm {arm}: {'not even all of it' if lost is None else f'{lost:.1%}'}"
        for arm, lost in ratio.detectable_loss.items()
    )
    users = sum(arm.users for arm in found.arms)
    lines += [
        "",
        f"Sample ratio: chi-square {ratio.statistic:.2f}, p = {ratio.p_value:.3g} "
        f"(alarm under {SRM_ALARM_P}): {verdict}.",
        f"At {users:,} users the test flags, in half of such experiments, the loss of this "
        f"share of one arm's users ({losses}); a smaller loss passes unseen.",
    ]
    return "\n".join(lines)
