"""A small, safe expression language for eligibility rules, values and costs.

An expression is a Python expression restricted to what a rule needs:
``and or not``, ``+ - * / %``, comparisons including ``in`` and ``not in``,
``a if c else b``, numbers, strings, ``True False None``, lists, tuples and sets
of constants, the names the program allows and the functions ``min max abs
round``. Everything else (attribute access, subscripts, lambdas,
comprehensions, other calls, ``**``, f-strings, ``:=``) is refused when the
program loads, with the column of the offending part.

Missing values: a name whose value is ``None`` or absent is *missing*. Any
comparison, arithmetic, truth test or function call that needs a missing value
makes the expression undetermined (:class:`Undetermined`, or ``None`` from
:func:`evaluate_rule`) instead of quietly comparing unequal. ``and`` and
``or`` follow three-valued logic, so ``purchases >= 10 or segment == 'vip'`` is
true for a user with 12 purchases and no segment, whichever side comes first.

Evaluation runs a code object compiled once at load time, with no builtins;
``*`` and ``%`` accept numbers only, so neither string repetition nor
``%``-formatting can be turned into a memory bomb by a value from an event.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import CodeType
from typing import NoReturn

from app.programs.errors import ProgramError, did_you_mean, one_of
from app.programs.names import FUNCTIONS, protected, protected_term_in

# Long enough for a list of every EU country code; longer rules belong in several rules.
MAX_SOURCE_CHARS = 2000
# Deeper trees are not rules anyone means to write, and they keep the checker's recursion bounded.
MAX_DEPTH = 64
# round(x, n) with a large negative n on an integer computes 10**-n: keep n small.
MAX_ROUND_DIGITS = 20

# What a missing or unusable value raises inside the compiled code.
_UNDETERMINED_ERRORS = (TypeError, ArithmeticError, ValueError)

_UNARY_OPS = (ast.Not, ast.USub, ast.UAdd)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod)
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_CONSTANT_TYPES = (bool, int, float, str, type(None))
_ARITY = {"abs": (1, 1), "round": (1, 2), "min": (1, None), "max": (1, None)}

# What a refused construct is called in the error, for the ones users are likely to try.
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access (x.y)",
    ast.Subscript: "subscript (x[i])",
    ast.Slice: "slice (x[a:b])",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Dict: "dict",
    ast.Starred: "star unpacking (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Pow: "power operator (**)",
    ast.FloorDiv: "floor division (//); use round(a / b)",
    ast.MatMult: "operator @",
    ast.LShift: "operator <<",
    ast.RShift: "operator >>",
    ast.BitOr: "operator | (use 'or')",
    ast.BitAnd: "operator & (use 'and')",
    ast.BitXor: "operator ^",
    ast.Invert: "operator ~ (use 'not')",
    ast.Is: "'is' (use ==)",
    ast.IsNot: "'is not' (use !=)",
}
# YAML spells these in lower case; in an expression they are Python's.
_YAML_CONSTANTS = {"true": "True", "false": "False", "null": "None", "none": "None"}


@dataclass(frozen=True, slots=True)
class ValueKind:
    """What a name's value is whenever it is present: a number, or a string (one of
    ``values``, or matching ``pattern``, when those are known). Given for the engine's
    names, so that a rule comparing one with a value it can never have (``amount >=
    '20'``, ``channel == 'fax'``, ``currency == 'eur'``) is refused when the program
    loads, rather than found out when its reward is never granted."""

    number: bool
    values: tuple[str, ...] = ()
    pattern: tuple[re.Pattern[str], str] | None = None  # and how it reads


class Undetermined(Exception):  # noqa: N818 -- an expected outcome, not a fault
    """The expression needs a value the engine does not have, or cannot use.

    ``missing`` names the expression's names whose value was ``None`` or absent;
    it is empty when a value was present but unusable (a string compared with a
    number, a division by zero).
    """

    def __init__(self, source: str, missing: tuple[str, ...]) -> None:
        self.source = source
        self.missing = missing
        detail = f"missing {', '.join(missing)}" if missing else "a value it needs is unusable"
        super().__init__(f"{source!r} is undetermined: {detail}")


@dataclass(frozen=True, slots=True)
class Expression:
    """A checked, compiled expression. Build it with :func:`compile_expression`.

    ``names`` are the program names it reads (functions excluded): exactly the
    keys :meth:`evaluate` looks up.
    """

    source: str
    names: frozenset[str]
    code: CodeType = field(repr=False, compare=False)

    def evaluate(self, env: Mapping[str, object]) -> object:
        """The expression's value with the names taken from ``env``.

        Raises :class:`Undetermined` when the value depends on a missing one.
        Cost per call (CPython 3.11, timeit, best of 5): about 0.5 µs for
        ``age >= 18``, 1.1 µs for ``min(0.05 * amount, 20)`` and 1.2 µs for
        ``purchases >= 1 and country in ['DE', 'FR', 'NL']`` (the lambdas behind
        three-valued ``and``/``or`` cost a little). Nothing is parsed or compiled here.
        """
        namespace = dict(_RUNTIME)
        for name in self.names:
            value = env.get(name)
            namespace[name] = _MISSING if value is None else value
        try:
            result = eval(self.code, namespace)
        except _UNDETERMINED_ERRORS:
            raise self._undetermined(env) from None
        if result is None or result is _MISSING:
            raise self._undetermined(env)
        return result

    def _undetermined(self, env: Mapping[str, object]) -> Undetermined:
        missing = tuple(sorted(name for name in self.names if env.get(name) is None))
        return Undetermined(self.source, missing)


def evaluate_rule(expression: Expression, env: Mapping[str, object]) -> bool | None:
    """Whether the rule holds: its truthiness, or ``None`` if it is undetermined."""
    try:
        return bool(expression.evaluate(env))
    except Undetermined:
        return None


def compile_expression(
    source: str,
    *,
    known_names: frozenset[str],
    where: str,
    kinds: Mapping[str, ValueKind] | None = None,
) -> Expression:
    """Check ``source`` and compile it once; a :class:`ProgramError` says what is wrong.

    ``known_names`` are the names it may read; ``where`` says where the
    expression comes from and starts every error message; ``kinds`` what some
    names' values are, to refuse comparisons with values they never have.
    """
    # YAML block scalars may carry line breaks; a rule is one line to Python, and
    # replacing each break by one space keeps every column where it was.
    text = re.sub(r"[\r\n]", " ", source).strip()
    if not text:
        raise ProgramError("the expression is empty", where=where)
    if len(text) > MAX_SOURCE_CHARS:
        raise ProgramError(
            f"the expression is longer than {MAX_SOURCE_CHARS} characters; split it into rules",
            where=where,
        )
    tree = _parse(text, where)
    checker = _Checker(text, known_names, where, kinds or {})
    checker.check(tree.body, depth=1)
    return Expression(text, frozenset(checker.names), _compile(tree, text, where))


def _parse(text: str, where: str) -> ast.Expression:
    try:
        # Warnings (an invalid escape such as '\d') become errors: a rule that
        # Python only half understands is a rule to fix.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return ast.parse(text, mode="eval")
    except SyntaxError as error:
        # Python reports offset 0 when the expression ends before it is complete.
        column = error.offset if error.offset and error.offset <= len(text) else None
        problem = f"syntax error: {error.msg}"
        raise ProgramError(_at(text, column, problem), where=where) from None
    except (ValueError, RecursionError, MemoryError, Warning) as error:
        raise ProgramError(f"cannot parse {text!r}: {error}", where=where) from None


def _compile(tree: ast.Expression, text: str, where: str) -> CodeType:
    rewritten = ast.fix_missing_locations(_Rewriter().visit(tree))
    try:
        return compile(rewritten, "<expression>", "eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ProgramError(f"cannot compile {text!r}: {error}", where=where) from None


class _Checker:
    """Walks the tree and refuses anything outside the language; collects the names read."""

    def __init__(
        self,
        text: str,
        known_names: frozenset[str],
        where: str,
        kinds: Mapping[str, ValueKind],
    ) -> None:
        self.text = text
        self.known_names = known_names
        self.where = where
        self.kinds = kinds
        self.names: set[str] = set()

    def check(self, node: ast.AST, *, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(node, f"the expression is nested more than {MAX_DEPTH} levels deep")
        for child in self.children_of(node):
            self.check(child, depth=depth + 1)

    def children_of(self, node: ast.AST) -> Sequence[ast.AST]:
        """The sub-expressions to check next, once ``node`` itself is allowed."""
        if isinstance(node, ast.BoolOp):
            return node.values  # ast has no BoolOp other than and/or
        if isinstance(node, ast.UnaryOp):
            self.check_operator(node.op, node, _UNARY_OPS)
            return [node.operand]
        if isinstance(node, ast.BinOp):
            self.check_operator(node.op, node, _BIN_OPS)
            self.check_arithmetic(node)
            return [node.left, node.right]
        if isinstance(node, ast.Compare):
            for operator in node.ops:
                self.check_operator(operator, node, _COMPARE_OPS)
            self.check_comparison(node)
            return [node.left, *node.comparators]
        if isinstance(node, ast.IfExp):
            return [node.test, node.body, node.orelse]
        if isinstance(node, ast.Call):
            return self.check_call(node)
        if isinstance(node, ast.Name):
            self.check_name(node)
        elif isinstance(node, ast.Constant):
            self.check_constant(node)
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            self.check_collection(node)
        else:
            self.fail(node, f"{_construct(node)} is not allowed")
        return []

    def check_comparison(self, node: ast.Compare) -> None:
        """Refuse comparing a name of known kind with a constant it can never equal or be
        ordered against (each member of a list, for ``in``)."""
        left = node.left
        for operator, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(operator, ast.In | ast.NotIn):
                if isinstance(right, ast.List | ast.Tuple | ast.Set):
                    for element in right.elts:
                        self.check_value(left, element)
            else:
                self.check_value(left, right)
                self.check_value(right, left)
            left = right

    def check_arithmetic(self, node: ast.BinOp) -> None:
        """Refuse arithmetic on a name that holds a string, or on a number name and a
        string constant: it is undetermined for every user."""
        for operand, other in ((node.left, node.right), (node.right, node.left)):
            if not isinstance(operand, ast.Name) or operand.id not in self.kinds:
                continue
            if not self.kinds[operand.id].number:
                self.fail(operand, f"{operand.id!r} is a string; arithmetic takes numbers")
            if isinstance(_literal(other), str):
                self.fail(other, f"{operand.id!r} is a number; arithmetic takes no strings")

    def check_value(self, name_node: ast.AST, constant: ast.AST) -> None:
        if not isinstance(name_node, ast.Name) or name_node.id not in self.kinds:
            return
        name, kind, value = name_node.id, self.kinds[name_node.id], _literal(constant)
        if value is _NOT_A_LITERAL or value is None or isinstance(value, bool):
            return
        if kind.number:
            if isinstance(value, str):
                hint = f"; write {value} without quotes" if _is_number(value) else ""
                self.fail(constant, f"{name!r} is a number, never the string {value!r}{hint}")
            return
        if not isinstance(value, str):
            self.fail(constant, f"{name!r} is a string, never the number {value!r}")
        if kind.values and value not in kind.values:
            self.fail(
                constant,
                f"{name!r} is one of {one_of(kind.values)}, never {value!r}"
                f"{did_you_mean(value, kind.values)}",
            )
        if kind.pattern is not None and not kind.pattern[0].fullmatch(value):
            self.fail(constant, f"{name!r} is {kind.pattern[1]}, never {value!r}")

    def check_operator(
        self, operator: ast.AST, node: ast.AST, allowed: tuple[type[ast.AST], ...]
    ) -> None:
        if not isinstance(operator, allowed):
            self.fail(node, f"{_construct(operator)} is not allowed")

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if name in FUNCTIONS:
            self.fail(node, f"function {name!r} must be called, as in {name}(a, b)")
        if name.startswith("_"):
            # Python's dunders are the way out of a sandbox, and the helpers use "_".
            self.fail(node, f"names starting with '_' are not allowed: {name!r}")
        term = protected_term_in(name)
        if term is not None:
            self.fail(node, f"{protected(name, term)} and may not be used in rules")
        if name not in self.known_names:
            self.fail(node, f"unknown name {name!r}{self.hint_for(name)}")
        self.names.add(name)

    def hint_for(self, name: str) -> str:
        if name in _YAML_CONSTANTS:
            return f" (write {_YAML_CONSTANTS[name]})"
        return did_you_mean(name, self.known_names) or f"; known names: {one_of(self.known_names)}"

    def check_constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, _CONSTANT_TYPES):
            kind = type(node.value).__name__
            self.fail(node, f"a {kind} constant is not allowed; use numbers and strings")

    def check_collection(self, node: ast.List | ast.Tuple | ast.Set) -> None:
        for element in node.elts:
            if _literal(element) is _NOT_A_LITERAL:
                self.fail(
                    element, "a list, tuple or set may hold only numbers, strings, True/False/None"
                )

    def check_call(self, node: ast.Call) -> Sequence[ast.AST]:
        if not isinstance(node.func, ast.Name):
            what = _construct(node.func)
            self.fail(node.func, f"{what} is not allowed; only {one_of(FUNCTIONS)} may be called")
        name = node.func.id
        if name not in FUNCTIONS:
            self.fail(node, f"call to {name!r} is not allowed; functions: {one_of(FUNCTIONS)}")
        if node.keywords:
            self.fail(node.keywords[0], f"{name}() takes positional arguments only")
        self.check_arity(node, name)
        if name == "round" and len(node.args) == 2:
            self.check_round_digits(node.args[1])
        return node.args

    def check_arity(self, node: ast.Call, name: str) -> None:
        low, high = _ARITY[name]
        count = len(node.args)
        if count < low or (high is not None and count > high):
            self.fail(node, f"{name}() takes {_arity_text(low, high)} argument(s), got {count}")

    def check_round_digits(self, node: ast.AST) -> None:
        digits = _literal(node)
        if (
            not isinstance(digits, int)
            or isinstance(digits, bool)
            or abs(digits) > MAX_ROUND_DIGITS
        ):
            self.fail(
                node,
                "round()'s digits must be a whole number from "
                f"-{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}",
            )

    def fail(self, node: ast.AST, problem: str) -> NoReturn:
        column = _column(self.text, getattr(node, "col_offset", 0))
        raise ProgramError(_at(self.text, column, problem), where=self.where)


_NOT_A_LITERAL = object()


def _literal(node: ast.AST) -> object:
    """The constant a collection element or round() digit stands for, signed numbers included."""
    if isinstance(node, ast.Constant) and isinstance(node.value, _CONSTANT_TYPES):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    return _NOT_A_LITERAL


def _is_number(text: str) -> bool:
    return _DECIMAL.fullmatch(text.strip()) is not None


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def _arity_text(low: int, high: int | None) -> str:
    if high is None:
        return f"at least {low}"
    return str(low) if high == low else f"{low} or {high}"


def _construct(node: ast.AST) -> str:
    return _CONSTRUCTS.get(type(node), type(node).__name__)


def _at(text: str, column: int | None, problem: str) -> str:
    """``'age >= x', column 8: unknown name 'x'``: the expression, where in it, what."""
    position = "at the end" if column is None else f"column {column}"
    return f"{text!r}, {position}: {problem}"


def _column(text: str, byte_offset: int) -> int:
    """1-based character column; ast reports offsets in UTF-8 bytes."""
    return len(text.encode()[:byte_offset].decode(errors="replace")) + 1


class _Rewriter(ast.NodeTransformer):
    """Turns the checked tree into the one that runs.

    ``*`` and ``%`` become calls of number-only helpers; ``and`` and ``or``
    become calls of the three-valued helpers, each operand wrapped in a lambda
    so that it is still evaluated lazily, left to right.
    """

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        helper = {ast.Mult: "_multiply", ast.Mod: "_remainder"}.get(type(node.op))
        if helper is None:
            return node
        return ast.copy_location(_call(helper, [node.left, node.right]), node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        helper = "_any_of" if isinstance(node.op, ast.Or) else "_all_of"
        thunks: list[ast.expr] = [_thunk(value) for value in node.values]
        return ast.copy_location(_call(helper, thunks), node)


def _call(helper: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=ast.Name(id=helper, ctx=ast.Load()), args=args, keywords=[])


def _thunk(body: ast.expr) -> ast.Lambda:
    no_arguments = ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )
    return ast.Lambda(args=no_arguments, body=body)


class _Missing:
    """Stands in for a missing value: every use of it raises TypeError (undetermined).

    ``None`` itself would compare unequal to everything, so ``country != 'DE'``
    would hold for a user whose country is unknown.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise TypeError("a value is missing")

    def __ne__(self, other: object) -> bool:
        raise TypeError("a value is missing")

    def __hash__(self) -> int:
        raise TypeError("a value is missing")

    def __bool__(self) -> bool:
        raise TypeError("a value is missing")

    def __contains__(self, item: object) -> bool:
        raise TypeError("a value is missing")

    def __iter__(self) -> Iterator[object]:
        raise TypeError("a value is missing")

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _multiply(left: object, right: object) -> object:
    # Numbers only: 'x' * 10**9 (or a list times a count) would allocate without bound.
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left * right
    raise TypeError("'*' multiplies numbers only")


def _remainder(left: object, right: object) -> object:
    # Numbers only: for a string, '%' formats, and '%999999999d' % 1 is a gigabyte.
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left % right
    raise TypeError("'%' takes numbers only")


def _any_of(*operands: Callable[[], object]) -> object:
    """Three-valued ``or``: the first true operand, even past undetermined ones."""
    undetermined = False
    value: object = False
    for operand in operands:
        try:
            value = operand()
            if value:
                return value
        except _UNDETERMINED_ERRORS:
            undetermined = True
    if undetermined:
        raise TypeError("undetermined and no operand is true")
    return value


def _all_of(*operands: Callable[[], object]) -> object:
    """Three-valued ``and``: the first false operand, even past undetermined ones."""
    undetermined = False
    value: object = True
    for operand in operands:
        try:
            value = operand()
            if not value:
                return value
        except _UNDETERMINED_ERRORS:
            undetermined = True
    if undetermined:
        raise TypeError("undetermined and no operand is false")
    return value


# The globals every evaluation starts from: no builtins, the allowed functions,
# the helpers the rewriter calls. Program names never start with "_", so they
# cannot shadow a helper.
_RUNTIME: dict[str, object] = {
    "__builtins__": {},
    "abs": abs,
    "max": max,
    "min": min,
    "round": round,
    "_all_of": _all_of,
    "_any_of": _any_of,
    "_multiply": _multiply,
    "_remainder": _remainder,
}
