"""Reading a program file into a :class:`~app.programs.model.Program`, once, at start-up.

Everything a program file can get wrong is found here and reported as a
:class:`ProgramError` naming the file, the line, the place inside the file
(``rewards[2] 'credit-card' → eligibility 'adult'``) and the problem. Unknown
keys are errors with a "did you mean", so a typo never silently falls back to a
default. Shipped programs are package data in ``app/programs/shipped/``, so an installed
wheel has them as a checkout does.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.programs.errors import ProgramError, did_you_mean, one_of
from app.programs.expressions import Expression, Undetermined, ValueKind, compile_expression
from app.programs.model import (
    AUDIT_OTHER,
    AUDIT_UNKNOWN,
    CHANNELS,
    DEFAULT_AUDIT_MIN_RATIO,
    EXPLORATIONS,
    NEVER_TRIGGERS,
    OPENED_POLICIES,
    REWARD_KINDS,
    SERVES,
    TRIGGER_TYPES,
    Amount,
    Arm,
    Audit,
    Budgets,
    ChannelLimit,
    Consent,
    ContactPolicy,
    Experiment,
    Exploration,
    Fraud,
    FrozenMap,
    Learning,
    ModelProfileField,
    Opened,
    PeriodBudget,
    Program,
    Reward,
    Rule,
    Serves,
    Suppression,
    Window,
)
from app.programs.names import (
    ELIGIBILITY_ONLY,
    ENGINE_NAMES,
    FUNCTIONS,
    PROFILE_FIELD_PATTERN,
    expression_names,
    protected,
    protected_term_in,
)

# The shipped programs: files next to this module, declared as package data in
# pyproject.toml, so they are installed with the package (wheels install unzipped).
BUILTIN_DIR = Path(__file__).with_name("shipped")

# Ids and rule names end up in reason codes and metric labels: keep them plain.
PROGRAM_ID = (re.compile(r"[a-z0-9][a-z0-9-]{0,63}"), "lower-case letters, digits and '-'")
REWARD_ID = (re.compile(r"[a-z0-9][a-z0-9_-]{0,63}"), "lower-case letters, digits, '-' and '_'")
RULE_NAME = REWARD_ID
CURRENCY = (re.compile(r"[A-Z]{3}"), "a three-letter currency code such as 'EUR'")
MIN_SUPPRESSION_SECONDS = 60
# Audit groups become metric labels: a short list of plain values keeps them few and safe.
MODEL_VALUE = (
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}"),
    "letters, digits, '.', '-' and '_', starting with a letter or digit, at most 40",
)
AUDIT_GROUP = (
    re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}"),
    "letters, digits, ' ', '.', '-' and '_', starting with a letter or digit",
)
MAX_AUDIT_GROUPS = 20
# What the engine's names hold when present (app.programs.names): a rule comparing one
# with a value it never has is refused at load. Profile fields may hold anything.
ENGINE_KINDS: dict[str, ValueKind] = {
    **{name: ValueKind(number=True) for name in ENGINE_NAMES},
    "preferred_channel": ValueKind(number=False, values=CHANNELS),
    "channel": ValueKind(number=False, values=CHANNELS),
    # A rule is read for the event being decided, always one of its reward's triggers.
    "event_type": ValueKind(number=False, values=TRIGGER_TYPES),
    "currency": ValueKind(number=False, pattern=CURRENCY),
}
DEFAULT_MARKETING_CHANNELS = ("email", "sms")

T = TypeVar("T")


def list_builtin() -> list[str]:
    """The ids of the shipped programs, sorted."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.yaml"))


def load_builtin(name: str) -> Program:
    """A shipped program by id (``retail-loyalty``); a path to a YAML file also works."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        return load_program(candidate)
    shipped = list_builtin()
    if name not in shipped:
        raise ProgramError(
            f"no shipped program {name!r}{did_you_mean(name, shipped)}; "
            f"shipped programs: {one_of(shipped) or 'none'}"
        )
    path = BUILTIN_DIR / f"{name}.yaml"
    program = load_program(path)
    if program.id != name:
        # Ids are how settings name programs; a file named otherwise would be loaded by the
        # wrong name.
        raise ProgramError(
            f"the file declares id {program.id!r}; a shipped program's file is named after its id",
            file=str(path),
        )
    return program


def load_program(path: Path) -> Program:
    """Read, check and build the program in ``path``; ProgramError if anything is wrong."""
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ProgramError(f"cannot read the file: {error.strerror or error}", file=file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProgramError(f"not UTF-8 text: {error}", file=file) from None
    document, root = _parse_yaml(text, file)
    where = _Where(_Source(file, root))
    return _program(where, document, hashlib.sha256(raw).hexdigest())


# --- YAML ------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in a mapping is an error.

    Plain PyYAML keeps the last one, so a second ``value:`` under a reward
    would silently replace the first.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" then overriding a key is the point of merging
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, file: str) -> tuple[object, Node | None]:
    """The document and its node tree (the tree knows the line of every key)."""
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ProgramError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as error:
        raise ProgramError(f"invalid YAML: {error}", file=file) from None
    finally:
        loader.dispose()
    return document, root


@dataclass(frozen=True, slots=True)
class _Source:
    file: str
    root: Node | None

    def line_of(self, steps: tuple[str | int, ...]) -> int | None:
        """The line of the deepest node along ``steps`` that exists (1-based)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for step in steps:
            if isinstance(node, MappingNode):
                pair = next((p for p in node.value if _is_key(p[0], step)), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif (
                isinstance(node, SequenceNode) and isinstance(step, int) and step < len(node.value)
            ):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                break
        return line


def _is_key(node: Node, step: str | int) -> bool:
    return isinstance(node, ScalarNode) and node.value == str(step)


# --- where in the file ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A place in the file: how to find its line, and how to say it to a person."""

    source: _Source
    steps: tuple[str | int, ...] = ()
    labels: tuple[str, ...] = ()

    def key(self, name: str) -> _Where:
        """A key the program format defines: ``budgets → total``."""
        return _Where(self.source, (*self.steps, name), (*self.labels, name))

    def item(self, index: int, label: str | None = None) -> _Where:
        """The ``index``-th item of a list, named if it has an id: ``rewards[2] 'cashback'``."""
        text = f"{self.labels[-1]}[{index}]" + (f" {label!r}" if label else "")
        return _Where(self.source, (*self.steps, index), (*self.labels[:-1], text))

    def entry(self, name: str) -> _Where:
        """A key the program's author chose: ``eligibility 'adult'``, ``levers 'points'``."""
        text = f"{self.labels[-1]} {name!r}"
        return _Where(self.source, (*self.steps, name), (*self.labels[:-1], text))

    def fail(self, problem: str) -> NoReturn:
        raise ProgramError(
            problem,
            where=" → ".join(self.labels),
            file=self.source.file,
            line=self.source.line_of(self.steps),
        )


# --- plain values ---------------------------------------------------------------------------


def _type_name(value: object) -> str:
    names = {bool: "true/false", int: "integer", float: "number", str: "string"}
    names |= {list: "list", dict: "mapping", type(None): "nothing (null)"}
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, int | float | str) and len(repr(value)) <= 40:
        return f"{name} {value!r}"
    return name


def _fields(
    where: _Where, value: object, *, required: Collection[str] = (), optional: Collection[str] = ()
) -> dict[str, object]:
    """A mapping with only these keys (and all the required ones).

    An optional key left empty (null) is dropped, so that it reads as left out:
    commenting out the last line under a key must not break the file.
    """
    if not isinstance(value, dict):
        where.fail(f"must be a mapping of keys to values, got {_type_name(value)}")
    allowed = {*required, *optional}
    for key in value:
        if not isinstance(key, str):
            where.fail(f"keys must be text, got {_type_name(key)}")
        if key not in allowed:
            where.key(key).fail(
                f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: {one_of(allowed)}"
            )
    missing = [key for key in required if key not in value]
    if missing:
        where.fail(f"missing key{'s' if len(missing) > 1 else ''} {one_of(missing)}")
    return {key: item for key, item in value.items() if item is not None or key in required}


def _text(where: _Where, value: object, *, form: tuple[re.Pattern[str], str] | None = None) -> str:
    """A non-empty string; with ``form``, one that matches the pattern described."""
    if not isinstance(value, str):
        where.fail(f"must be a string, got {_type_name(value)}")
    if not value.strip():
        where.fail("must not be empty")
    if form is not None and not form[0].fullmatch(value):
        where.fail(f"must be {form[1]}, got {value!r}")
    return value


def _flag(where: _Where, value: object) -> bool:
    if not isinstance(value, bool):
        where.fail(f"must be true or false, got {_type_name(value)}")
    return value


def _number(
    where: _Where,
    value: object,
    *,
    above: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """A finite number, never negative, within (above, below) when those are given, and
    not over ``at_most``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        where.fail(f"must be a number, got {_type_name(value)}")
    if not math.isfinite(value):
        where.fail(f"must be a finite number, got {value}")
    if value < 0:
        where.fail(f"must not be negative, got {value}")
    if above is not None and value <= above:
        where.fail(f"must be greater than {above:g}, got {value}")
    if below is not None and value >= below:
        where.fail(f"must be less than {below:g}, got {value}")
    if at_most is not None and value > at_most:
        where.fail(f"must be at most {at_most:g}, got {value}")
    return float(value)


def _count(where: _Where, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"must be a whole number, got {_type_name(value)}")
    if value < minimum:
        problem = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        where.fail(f"{problem}, got {value}")
    return value


def _window(where: _Where, value: object) -> Window:
    if not isinstance(value, str):
        where.fail(f"must be a duration such as '7d', got {_type_name(value)}")
    try:
        return Window.parse(value)
    except ValueError as error:
        where.fail(str(error))


def _optional(
    where: _Where, fields: Mapping[str, object], key: str, read: Callable[[_Where, object], T]
) -> T | None:
    """``read`` the key if it is present and not null; ``None`` means "no limit" / "none"."""
    value = fields.get(key)
    return None if value is None else read(where.key(key), value)


def _choices(where: _Where, value: object, allowed: Collection[str], what: str) -> tuple[str, ...]:
    """A list of distinct names from ``allowed`` (channels, triggers, fields)."""
    if not isinstance(value, list):
        where.fail(f"must be a list of {what}s, got {_type_name(value)}")
    chosen: list[str] = []
    for index, item in enumerate(value):
        here = where.item(index)
        name = _text(here, item)
        if name not in allowed:
            here.fail(
                f"unknown {what} {name!r}{did_you_mean(name, allowed)}; {what}s: {one_of(allowed)}"
            )
        if name in chosen:
            here.fail(f"{name!r} is listed twice")
        chosen.append(name)
    return tuple(chosen)


# --- the program ------------------------------------------------------------------------------

_PROGRAM_REQUIRED = ("id", "name", "currency", "triggers", "rewards")
_PROGRAM_OPTIONAL = (
    "profile_fields",
    "model_profile",
    "budgets",
    "contact",
    "levers",
    "consent_defaults",
    "marketing_channels",
    "non_personalized_default",
    "learning",
    "fraud",
    "audit",
    "experiment",
)


def _program(where: _Where, document: object, sha256: str) -> Program:
    if document is None:
        where.fail("the file is empty; a program is a mapping with " + one_of(_PROGRAM_REQUIRED))
    fields = _fields(where, document, required=_PROGRAM_REQUIRED, optional=_PROGRAM_OPTIONAL)
    # Read in the order the keys usually appear, so the first error reported is the first
    # one in the file; rewards need the triggers and profile fields first.
    program_id = _text(where.key("id"), fields["id"], form=PROGRAM_ID)
    name = _text(where.key("name"), fields["name"])
    currency = _text(where.key("currency"), fields["currency"], form=CURRENCY)
    triggers = _program_triggers(where.key("triggers"), fields["triggers"])
    profile_fields = _profile_fields(where.key("profile_fields"), fields.get("profile_fields", []))
    rewards = _rewards(where.key("rewards"), fields["rewards"], triggers, profile_fields)
    return Program(
        id=program_id,
        name=name,
        currency=currency,
        triggers=triggers,
        rewards=rewards,
        budgets=_budgets(where.key("budgets"), fields.get("budgets", {})),
        contact=_contact(where.key("contact"), fields.get("contact", {})),
        levers=_levers(where.key("levers"), fields.get("levers", {})),
        consent_defaults=_consent(where.key("consent_defaults"), fields.get("consent_defaults")),
        marketing_channels=_choices(
            where.key("marketing_channels"),
            fields.get("marketing_channels", list(DEFAULT_MARKETING_CHANNELS)),
            CHANNELS,
            "channel",
        ),
        non_personalized_default=_reward_reference(
            where.key("non_personalized_default"), fields.get("non_personalized_default"), rewards
        ),
        profile_fields=profile_fields,
        model_profile=_model_profile(
            where.key("model_profile"), fields.get("model_profile", []), profile_fields
        ),
        learning=_learning(where.key("learning"), fields.get("learning", {})),
        fraud=_fraud(where.key("fraud"), fields.get("fraud", {})),
        audit=_optional(where, fields, "audit", lambda w, v: _audit(w, v, profile_fields)),
        experiment=_optional(
            where,
            fields,
            "experiment",
            lambda w, v: _experiment(w, v, fields.get("learning", {})),
        ),
        source_sha256=sha256,
    )


def _program_triggers(where: _Where, value: object) -> tuple[str, ...]:
    triggers = _triggers(where, value, TRIGGER_TYPES)
    if not triggers:
        where.fail("must list at least one event type, or no event would ever be rewarded")
    return triggers


def _triggers(where: _Where, value: object, allowed: Collection[str]) -> tuple[str, ...]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if item in NEVER_TRIGGERS:
                where.item(index).fail(
                    f"{item!r} events report on rewards, consent, membership or fraud and "
                    "can never trigger a reward"
                )
            if item in TRIGGER_TYPES and item not in allowed:
                where.item(index).fail(
                    f"{item!r} is not one of the program's triggers ({one_of(allowed)})"
                )
    return _choices(where, value, allowed, "trigger")


def _profile_fields(where: _Where, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        where.fail(f"must be a list of attribute names, got {_type_name(value)}")
    fields: list[str] = []
    for index, item in enumerate(value):
        here = where.item(index)
        name = _text(here, item)
        _check_profile_field(here, name)
        if name in fields:
            here.fail(f"{name!r} is listed twice")
        fields.append(name)
    return tuple(fields)


def _check_profile_field(where: _Where, name: str) -> None:
    term = protected_term_in(name)
    if term is not None:
        where.fail(
            f"{protected(name, term)}; protected attributes may never be profile fields "
            "nor used in rules"
        )
    if not PROFILE_FIELD_PATTERN.fullmatch(name):
        where.fail(f"{name!r} must be a lower-case name of letters, digits and '_'")
    if name in ENGINE_NAMES or name in FUNCTIONS:
        where.fail(f"{name!r} is already a name the engine provides; choose another name")


MAX_MODEL_GROUPS = 16  # a field's groups each become a model input; a few are plenty


def _model_profile(
    where: _Where, value: object, profile_fields: tuple[str, ...]
) -> tuple[ModelProfileField, ...]:
    if not isinstance(value, list):
        where.fail(
            f"must be a list of profile fields with their bands or values, got {_type_name(value)}"
        )
    chosen: list[ModelProfileField] = []
    for index, item in enumerate(value):
        here = where.item(index)
        fields = _fields(here, item, required=("field",), optional=("bands", "values"))
        name = _text(here.key("field"), fields["field"])
        if name not in profile_fields:
            here.key("field").fail(
                f"{name!r} is not one of the program's profile_fields"
                f"{did_you_mean(name, profile_fields)}; a model learns only from fields the "
                f"program keeps: {one_of(profile_fields) or 'the program has none'}"
            )
        if name in ELIGIBILITY_ONLY:
            here.key("field").fail(
                f"{name!r} may be used only in eligibility rules (legal suitability), "
                "never by the learned models"
            )
        if any(field.name == name for field in chosen):
            here.key("field").fail(f"{name!r} is listed twice")
        if ("bands" in fields) == ("values" in fields):
            here.fail(
                "needs either 'bands' (ascending bounds, for a number) or 'values' (the "
                "values to tell apart, for text), not "
                + ("both" if "bands" in fields else "neither")
            )
        if "bands" in fields:
            chosen.append(ModelProfileField(name, bands=_bands(here.key("bands"), fields["bands"])))
        else:
            values = _model_values(here.key("values"), fields["values"])
            chosen.append(ModelProfileField(name, values=values))
    return tuple(chosen)


def _group_list(where: _Where, value: object, what: str) -> list[object]:
    """A list that makes 2 to :data:`MAX_MODEL_GROUPS` groups of a model input."""
    if not isinstance(value, list) or not 1 <= len(value) < MAX_MODEL_GROUPS:
        got = len(value) if isinstance(value, list) else _type_name(value)
        where.fail(f"must be a list of 1 to {MAX_MODEL_GROUPS - 1} {what}, got {got}")
    return value


def _bands(where: _Where, value: object) -> tuple[float, ...]:
    bounds: list[float] = []
    for index, item in enumerate(_group_list(where, value, "ascending bounds")):
        here = where.item(index)
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            here.fail(f"must be a finite number, got {_type_name(item)}")
        if bounds and item <= bounds[-1]:
            here.fail(f"must be greater than the bound before it ({bounds[-1]:g}), got {item:g}")
        bounds.append(float(item))
    return tuple(bounds)


def _model_values(where: _Where, value: object) -> tuple[str, ...]:
    values: list[str] = []
    listed = _group_list(where, value, "values (any other value is grouped as 'other')")
    for index, item in enumerate(listed):
        text = _text(where.item(index), item, form=MODEL_VALUE)
        if text == "other":
            where.item(index).fail("'other' is reserved: it groups every value not listed")
        if text in values:
            where.item(index).fail(f"{text!r} is listed twice")
        values.append(text)
    return tuple(values)


# --- rewards ----------------------------------------------------------------------------------

_REWARD_REQUIRED = ("id", "kind", "value", "cost", "channels")
_REWARD_OPTIONAL = ("triggers", "eligibility", "stock", "lever", "description")


def _rewards(
    where: _Where, value: object, triggers: tuple[str, ...], profile_fields: tuple[str, ...]
) -> tuple[Reward, ...]:
    if not isinstance(value, list):
        where.fail(f"must be a list of rewards, got {_type_name(value)}")
    if not value:
        where.fail("must hold at least one reward")
    names = expression_names(profile_fields)
    rewards: list[Reward] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(value):
        label = item.get("id") if isinstance(item, dict) else None
        here = where.item(index, label if isinstance(label, str) else None)
        reward = _reward(here, item, triggers, names)
        if reward.id in first_index:
            here.key("id").fail(
                f"duplicate reward id {reward.id!r} (also rewards[{first_index[reward.id]}])"
            )
        first_index[reward.id] = index
        rewards.append(reward)
    return tuple(rewards)


def _reward(
    where: _Where, value: object, triggers: tuple[str, ...], names: frozenset[str]
) -> Reward:
    fields = _fields(where, value, required=_REWARD_REQUIRED, optional=_REWARD_OPTIONAL)
    # Keyword arguments run in order: the first problem reported is the first in the file.
    return Reward(
        id=_text(where.key("id"), fields["id"], form=REWARD_ID),
        kind=_kind(where.key("kind"), fields["kind"]),
        value=_amount(where.key("value"), fields["value"], names),
        cost=_amount(where.key("cost"), fields["cost"], names),
        channels=_reward_channels(where.key("channels"), fields["channels"]),
        triggers=_reward_triggers(where.key("triggers"), fields.get("triggers"), triggers),
        eligibility=_eligibility(where.key("eligibility"), fields.get("eligibility"), names),
        stock=_optional(where, fields, "stock", _count),
        lever=_number(where.key("lever"), fields.get("lever", 1.0), above=0.0),
        description=_description(where.key("description"), fields.get("description", "")),
    )


def _kind(where: _Where, value: object) -> str:
    kind = _text(where, value)
    if kind not in REWARD_KINDS:
        where.fail(
            f"unknown reward kind {kind!r}{did_you_mean(kind, REWARD_KINDS)}; "
            f"kinds: {one_of(REWARD_KINDS)}"
        )
    return kind


def _reward_channels(where: _Where, value: object) -> tuple[str, ...]:
    channels = _choices(where, value, CHANNELS, "channel")
    if not channels:
        where.fail("must list at least one channel to deliver the reward on")
    return channels


def _reward_triggers(where: _Where, value: object, program: tuple[str, ...]) -> tuple[str, ...]:
    """The reward's own triggers, or the program's when it has none."""
    if value is None:
        return program
    triggers = _triggers(where, value, program)
    if not triggers:
        where.fail("must list at least one event type; leave the key out to use the program's")
    return triggers


def _description(where: _Where, value: object) -> str:
    if not isinstance(value, str):
        where.fail(f"must be a string, got {_type_name(value)}")
    return value.strip()


def _amount(where: _Where, value: object, names: frozenset[str]) -> Amount:
    """A number, or an expression that computes one from the event and the features."""
    if isinstance(value, str):
        expression = _expression(where, value, names)
        age_like = sorted(expression.names & ELIGIBILITY_ONLY)
        if age_like:
            where.fail(
                f"{age_like[0]!r} may be used only in eligibility rules (legal suitability), "
                "never in a reward's value or cost"
            )
        return _constant_amount(where, expression) if not expression.names else expression
    if isinstance(value, bool) or not isinstance(value, int | float):
        where.fail(f"must be a number or an expression string, got {_type_name(value)}")
    return _number(where, value)


def _constant_amount(where: _Where, expression: Expression) -> float:
    # An expression without names ("10 * 2") is known now; check it now, not per event.
    try:
        result = expression.evaluate({})
    except Undetermined:
        where.fail(f"{expression.source!r} cannot be computed")
    return _number(where, result)


def _expression(where: _Where, source: str, names: frozenset[str]) -> Expression:
    try:
        return compile_expression(source, known_names=names, where="", kinds=ENGINE_KINDS)
    except ProgramError as error:
        where.fail(error.problem)


def _eligibility(where: _Where, value: object, names: frozenset[str]) -> tuple[Rule, ...]:
    """Named rules, all of which must hold: ``{adult: "age >= 18"}``."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        where.fail(f"must be a mapping of rule names to expressions, got {_type_name(value)}")
    rules: list[Rule] = []
    for name, source in value.items():
        if not isinstance(name, str) or not RULE_NAME[0].fullmatch(name):
            where.fail(f"rule name {name!r} must be {RULE_NAME[1]}")
        here = where.entry(name)
        if not isinstance(source, str):
            here.fail(f"must be an expression string, got {_type_name(source)}")
        rules.append(Rule(name, _expression(here, source, names)))
    return tuple(rules)


def _reward_reference(where: _Where, value: object, rewards: tuple[Reward, ...]) -> str | None:
    if value is None:
        return None
    reward_id = _text(where, value)
    ids = [reward.id for reward in rewards]
    if reward_id not in ids:
        where.fail(
            f"unknown reward id {reward_id!r}{did_you_mean(reward_id, ids)}; rewards: {one_of(ids)}"
        )
    return reward_id


# --- budgets, contact, levers, consent, learning -----------------------------------------------


def _budgets(where: _Where, value: object) -> Budgets:
    fields = _fields(where, value, optional=("total", "per_user", "per_user_window", "periods"))
    per_user = _optional(where, fields, "per_user", _number)
    per_user_window = _optional(where, fields, "per_user_window", _window)
    if per_user_window is not None and per_user is None:
        where.key("per_user_window").fail("needs per_user: the limit that applies in the window")
    return Budgets(
        total=_optional(where, fields, "total", _number),
        per_user=per_user,
        per_user_window=per_user_window,
        periods=_periods(where.key("periods"), fields.get("periods", [])),
    )


def _periods(where: _Where, value: object) -> tuple[PeriodBudget, ...]:
    if not isinstance(value, list):
        where.fail(f"must be a list of {{window, limit}} mappings, got {_type_name(value)}")
    periods: list[PeriodBudget] = []
    for index, item in enumerate(value):
        here = where.item(index)
        fields = _fields(here, item, required=("window", "limit"))
        period = PeriodBudget(
            _window(here.key("window"), fields["window"]),
            _number(here.key("limit"), fields["limit"]),
        )
        for earlier, other in enumerate(periods):
            if other.window.seconds == period.window.seconds:
                here.key("window").fail(f"periods[{earlier}] already limits the same window")
        periods.append(period)
    return tuple(periods)


def _contact(where: _Where, value: object) -> ContactPolicy:
    fields = _fields(
        where, value, optional=("max_per_day", "max_per_week", "per_channel", "suppression")
    )
    return ContactPolicy(
        max_per_day=_optional(where, fields, "max_per_day", _count),
        max_per_week=_optional(where, fields, "max_per_week", _count),
        per_channel=_per_channel(where.key("per_channel"), fields.get("per_channel", {})),
        suppression=_optional(where, fields, "suppression", _suppression),
    )


def _per_channel(where: _Where, value: object) -> FrozenMap[str, ChannelLimit]:
    if not isinstance(value, dict):
        where.fail(f"must be a mapping of channels to limits, got {_type_name(value)}")
    limits: dict[str, ChannelLimit] = {}
    for channel, item in value.items():
        if channel not in CHANNELS:
            where.entry(str(channel)).fail(
                f"unknown channel {channel!r}{did_you_mean(str(channel), CHANNELS)}; "
                f"channels: {one_of(CHANNELS)}"
            )
        here = where.entry(channel)
        fields = _fields(here, item, optional=("max_per_day", "max_per_week"))
        if not fields:
            here.fail("set max_per_day, max_per_week or both")
        limits[channel] = ChannelLimit(
            max_per_day=_optional(here, fields, "max_per_day", _count),
            max_per_week=_optional(here, fields, "max_per_week", _count),
        )
    return FrozenMap(limits)


def _suppression(where: _Where, value: object) -> Suppression:
    fields = _fields(where, value, required=("dismissals", "within", "lasts"))
    lasts = _window(where.key("lasts"), fields["lasts"])
    if lasts.seconds < MIN_SUPPRESSION_SECONDS:
        where.key("lasts").fail("must be at least 1 minute")
    return Suppression(
        dismissals=_count(where.key("dismissals"), fields["dismissals"], minimum=1),
        within=_window(where.key("within"), fields["within"]),
        lasts=lasts,
    )


def _levers(where: _Where, value: object) -> FrozenMap[str, float]:
    if not isinstance(value, dict):
        where.fail(f"must be a mapping of reward kinds to numbers, got {_type_name(value)}")
    levers: dict[str, float] = {}
    for kind, lever in value.items():
        here = where.entry(str(kind))
        if kind not in REWARD_KINDS:
            here.fail(
                f"unknown reward kind {kind!r}{did_you_mean(str(kind), REWARD_KINDS)}; "
                f"kinds: {one_of(REWARD_KINDS)}"
            )
        levers[kind] = _number(here, lever, above=0.0)
    return FrozenMap(levers)


def _consent(where: _Where, value: object) -> Consent:
    if value is None:
        return Consent()
    fields = _fields(where, value, required=("personalization", "marketing"))
    return Consent(
        personalization=_flag(where.key("personalization"), fields["personalization"]),
        marketing=_flag(where.key("marketing"), fields["marketing"]),
    )


_LEARNING_KEYS = (
    "epsilon",
    "epsilon_half_after",
    "min_epsilon",
    "prior",
    "response_window",
    "opened",
    "learning_rate",
    "weight_step_start",
    "weight_step_floor",
    "min_priority",
    "exploration",
    "temperature",
)


def _learning(where: _Where, value: object) -> Learning:
    fields = _fields(where, value, optional=_LEARNING_KEYS)
    defaults = Learning()
    learning = Learning(
        epsilon=_number(where.key("epsilon"), fields.get("epsilon", defaults.epsilon), at_most=1.0),
        epsilon_half_after=(
            None
            if fields.get("epsilon_half_after") is None
            else _number(where.key("epsilon_half_after"), fields["epsilon_half_after"], above=0.0)
        ),
        min_epsilon=_number(
            where.key("min_epsilon"), fields.get("min_epsilon", defaults.min_epsilon), at_most=1.0
        ),
        prior=_number(
            where.key("prior"), fields.get("prior", defaults.prior), above=0.0, below=1.0
        ),
        response_window=_window(
            where.key("response_window"),
            fields.get("response_window", defaults.response_window.text),
        ),
        opened=_opened(where.key("opened"), fields.get("opened", defaults.opened)),
        learning_rate=_number(
            where.key("learning_rate"),
            fields.get("learning_rate", defaults.learning_rate),
            above=0.0,
        ),
        weight_step_start=(
            None
            if fields.get("weight_step_start") is None
            else _number(where.key("weight_step_start"), fields["weight_step_start"], above=0.0)
        ),
        weight_step_floor=(
            None
            if fields.get("weight_step_floor") is None
            else _number(where.key("weight_step_floor"), fields["weight_step_floor"], above=0.0)
        ),
        min_priority=_number(
            where.key("min_priority"), fields.get("min_priority", defaults.min_priority)
        ),
        exploration=_exploration(
            where.key("exploration"), fields.get("exploration", defaults.exploration)
        ),
        temperature=_number(
            where.key("temperature"), fields.get("temperature", defaults.temperature), above=0.0
        ),
    )
    if learning.weight_step_floor is not None and learning.weight_step_start is None:
        where.key("weight_step_floor").fail(
            "is the floor of a decaying step: set weight_step_start too"
        )
    step = learning.weight_step()
    if step is not None and step[1] > step[0]:
        key = "weight_step_floor" if learning.weight_step_floor is not None else "learning_rate"
        where.key(key).fail(
            f"must not exceed weight_step_start ({step[0]:g}), got {step[1]:g}: the step "
            "falls from its start to its floor"
        )
    if learning.min_epsilon > learning.epsilon:
        where.key("min_epsilon").fail(
            f"must not exceed epsilon ({learning.epsilon:g}), got {learning.min_epsilon:g}"
        )
    return learning


_FRAUD_KEYS = (
    "alert",
    "hold",
    "block",
    "hold_for",
    "cleared_for",
    "new_account_pending",
    "enabled",
)


def _fraud(where: _Where, value: object) -> Fraud:
    fields = _fields(where, value, optional=_FRAUD_KEYS)
    defaults = Fraud()

    def threshold(name: str) -> float:
        value = _number(where.key(name), fields.get(name, getattr(defaults, name)), above=0.0)
        if value > 1:
            where.key(name).fail(f"is a risk score between 0 and 1, got {value:g}")
        return value

    fraud = Fraud(
        alert=threshold("alert"),
        hold=threshold("hold"),
        block=threshold("block"),
        hold_for=_window(where.key("hold_for"), fields.get("hold_for", defaults.hold_for.text)),
        cleared_for=_window(
            where.key("cleared_for"), fields.get("cleared_for", defaults.cleared_for.text)
        ),
        new_account_pending=_optional(where, fields, "new_account_pending", _window),
        enabled=_flag(where.key("enabled"), fields.get("enabled", defaults.enabled)),
    )
    if fraud.hold > fraud.block:
        where.key("hold").fail(
            f"must not exceed block ({fraud.block:g}), got {fraud.hold:g}: "
            "a risk between them would be both held and blocked"
        )
    return fraud


def _exploration(where: _Where, value: object) -> Exploration:
    exploration = _text(where, value)
    if exploration not in EXPLORATIONS:
        where.fail(f"must be one of {one_of(EXPLORATIONS)}, got {exploration!r}")
    return cast(Exploration, exploration)  # the check above is what makes it one


def _opened(where: _Where, value: object) -> Opened:
    opened = _text(where, value)
    if opened not in OPENED_POLICIES:
        where.fail(f"must be one of {one_of(OPENED_POLICIES)}, got {opened!r}")
    return cast(Opened, opened)  # the check above is what makes it one


def _audit(where: _Where, value: object, profile_fields: tuple[str, ...]) -> Audit:
    fields = _fields(where, value, required=("group_by", "groups"), optional=("min_ratio",))
    here = where.key("group_by")
    group_by = _text(here, fields["group_by"])
    if group_by not in profile_fields:
        here.fail(
            f"{group_by!r} is not one of the program's profile_fields"
            f"{did_you_mean(group_by, profile_fields)}; an audit groups users by a profile "
            f"field: {one_of(profile_fields) or 'the program has none'}"
        )
    return Audit(
        group_by=group_by,
        groups=_audit_groups(where.key("groups"), fields["groups"]),
        min_ratio=_audit_min_ratio(
            where.key("min_ratio"), fields.get("min_ratio", DEFAULT_AUDIT_MIN_RATIO)
        ),
    )


def _audit_min_ratio(where: _Where, value: object) -> float:
    ratio = _number(where, value)
    if not 0 < ratio <= 1:
        where.fail(
            "is the lowest ratio of a group's grant rate to the best-served group's the "
            f"program accepts: above 0 and at most 1 (0.8 is the four-fifths rule), got {ratio:g}"
        )
    return ratio


def _audit_groups(where: _Where, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        where.fail(f"must be a list of the values to count apart, got {_type_name(value)}")
    if not 1 <= len(value) <= MAX_AUDIT_GROUPS:
        where.fail(
            f"must list 1 to {MAX_AUDIT_GROUPS} values (each becomes a metric label; "
            f"other values count as {AUDIT_OTHER!r}), got {len(value)}"
        )
    groups: list[str] = []
    for index, item in enumerate(value):
        here = where.item(index)
        group = _text(here, item, form=AUDIT_GROUP)
        if group in (AUDIT_OTHER, AUDIT_UNKNOWN):
            here.fail(
                f"{group!r} is reserved: users whose value is not listed count as "
                f"{AUDIT_OTHER!r}, users without one as {AUDIT_UNKNOWN!r}"
            )
        if group in groups:
            here.fail(f"{group!r} is listed twice")
        groups.append(group)
    return tuple(groups)


# --- experiments ------------------------------------------------------------------------------

_ARM_KEYS = ("name", "share", "serves", "learning")
# Shares must sum to 1 up to this much (they are written as decimals).
SHARE_TOLERANCE = 1e-6


def _experiment(where: _Where, value: object, program_learning: object) -> Experiment:
    fields = _fields(where, value, required=("id", "arms"))
    experiment_id = _text(where.key("id"), fields["id"], form=PROGRAM_ID)
    arms_where, raw_arms = where.key("arms"), fields["arms"]
    if not isinstance(raw_arms, list) or len(raw_arms) < 2:
        arms_where.fail(f"must be a list of at least two arms, got {_type_name(raw_arms)}")
    arms: list[Arm] = []
    for index, raw in enumerate(raw_arms):
        arm_where = arms_where.item(index)
        arm_fields = _fields(arm_where, raw, required=("name", "share"), optional=_ARM_KEYS)
        name = _text(arm_where.key("name"), arm_fields["name"], form=REWARD_ID)
        if any(arm.name == name for arm in arms):
            arm_where.key("name").fail(f"arm {name!r} is named twice")
        share = _number(arm_where.key("share"), arm_fields["share"], above=0.0, at_most=1.0)
        serves = _serves(arm_where.key("serves"), arm_fields.get("serves", "program"))
        learning = None
        if "learning" in arm_fields:
            if serves != "program":
                arm_where.key("learning").fail(
                    f"only an arm that serves the program has a learning block, not one "
                    f"that serves {serves!r}"
                )
            overrides = arm_fields["learning"]
            if not isinstance(overrides, dict):
                arm_where.key("learning").fail(
                    f"must be a mapping of learning settings, got {_type_name(overrides)}"
                )
            base = program_learning if isinstance(program_learning, dict) else {}
            learning = _learning(arm_where.key("learning"), {**base, **overrides})
        arms.append(Arm(name, share, serves, learning))
    total = sum(arm.share for arm in arms)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        arms_where.fail(f"the arms' shares must sum to 1, got {total:g}")
    return Experiment(experiment_id, tuple(arms))


def _serves(where: _Where, value: object) -> Serves:
    for serves in SERVES:
        if value == serves:
            return serves
    where.fail(f"must be {one_of(SERVES)}, got {value!r}")
