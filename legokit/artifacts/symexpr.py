"""Symbolic shape expressions of torch.export programs, parsed by legokit's own grammar and printed back.

A program's JSON carries sizes such as `Mul(Integer(4), Symbol('s31', positive=True, integer=True))`; torch's
deserializer hands that text to sympy, whose `sympify` evaluates Python. legokit parses it first with the grammar
below and gives torch only its own re-printed text, which names nothing but integers, declared symbols and the
functions listed here:

    expr   := "Integer(" int ")" | "Symbol(" quoted-name ("," flag "=" ("True"|"False"))* ")"
            | "true" | "false" | function "(" expr ("," expr)* ")"

Integers fit in 64 bits; names are declared by the program (its range constraints); text and nesting are capped;
a power has a small integer exponent and no power inside it, so that no expression can make sympy compute a huge
number.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

MAX_EXPR_CHARS = 4096
MAX_EXPR_DEPTH = 32
MAX_DIGITS = 19
MAX_EXPONENT = 8

# sympy (and torch.utils._sympy) functions a shape expression may call, with how many arguments each takes
FUNCTIONS: dict[str, tuple[int, int]] = {
    "Add": (2, 64),
    "Mul": (2, 64),
    "Min": (2, 64),
    "Max": (2, 64),
    "FloorDiv": (2, 2),
    "Mod": (2, 2),
    "PythonMod": (2, 2),
    "CleanDiv": (2, 2),
    "CeilDiv": (2, 2),
    "Pow": (2, 2),
    "Equality": (2, 2),
    "Unequality": (2, 2),
    "StrictLessThan": (2, 2),
    "LessThan": (2, 2),
    "StrictGreaterThan": (2, 2),
    "GreaterThan": (2, 2),
    "And": (2, 64),
    "Or": (2, 64),
    "Not": (1, 1),
}
# assumptions torch writes on its size symbols
FLAGS = frozenset({"positive", "integer", "nonnegative", "real", "finite"})
CONSTANTS = frozenset({"true", "false"})


class ExprError(ValueError):
    """A shape expression outside legokit's grammar; the message says where."""


@dataclass(frozen=True)
class Expr:
    """A parsed expression: an integer, a symbol (with its assumptions), a constant, or a function of expressions."""

    head: str
    value: int | str | None = None
    args: tuple[Expr, ...] = ()
    flags: tuple[tuple[str, bool], ...] = ()

    def text(self) -> str:
        """The expression in sympy's `srepr` form, printed by legokit from the parsed tree."""
        if self.head == "Integer":
            return f"Integer({self.value})"
        if self.head == "Symbol":
            flags = "".join(f", {name}={value}" for name, value in self.flags)
            return f"Symbol('{self.value}'{flags})"
        if self.head in CONSTANTS:
            return self.head
        return f"{self.head}({', '.join(arg.text() for arg in self.args)})"

    def heads(self) -> set[str]:
        found = {self.head}
        for arg in self.args:
            found |= arg.heads()
        return found


def symbol_name(name: object) -> bool:
    """A size symbol's name as torch makes them: one to three lowercase letters, then up to 9 digits (s31, u0)."""
    if not isinstance(name, str) or not name.isascii() or len(name) > 12:
        return False
    letters = len(name) - len(name.lstrip("abcdefghijklmnopqrstuvwxyz"))
    return 1 <= letters <= 3 and name[letters:].isdigit() and len(name) - letters <= 9


class _Reader:
    """A cursor over the expression text; every method consumes what it names or raises ExprError."""

    def __init__(self, text: str):
        self.text, self.at = text, 0

    def fail(self, what: str) -> ExprError:
        return ExprError(f"{what} at character {self.at}")

    def skip_spaces(self) -> None:
        while self.at < len(self.text) and self.text[self.at] == " ":
            self.at += 1

    def take(self, token: str) -> bool:
        self.skip_spaces()
        if self.text.startswith(token, self.at):
            self.at += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.take(token):
            raise self.fail(f"expected {token!r}")

    def word(self) -> str:
        self.skip_spaces()
        start = self.at
        while self.at < len(self.text) and (self.text[self.at].isascii() and self.text[self.at].isalnum()):
            self.at += 1
        return self.text[start : self.at]

    def integer(self) -> int:
        self.skip_spaces()
        start = self.at
        if self.text.startswith("-", self.at):
            self.at += 1
        digits = self.at
        while self.at < len(self.text) and self.text[self.at] in "0123456789":
            self.at += 1
        if self.at == digits or self.at - digits > MAX_DIGITS:
            raise self.fail("expected an integer of at most 19 digits")
        value = int(self.text[start : self.at])
        if not -(2**63) <= value < 2**63:
            raise self.fail("an integer outside 64 bits")
        return value

    def quoted(self) -> str:
        self.expect("'")
        end = self.text.find("'", self.at)
        if end < 0:
            raise self.fail("an unterminated name")
        name, self.at = self.text[self.at : end], end + 1
        return name


def _symbol(reader: _Reader, declared: Callable[[str], bool]) -> Expr:
    name = reader.quoted()
    if not symbol_name(name) or not declared(name):
        raise reader.fail(f"symbol {name[:20]!r} is not one the program declares")
    flags: list[tuple[str, bool]] = []
    while reader.take(","):
        flag = reader.word()
        if flag not in FLAGS or any(flag == seen for seen, _ in flags):
            raise reader.fail(f"symbol assumption {flag[:20]!r} is not allowed")
        reader.expect("=")
        value = reader.word()
        if value not in ("True", "False"):
            raise reader.fail("an assumption must be True or False")
        flags.append((flag, value == "True"))
    reader.expect(")")
    return Expr("Symbol", name, flags=tuple(flags))


def _expr(reader: _Reader, declared: Callable[[str], bool], depth: int) -> Expr:
    if depth > MAX_EXPR_DEPTH:
        raise reader.fail(f"nested over {MAX_EXPR_DEPTH} levels")
    head = reader.word()
    if head in CONSTANTS:
        return Expr(head)
    reader.expect("(")
    if head == "Integer":
        value = reader.integer()
        reader.expect(")")
        return Expr("Integer", value)
    if head == "Symbol":
        return _symbol(reader, declared)
    if head not in FUNCTIONS:
        raise reader.fail(f"function {head[:20]!r} is not allowed")
    args = [_expr(reader, declared, depth + 1)]
    while reader.take(","):
        args.append(_expr(reader, declared, depth + 1))
    reader.expect(")")
    low, high = FUNCTIONS[head]
    if not low <= len(args) <= high:
        raise reader.fail(f"{head} takes {low} to {high} arguments, not {len(args)}")
    expr = Expr(head, args=tuple(args))
    if head == "Pow" and not _small_power(expr):
        raise reader.fail(f"a power needs an integer exponent from 0 to {MAX_EXPONENT} and no power in its base")
    return expr


def _small_power(expr: Expr) -> bool:
    base, exponent = expr.args
    return exponent.head == "Integer" and 0 <= int(exponent.value or 0) <= MAX_EXPONENT and "Pow" not in base.heads()


def parse_expr(text: object, declared: Collection[str] | Callable[[str], bool]) -> Expr:  # checked: own parser
    """Parse one expression whose symbols must all be `declared`; anything else raises ExprError."""
    if not isinstance(text, str) or not text.isascii():
        raise ExprError("an expression must be ASCII text")
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"an expression of {len(text):,} characters (cap {MAX_EXPR_CHARS:,})")
    known = declared if callable(declared) else declared.__contains__
    reader = _Reader(text)
    expr = _expr(reader, known, 0)
    reader.skip_spaces()
    if reader.at != len(text):
        raise reader.fail("text after the expression")
    return expr
