"""Loading program files: a bad file fails at load, saying which file, where and what."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.programs import Audit, Expression, ProgramError, Window, load_builtin, load_program
from app.programs import loader as loader_module

Document = dict[str, Any]


def minimal() -> Document:
    """The smallest program that exercises every section the error cases poke at."""
    return {
        "id": "test-program",
        "name": "Test program",
        "currency": "EUR",
        "triggers": ["signup", "purchase"],
        "profile_fields": ["age", "country"],
        "rewards": [
            {"id": "points", "kind": "points", "value": 5, "cost": 0.5, "channels": ["web"]},
            {
                "id": "cashback",
                "kind": "cashback",
                "value": "min(0.05 * amount, 20)",
                "cost": "min(0.05 * amount, 20)",
                "channels": ["web", "email"],
                "triggers": ["purchase"],
            },
            {
                "id": "credit-card",
                "kind": "credit_card",
                "value": 50,
                "cost": 50,
                "channels": ["web"],
                "eligibility": {"adult": "age >= 18"},
            },
        ],
        "budgets": {"total": 1000, "periods": [{"window": "1d", "limit": 100}]},
        "contact": {
            "max_per_day": 3,
            "per_channel": {"email": {"max_per_week": 2}},
            "suppression": {"dismissals": 3, "within": "14d", "lasts": "30d"},
        },
        "learning": {"epsilon": 0.1},
    }


def write(tmp_path: Path, document: object, name: str = "bad-program.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def write_text(tmp_path: Path, text: str, name: str = "bad-program.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ProgramError) as caught:
        load_program(path)
    return str(caught.value)


def test_the_minimal_program_loads_with_defaults(tmp_path: Path) -> None:
    program = load_program(write(tmp_path, minimal(), "ok.yaml"))
    assert program.id == "test-program"
    points, cashback, card = program.rewards
    assert points.triggers == ("signup", "purchase")  # inherited from the program
    assert cashback.triggers == ("purchase",)
    assert points.value == 5.0
    assert isinstance(cashback.value, Expression)
    assert card.eligibility[0].name == "adult"
    assert program.marketing_channels == ("email", "sms")
    assert program.consent_defaults.marketing is False
    assert program.learning.response_window == Window(259_200, "3d")
    assert program.non_personalized_default is None


def test_an_audit_groups_users_by_a_profile_field(tmp_path: Path) -> None:
    document = minimal()
    document["audit"] = {"group_by": "country", "groups": ["DE", "FR"]}
    audit = load_program(write(tmp_path, document, "ok.yaml")).audit
    assert audit == Audit(group_by="country", groups=("DE", "FR"))
    assert [audit.group_of(p) for p in ({"country": "FR"}, {"country": "US"}, {})] == [
        "FR",
        "other",
        "unknown",
    ]
    assert audit.group_of({"country": 49}) == "other"  # only text values are groups
    assert load_program(write(tmp_path, minimal(), "plain.yaml")).audit is None


def test_a_program_sets_a_decaying_step_for_its_models_weights(tmp_path: Path) -> None:
    """``weight_step_start`` and ``weight_step_floor`` give the weights' step; without a
    floor it falls to ``learning_rate``; without either every step is ``learning_rate``."""
    document = minimal()
    document["learning"] = {"learning_rate": 0.2, "weight_step_start": 2, "weight_step_floor": 0.05}
    learning = load_program(write(tmp_path, document, "step.yaml")).learning
    assert learning.weight_step() == (2.0, 0.05)
    assert learning.learning_rate == 0.2  # the intercept's step
    del document["learning"]["weight_step_floor"]
    assert load_program(write(tmp_path, document, "floor.yaml")).learning.weight_step() == (
        2.0,
        0.2,
    )
    assert load_program(write(tmp_path, minimal(), "plain.yaml")).learning.weight_step() is None


def test_a_program_names_the_profile_fields_its_models_learn_from(tmp_path: Path) -> None:
    document = minimal()
    document["profile_fields"].append("tenure")
    document["model_profile"] = [
        {"field": "tenure", "bands": [25, 40.5]},
        {"field": "country", "values": ["DE", "FR"]},
    ]
    tenure, country = load_program(write(tmp_path, document, "ok.yaml")).model_profile
    assert tenure.groups == ("lt25", "25-40.5", "ge40.5")
    assert [tenure.code(v) for v in (18, 25, 40, 40.5, 90, None, "31", True)] == [
        0, 1, 1, 2, 2, None, None, None,
    ]  # fmt: skip
    assert country.inputs() == (
        "profile_country.DE",
        "profile_country.FR",
        "profile_country.other",
    )
    assert [country.code(v) for v in ("FR", "NL", None, 7)] == [1, 2, None, None]
    assert load_program(write(tmp_path, minimal(), "plain.yaml")).model_profile == ()


def test_an_audit_accepts_groups_down_to_four_fifths_of_the_best_unless_it_says_otherwise(
    tmp_path: Path,
) -> None:
    document = minimal()
    document["audit"] = {"group_by": "country", "groups": ["DE"]}
    assert _min_ratio(write(tmp_path, document, "default.yaml")) == 0.8
    document["audit"]["min_ratio"] = 0.9
    assert _min_ratio(write(tmp_path, document, "strict.yaml")) == 0.9
    document["audit"]["min_ratio"] = 1
    assert _min_ratio(write(tmp_path, document, "equal.yaml")) == 1.0


def _min_ratio(path: Path) -> float:
    """The ``min_ratio`` of the audit of the program at ``path`` (which has an audit)."""
    audit = load_program(path).audit
    assert audit is not None
    return audit.min_ratio


def test_an_optional_key_left_empty_reads_as_left_out(tmp_path: Path) -> None:
    document = minimal()
    document["budgets"] = None
    document["learning"]["epsilon"] = None
    document["rewards"][0]["stock"] = None
    document["rewards"][2]["eligibility"] = None
    program = load_program(write(tmp_path, document, "ok.yaml"))
    assert program.budgets.total is None
    assert program.learning.epsilon == 0.1
    assert program.rewards[0].stock is None
    assert program.rewards[2].eligibility == ()


Mutation = Callable[[Document], None]


def _set(*path: str | int, to: object) -> Mutation:
    def mutate(document: Document) -> None:
        target: Any = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = to

    return mutate


def _delete(*path: str | int) -> Mutation:
    def mutate(document: Document) -> None:
        target: Any = document
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


def _append_reward(reward: Document) -> Mutation:
    return lambda document: document["rewards"].append(reward)


def _model_profile(*fields: Document) -> Mutation:
    """``model_profile`` set to ``fields``, the program keeping a numeric ``tenure`` too."""

    def mutate(document: Document) -> None:
        document["profile_fields"] = [*document["profile_fields"], "tenure"]
        document["model_profile"] = list(fields)

    return mutate


CARD_RULE = ("rewards", 2, "eligibility", "adult")
CARD_RULE_AT = "rewards[2] 'credit-card' → eligibility 'adult'"

# (mutation, where the message must say it is, what it must say is wrong)
ERROR_CASES: dict[str, tuple[Mutation, str, str]] = {
    "unknown name": (
        _set(*CARD_RULE, to="agee >= 18"),
        CARD_RULE_AT,
        "unknown name 'agee' (did you mean 'age'?)",
    ),
    # A comparison an engine name can never satisfy would leave its reward never granted.
    "a number compared with a string": (
        _set(*CARD_RULE, to="purchases >= '2'"),
        CARD_RULE_AT,
        "column 14: 'purchases' is a number, never the string '2'; write 2 without quotes",
    ),
    "a string compared with a number": (
        _set(*CARD_RULE, to="channel != 1"),
        CARD_RULE_AT,
        "'channel' is a string, never the number 1",
    ),
    "a channel that does not exist": (
        _set(*CARD_RULE, to="channel in ['web', 'mobil']"),
        CARD_RULE_AT,
        "column 20: 'channel' is one of 'email', 'mobile', 'sms', 'store', 'web', never "
        "'mobil' (did you mean 'mobile'?)",
    ),
    "an event type that is not a trigger": (
        _set(*CARD_RULE, to="event_type == 'purchased'"),
        CARD_RULE_AT,
        "never 'purchased' (did you mean 'purchase'?)",
    ),
    "a currency in lower case": (
        _set(*CARD_RULE, to="'eur' == currency"),
        CARD_RULE_AT,
        "'currency' is a three-letter currency code such as 'EUR', never 'eur'",
    ),
    "syntax error with column": (
        _set(*CARD_RULE, to="age >= >= 18"),
        CARD_RULE_AT,
        "column 8: syntax error",
    ),
    "forbidden construct": (
        _set(*CARD_RULE, to="__import__('os').system('x')"),
        CARD_RULE_AT,
        "is not allowed",
    ),
    "protected attribute in a rule": (
        _set(*CARD_RULE, to="gender == 'f'"),
        CARD_RULE_AT,
        "'gender' is a protected attribute",
    ),
    "protected attribute as a profile field": (
        _set("profile_fields", 1, to="ethnicity"),
        "profile_fields[1]",
        "'ethnicity' is a protected attribute",
    ),
    "renamed protected attribute as a profile field": (
        _set("profile_fields", 1, to="religion_code"),
        "profile_fields[1]",
        "'religion_code' contains the protected attribute 'religion'",
    ),
    "profile field shadowing an engine name": (
        _set("profile_fields", 1, to="spend"),
        "profile_fields[1]",
        "already a name the engine provides",
    ),
    "age in a value": (
        _set("rewards", 1, "value", to="min(age * 0.5, 20)"),
        "rewards[1] 'cashback' → value",
        "'age' may be used only in eligibility rules",
    ),
    "age in a cost": (
        _set("rewards", 1, "cost", to="age"),
        "rewards[1] 'cashback' → cost",
        "only in eligibility rules",
    ),
    "wrong type for a cost": (
        _set("rewards", 1, "cost", to=[1, 2]),
        "rewards[1] 'cashback' → cost",
        "must be a number or an expression string, got list",
    ),
    "required key left empty": (
        _set("rewards", 0, "cost", to=None),
        "rewards[0] 'points' → cost",
        "must be a number or an expression string, got nothing (null)",
    ),
    "negative constant value": (
        _set("rewards", 0, "value", to=-5),
        "rewards[0] 'points' → value",
        "must not be negative",
    ),
    "constant expression that cannot be computed": (
        _set("rewards", 0, "value", to="1 / 0"),
        "rewards[0] 'points' → value",
        "cannot be computed",
    ),
    "unknown top-level key": (
        _set("budget", to={"total": 5}),
        "budget",
        "unknown key 'budget' (did you mean 'budgets'?)",
    ),
    "unknown reward key": (
        _set("rewards", 0, "cots", to=1),
        "rewards[0] 'points' → cots",
        "unknown key 'cots' (did you mean 'cost'?)",
    ),
    "unknown nested key": (
        _set("contact", "suppression", "last", to="30d"),
        "contact → suppression → last",
        "did you mean 'lasts'?",
    ),
    "unknown learning key": (
        _set("learning", "epsilom", to=0.2),
        "learning → epsilom",
        "did you mean 'epsilon'?",
    ),
    "missing reward key": (
        _delete("rewards", 0, "cost"),
        "rewards[0] 'points'",
        "missing key 'cost'",
    ),
    "missing program key": (
        _delete("currency"),
        "bad-program.yaml",
        "missing key 'currency'",
    ),
    "negative total budget": (
        _set("budgets", "total", to=-1),
        "budgets → total",
        "must not be negative, got -1",
    ),
    "negative period budget": (
        _set("budgets", "periods", 0, "limit", to=-100),
        "budgets → periods[0] → limit",
        "must not be negative",
    ),
    "budget as a string": (
        _set("budgets", "total", to="1000"),
        "budgets → total",
        "must be a number, got string '1000'",
    ),
    "per-user window without a per-user limit": (
        _set("budgets", "per_user_window", to="30d"),
        "budgets → per_user_window",
        "needs per_user",
    ),
    "same period twice": (
        _set(
            "budgets", "periods", to=[{"window": "1d", "limit": 1}, {"window": "24h", "limit": 2}]
        ),
        "budgets → periods[1] → window",
        "periods[0] already limits the same window",
    ),
    "bad duration": (
        _set("budgets", "periods", 0, "window", to="7 days"),
        "budgets → periods[0] → window",
        "'7 days' is not a duration",
    ),
    "unknown non-personalized default": (
        _set("non_personalized_default", to="pointz"),
        "non_personalized_default",
        "unknown reward id 'pointz' (did you mean 'points'?)",
    ),
    "duplicate reward id": (
        _append_reward(
            {"id": "points", "kind": "points", "value": 1, "cost": 1, "channels": ["web"]}
        ),
        "rewards[3] 'points' → id",
        "duplicate reward id 'points' (also rewards[0])",
    ),
    "no rewards": (
        _set("rewards", to=[]),
        "rewards",
        "at least one reward",
    ),
    "unknown reward kind": (
        _set("rewards", 0, "kind", to="pointz"),
        "rewards[0] 'points' → kind",
        "unknown reward kind 'pointz' (did you mean 'points'?)",
    ),
    "unknown channel": (
        _set("rewards", 0, "channels", to=["emial"]),
        "rewards[0] 'points' → channels[0]",
        "unknown channel 'emial' (did you mean 'email'?)",
    ),
    "per-channel limit for an unknown channel": (
        _set("contact", "per_channel", "fax", to={"max_per_week": 1}),
        "contact → per_channel 'fax'",
        "unknown channel 'fax'",
    ),
    "marketing channel that is not a channel": (
        _set("marketing_channels", to=["email", "pigeon"]),
        "marketing_channels[1]",
        "unknown channel 'pigeon'",
    ),
    "suppression shorter than a minute": (
        _set("contact", "suppression", "lasts", to="30s"),
        "contact → suppression → lasts",
        "at least 1 minute",
    ),
    "outcome event as a trigger": (
        _set("triggers", to=["signup", "reward_redeemed"]),
        "triggers[1]",
        "can never trigger a reward",
    ),
    "reward trigger the program does not have": (
        _set("rewards", 0, "triggers", to=["session_start"]),
        "rewards[0] 'points' → triggers[0]",
        "not one of the program's triggers",
    ),
    "epsilon over one": (
        _set("learning", "epsilon", to=1.5),
        "learning → epsilon",
        "must be at most 1, got 1.5",
    ),
    "exploration floor above epsilon": (
        _set("learning", "min_epsilon", to=0.5),
        "learning → min_epsilon",
        "must not exceed epsilon (0.1), got 0.5",
    ),
    "exploration half-life of zero": (
        _set("learning", "epsilon_half_after", to=0),
        "learning → epsilon_half_after",
        "must be greater than 0, got 0",
    ),
    "weights' step floor without its start": (
        _set("learning", "weight_step_floor", to=0.05),
        "learning → weight_step_floor",
        "set weight_step_start too",
    ),
    "weights' step that starts below its floor": (
        _set("learning", "weight_step_start", to=0.01),
        "learning → learning_rate",
        "must not exceed weight_step_start (0.01), got 0.05",
    ),
    "weights' step of zero": (
        _set("learning", "weight_step_start", to=0),
        "learning → weight_step_start",
        "must be greater than 0, got 0",
    ),
    "opened policy": (
        _set("learning", "opened", to="sometimes"),
        "learning → opened",
        "must be one of 'ignore', 'positive'",
    ),
    "zero lever": (
        _set("rewards", 0, "lever", to=0),
        "rewards[0] 'points' → lever",
        "must be greater than 0, got 0",
    ),
    "lever for an unknown kind": (
        _set("levers", to={"pointz": 1.2}),
        "levers 'pointz'",
        "unknown reward kind 'pointz' (did you mean 'points'?)",
    ),
    "consent as a string": (
        _set("consent_defaults", to={"personalization": "yes", "marketing": False}),
        "consent_defaults → personalization",
        "must be true or false, got string 'yes'",
    ),
    "fractional stock": (
        _set("rewards", 0, "stock", to=1.5),
        "rewards[0] 'points' → stock",
        "must be a whole number",
    ),
    "negative stock": (
        _set("rewards", 0, "stock", to=-1),
        "rewards[0] 'points' → stock",
        "must not be negative",
    ),
    "eligibility as a list": (
        _set("rewards", 2, "eligibility", to=["age >= 18"]),
        "rewards[2] 'credit-card' → eligibility",
        "must be a mapping of rule names to expressions, got list",
    ),
    "rule that is not a string": (
        _set(*CARD_RULE, to=18),
        CARD_RULE_AT,
        "must be an expression string, got integer 18",
    ),
    "bad currency": (
        _set("currency", to="euro"),
        "currency",
        "must be a three-letter currency code such as 'EUR', got 'euro'",
    ),
    "model input from a field the program does not keep": (
        _set("model_profile", to=[{"field": "contry", "values": ["DE"]}]),
        "model_profile[0] → field",
        "'contry' is not one of the program's profile_fields (did you mean 'country'?)",
    ),
    "model input from age": (
        _set("model_profile", to=[{"field": "age", "bands": [30]}]),
        "model_profile[0] → field",
        "'age' may be used only in eligibility rules (legal suitability), never by the "
        "learned models",
    ),
    "model input with both bands and values": (
        _set("model_profile", to=[{"field": "country", "bands": [30], "values": ["DE"]}]),
        "model_profile[0]",
        "needs either 'bands' (ascending bounds, for a number) or 'values' (the values to "
        "tell apart, for text), not both",
    ),
    "model input with neither bands nor values": (
        _set("model_profile", to=[{"field": "country"}]),
        "model_profile[0]",
        "not neither",
    ),
    "model input bands out of order": (
        _model_profile({"field": "tenure", "bands": [30, 30]}),
        "model_profile[0] → bands[1]",
        "must be greater than the bound before it (30), got 30",
    ),
    "model input value 'other'": (
        _set("model_profile", to=[{"field": "country", "values": ["DE", "other"]}]),
        "model_profile[0] → values[1]",
        "'other' is reserved: it groups every value not listed",
    ),
    "model input field listed twice": (
        _model_profile({"field": "tenure", "bands": [3]}, {"field": "tenure", "bands": [4]}),
        "model_profile[1] → field",
        "'tenure' is listed twice",
    ),
    "model inputs not a list": (
        _set("model_profile", to={"field": "age"}),
        "model_profile",
        "must be a list of profile fields with their bands or values, got mapping",
    ),
    "audit by a field the program does not keep": (
        _set("audit", to={"group_by": "contry", "groups": ["DE"]}),
        "audit → group_by",
        "'contry' is not one of the program's profile_fields (did you mean 'country'?)",
    ),
    "audit without groups": (
        _set("audit", to={"group_by": "country"}),
        "audit",
        "missing key 'groups'",
    ),
    "audit groups not a list": (
        _set("audit", to={"group_by": "country", "groups": "DE"}),
        "audit → groups",
        "must be a list of the values to count apart, got string 'DE'",
    ),
    "too many audit groups": (
        _set("audit", to={"group_by": "country", "groups": [f"c{n}" for n in range(21)]}),
        "audit → groups",
        "must list 1 to 20 values",
    ),
    "reserved audit group": (
        _set("audit", to={"group_by": "country", "groups": ["DE", "other"]}),
        "audit → groups[1]",
        "'other' is reserved",
    ),
    "audit group listed twice": (
        _set("audit", to={"group_by": "country", "groups": ["DE", "DE"]}),
        "audit → groups[1]",
        "'DE' is listed twice",
    ),
    "audit group that is not text": (
        _set("audit", to={"group_by": "age", "groups": [18]}),
        "audit → groups[0]",
        "must be a string, got integer 18",
    ),
    "audit group that would make an odd label": (
        _set("audit", to={"group_by": "country", "groups": ['DE"}']}),
        "audit → groups[0]",
        "must be letters, digits",
    ),
    "audit min_ratio above 1": (
        _set("audit", to={"group_by": "country", "groups": ["DE"], "min_ratio": 1.25}),
        "audit → min_ratio",
        "the lowest ratio of a group's grant rate to the best-served group's the program "
        "accepts: above 0 and at most 1 (0.8 is the four-fifths rule), got 1.25",
    ),
    "audit min_ratio of 0": (
        _set("audit", to={"group_by": "country", "groups": ["DE"], "min_ratio": 0}),
        "audit → min_ratio",
        "above 0 and at most 1 (0.8 is the four-fifths rule), got 0",
    ),
    "audit min_ratio as a percentage": (
        _set("audit", to={"group_by": "country", "groups": ["DE"], "min_ratio": "80%"}),
        "audit → min_ratio",
        "must be a number, got string '80%'",
    ),
    "audit with an unknown key": (
        _set("audit", to={"group_by": "country", "groups": ["DE"], "threshold": 0.8}),
        "audit",
        "threshold",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_a_bad_program_fails_at_load_naming_file_place_and_problem(
    tmp_path: Path, case: str
) -> None:
    mutate, where, problem = ERROR_CASES[case]
    document = copy.deepcopy(minimal())
    mutate(document)
    message = load_error(write(tmp_path, document))
    assert "bad-program.yaml" in message
    assert where in message
    assert problem in message


def test_the_error_carries_the_line_of_the_problem(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal(), sort_keys=False).replace("adult: age >=", "adult: agee >=")
    path = write_text(tmp_path, text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "agee" in row)
    with pytest.raises(ProgramError) as caught:
        load_program(path)
    assert caught.value.line == line
    assert caught.value.file == str(path)
    assert f"bad-program.yaml, line {line}: {CARD_RULE_AT}: " in str(caught.value)


def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    path = write_text(tmp_path, "id: x\nname: [unclosed\ncurrency: EUR\n")
    message = load_error(path)
    assert "bad-program.yaml, line " in message
    assert ", column " in message
    assert "invalid YAML" in message


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal(), sort_keys=False).replace(
        "  cost: 0.5\n", "  cost: 0.5\n  cost: 5\n"
    )
    message = load_error(write_text(tmp_path, text))
    assert "the key 'cost' appears twice" in message
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.strip() == "cost: 5")
    assert f"line {line}" in message


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal(), sort_keys=False).replace(
        "rewards:\n- id: points\n", "rewards:\n- &base\n  id: points\n"
    )
    text = text.replace("budgets:", "- <<: *base\n  id: more-points\n  value: 7\nbudgets:", 1)
    program = load_program(write_text(tmp_path, text))
    assert program.reward("more-points").value == 7.0
    assert program.reward("more-points").cost == 0.5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "must be a mapping of keys to values, got list"),
        ("just text\n", "must be a mapping of keys to values, got string"),
    ],
)
def test_a_file_that_is_not_a_program(tmp_path: Path, text: str, problem: str) -> None:
    message = load_error(write_text(tmp_path, text))
    assert message.startswith(str(tmp_path / "bad-program.yaml"))
    assert problem in message


def test_unreadable_files_are_program_errors(tmp_path: Path) -> None:
    assert "cannot read the file" in load_error(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"id: \xff\xfe\n")
    assert "not UTF-8" in load_error(binary)


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    first = load_program(write(tmp_path, minimal(), "a.yaml"))
    path = write(tmp_path, minimal(), "b.yaml")
    path.write_text(path.read_text() + "# a comment changes the version\n")
    second = load_program(path)
    assert len(first.source_sha256) == 64
    assert first.source_sha256 != second.source_sha256
    assert first.rewards == second.rewards


def test_load_builtin_accepts_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(), "custom.yaml")
    assert load_builtin(str(path)).id == "test-program"


def test_unknown_builtin_suggests_the_shipped_ones() -> None:
    with pytest.raises(ProgramError) as caught:
        load_builtin("retail")
    assert "no shipped program 'retail'" in str(caught.value)
    assert "'retail-loyalty'" in str(caught.value)


def test_a_shipped_file_must_be_named_after_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, minimal(), "other-name.yaml")
    monkeypatch.setattr(loader_module, "BUILTIN_DIR", tmp_path)
    assert loader_module.list_builtin() == ["other-name"]
    with pytest.raises(ProgramError) as caught:
        load_builtin("other-name")
    assert "other-name.yaml" in str(caught.value)
    assert "declares id 'test-program'" in str(caught.value)
