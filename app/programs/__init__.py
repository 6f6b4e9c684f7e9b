"""Reward programs: declarative YAML files, checked once at start-up into frozen values.

A program says which rewards exist, who may get them (eligibility rules in a
small, safe expression language), what they are worth and cost, and the
budgets, stock, contact and consent limits around them. A bad file fails at
load with a :class:`ProgramError` naming the file, the place and the problem;
the engine only ever sees a valid :class:`Program`.

- :mod:`app.programs.loader`: ``load_program(path)``, ``load_builtin(id)``,
  ``list_builtin()``; the shipped programs are package data in ``app/programs/shipped/``,
  documented in its ``README.md``.
- :mod:`app.programs.model`: ``Program``, ``Reward`` and the rest, plus
  ``resolve_amount`` for a value or cost.
- :mod:`app.programs.expressions`: ``compile_expression``, ``Expression``,
  ``evaluate_rule``, ``Undetermined`` (a value the rule needs is missing) and
  ``ValueKind`` (what a name holds, so a comparison it never satisfies is refused).
- :mod:`app.programs.names`: the names rules may use, and the protected
  attributes they may not.
- :mod:`app.programs.errors`: ``ProgramError``.
- :mod:`app.programs.summary`: ``summarize``, a loaded program in plain lines
  (``rewardstream program check``).
"""

from app.programs.errors import ProgramError
from app.programs.expressions import (
    Expression,
    Undetermined,
    ValueKind,
    compile_expression,
    evaluate_rule,
)
from app.programs.loader import list_builtin, load_builtin, load_program
from app.programs.model import (
    CHANNELS,
    NEVER_TRIGGERS,
    REWARD_KINDS,
    TRIGGER_TYPES,
    Amount,
    Arm,
    Audit,
    Budgets,
    ChannelLimit,
    Consent,
    ContactPolicy,
    Experiment,
    Fraud,
    FrozenMap,
    Learning,
    ModelProfileField,
    PeriodBudget,
    Program,
    Reward,
    Rule,
    Suppression,
    Window,
    resolve_amount,
)

__all__ = [
    "CHANNELS",
    "NEVER_TRIGGERS",
    "REWARD_KINDS",
    "TRIGGER_TYPES",
    "Amount",
    "Arm",
    "Audit",
    "Budgets",
    "ChannelLimit",
    "Consent",
    "ContactPolicy",
    "Experiment",
    "Expression",
    "Fraud",
    "FrozenMap",
    "Learning",
    "ModelProfileField",
    "PeriodBudget",
    "Program",
    "ProgramError",
    "Reward",
    "Rule",
    "Suppression",
    "Undetermined",
    "ValueKind",
    "Window",
    "compile_expression",
    "evaluate_rule",
    "list_builtin",
    "load_builtin",
    "load_program",
    "resolve_amount",
]
