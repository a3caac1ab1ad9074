"""Safe checker for Countdown answers. The expression comes from model output, so it is treated as hostile.

No eval/ast/sympy: a tokenizer and a recursive-descent parser over a tiny grammar, evaluated exactly with
``fractions.Fraction``:

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := ('+' | '-')* (NUMBER | '(' expr ')')
    NUMBER := 1-6 ASCII digits (integers only)

Whitespace (space, tab, newline, carriage return) may appear between tokens.

Decisions:
- Unary minus/plus (repeated too: "--9") is accepted and evaluated as Python does, because the released
  checker (Python eval behind a character filter) accepts it: "-9+(4 * 63)+10" scores as 253 with [63, 4, 9, 10].
  Signs bind tighter than * and /, as in Python; the numbers used are the digits written, signs aside.
- Limits checked before any work: at most 200 characters, numbers of at most 6 digits, parentheses nested at
  most 50 deep. With these, the values stay small and the recursion shallow whatever the input.
- Division by zero makes the expression invalid (evaluate -> None); no exception escapes.
- Leading zeros ("07") are read as the integer they spell.
"""
from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Sequence

MAX_CHARS = 200
MAX_DIGITS = 6
MAX_DEPTH = 50
TOLERANCE = Fraction(1, 100_000)
_WHITESPACE = " \t\n\r"
_OPERATORS = "+-*/()"


class _Invalid(Exception):
    """Internal: the expression is not in the grammar (never escapes this module)."""


def _tokenize(expr: str) -> list[int | str]:
    tokens: list[int | str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in _WHITESPACE:
            i += 1
        elif "0" <= c <= "9":  # not str.isdigit(): that accepts '٣', '²', '３'
            j = i
            while j < n and "0" <= expr[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise _Invalid
            tokens.append(int(expr[i:j]))
            i = j
        elif c in _OPERATORS:
            tokens.append(c)
            i += 1
        else:
            raise _Invalid
    return tokens


class _Parser:
    def __init__(self, tokens: list[int | str]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []
        self.div_by_zero = False
        self.value = Fraction(0)

    def _peek(self) -> int | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr(0)
        if self.pos != len(self.tokens):  # leftovers, e.g. an unmatched ')'
            raise _Invalid
        return value

    def _expr(self, depth: int) -> Fraction:
        value = self._term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self, depth: int) -> Fraction:
        value = self._factor(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                self.div_by_zero = True  # keep parsing so the numbers used are still known
            else:
                value = value / rhs
        return value

    def _factor(self, depth: int) -> Fraction:
        negative = False
        while self._peek() in ("+", "-"):  # unary signs, iteratively: a run of them costs no recursion
            negative ^= self.tokens[self.pos] == "-"
            self.pos += 1
        value = self._primary(depth)
        return -value if negative else value

    def _primary(self, depth: int) -> Fraction:
        tok = self._peek()
        if isinstance(tok, int):
            self.pos += 1
            self.numbers.append(tok)
            return Fraction(tok)
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise _Invalid
            self.pos += 1
            value = self._expr(depth + 1)
            if self._peek() != ")":
                raise _Invalid
            self.pos += 1
            return value
        raise _Invalid  # an operator where a number belongs ('**', '*/', ...) or end of input


def _parse(expr: object) -> _Parser | None:
    """Parse ``expr``: the finished parser (value, numbers, div_by_zero) or None if not in the grammar."""
    if not isinstance(expr, str) or len(expr) > MAX_CHARS:
        return None
    try:
        parser = _Parser(_tokenize(expr))
        parser.value = parser.parse()
    except (_Invalid, RecursionError):
        return None
    return parser


def evaluate(expr: str) -> Fraction | None:
    """The exact value of ``expr``, or None if it is malformed or divides by zero."""
    parser = _parse(expr)
    if parser is None or parser.div_by_zero:
        return None
    return parser.value


def check_answer(expr: str, numbers: Sequence[int], target: int | float) -> bool:
    """True iff ``expr`` is valid, uses exactly the multiset ``numbers`` (each once, all of them) and equals
    ``target`` within 1e-5."""
    parser = _parse(expr)
    if parser is None or parser.div_by_zero:
        return False
    try:
        if Counter(parser.numbers) != Counter(numbers):
            return False
        return abs(parser.value - Fraction(target)) < TOLERANCE
    except (TypeError, ValueError, OverflowError):  # malformed numbers/target from the caller's data
        return False
