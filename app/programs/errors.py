"""The one error a program file can produce, and the "did you mean" helper.

Every problem found while loading a program is a :class:`ProgramError` whose
message says which file, where inside it and what is wrong, so that whoever
edits the file can fix it without reading code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProgramError(ValueError):
    """A program file (or an expression in it) that cannot be used.

    ``file``, ``line`` and ``column`` are filled in by the loader; an error
    raised while compiling a lone expression carries only ``where`` and
    ``problem``.
    """

    def __init__(
        self,
        problem: str,
        *,
        where: str = "",
        file: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.problem = problem
        self.where = where
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self._message())

    def _message(self) -> str:
        position = self.file
        if self.line is not None:
            position += f", line {self.line}" if position else f"line {self.line}"
        if self.column is not None:
            position += f", column {self.column}"
        return ": ".join(part for part in (position, self.where, self.problem) if part)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing if none is close."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_of(candidates: Iterable[str]) -> str:
    """The candidates as a readable, sorted list: ``'a', 'b', 'c'``."""
    return ", ".join(repr(candidate) for candidate in sorted(candidates))
