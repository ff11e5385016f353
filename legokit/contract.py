"""A trained block's contract: what its inputs and outputs mean, so that blocks trained apart can be checked before
they are joined. Input schema (a table's feature names in order, a text block's tokenizer), and task contract (a
survival block's time unit and bin edges, a classifier's class names). Pure data, validated once, here."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from legokit.errors import ConfigError
from legokit.tasks import TaskSpec

# days per unit: a month is a twelfth of a Julian year
TIME_UNITS: dict[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}
MAX_NAMES = 1 << 20  # feature names, class names or bin edges one contract may hold
MAX_NAME_CHARS = 1024
MAX_TOTAL_CHARS = 16 << 20  # all of one contract's names: well within a header's 100 MB
SHOWN = 8  # names quoted in one error message
# how legokit reads a number a user writes (a CSV cell, --bins): ASCII digits, an optional leading '-', an optional
# decimal point, an optional exponent; nothing else (no '+', '_', other scripts' digits, spaces, inf, nan, 0x).
# [0-9], not \d (which matches every script's digits); the fraction only after a '.', so no backtracking blow-up
NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
NUMBER_RULE = "a number is ASCII digits with an optional leading '-', '.' and exponent, like -1.5e3, nothing around"


def _names(what: str, names: Any) -> tuple[str, ...]:
    """Non-empty, distinct, bounded strings; else a ConfigError naming `what`."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise ConfigError(f"{what} must be a list of names, got {type(names).__name__}")
    if len(names) > MAX_NAMES:
        raise ConfigError(f"{what}: {len(names):,} names; legokit caps a contract at {MAX_NAMES:,}")
    seen: set[str] = set()
    total = 0
    for name in names:
        problem = name_problem(name)
        if problem:
            raise ConfigError(f"{what}: {problem}")
        if name in seen:
            raise ConfigError(f"{what}: {name[:60]!r} appears twice")
        seen.add(name)
        total += len(name)
    if total > MAX_TOTAL_CHARS:
        raise ConfigError(f"{what}: {total:,} characters in all; legokit caps a contract at {MAX_TOTAL_CHARS:,}")
    return tuple(names)


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a feature or class name (None when it can): a non-empty string of at most
    MAX_NAME_CHARS characters, without surrounding spaces or control characters (a terminal would run them)."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return f"a name must be a non-empty string without surrounding spaces, got {repr(name)[:60]}"
    if len(name) > MAX_NAME_CHARS:
        return f"a name of {len(name):,} characters, {repr(name)[:40]}...; the cap is {MAX_NAME_CHARS:,}"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"a name holds a control character: {repr(name)[:60]}"
    return None


def listed(names: Sequence[str], most: int = SHOWN) -> str:
    """Names for a message: the first `most`, then how many in all."""
    shown = ", ".join(str(n)[:60] for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def check_time_unit(unit: Any) -> str:
    if unit not in TIME_UNITS:
        raise ConfigError(f"time unit must be one of {', '.join(TIME_UNITS)}, got {repr(unit)[:40]}")
    return unit


def check_edges(edges: Any, strict: bool = False) -> tuple[float, ...]:
    """Inner survival bin edges: finite, positive, non-decreasing numbers (quantiles of tied times can repeat: that
    bin is empty); `strict` (edges a user gives) refuses repeats."""
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence):
        raise ConfigError(f"bin edges must be a list of numbers, got {type(edges).__name__}")
    if len(edges) > MAX_NAMES:
        raise ConfigError(f"{len(edges):,} bin edges; legokit caps a contract at {MAX_NAMES:,}")
    values = []
    for edge in edges:
        try:
            value = float(edge) if isinstance(edge, (int, float)) and not isinstance(edge, bool) else math.nan
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"bin edges must be positive finite numbers, got {repr(edge)[:40]}")
        values.append(value)
    if any(b < a or (strict and b == a) for a, b in zip(values, values[1:])):
        raise ConfigError(
            f"bin edges must increase{' strictly' if strict else ''}, got {listed([f'{v:g}' for v in values])}"
        )
    return tuple(values)


def number_value(text: str) -> float | None:
    """The float `text` spells by legokit's number grammar (`NUMBER`), or None when it is no such number; may be
    infinite (1e999). Every number read from a user's text goes through here, never through float() alone."""
    return float(text) if NUMBER.fullmatch(text) else None


def parse_edges(text: str) -> tuple[float, ...]:
    """Read `--bins 365,730,1460`: the inner edges of the survival bins (n - 1 numbers for n bins)."""
    values = [number_value(part) for part in text.split(",")]
    if any(value is None for value in values):
        raise ConfigError(
            f"--bins {text[:60]!r}: give increasing numbers separated by commas, e.g. 365,730,1460 ({NUMBER_RULE})"
        )
    return check_edges(values, strict=True)


MAX_TIMES = 1000  # times one prediction or evaluation reports S(t) at


def parse_times(text: str) -> tuple[float, ...]:
    """Read `--times 365,730,1825`: times at which to report S(t), in the model's time unit; non-negative,
    finite and strictly increasing, at most MAX_TIMES."""
    parts = text.split(",") if text.strip() else []
    if not parts:
        raise ConfigError("--times is empty: give times separated by commas, e.g. 365,730,1825")
    if len(parts) > MAX_TIMES:
        raise ConfigError(f"--times: {len(parts):,} times; at most {MAX_TIMES:,}")
    values = [number_value(part) for part in parts]
    for part, value in zip(parts, values):
        if value is None or not math.isfinite(value):
            raise ConfigError(f"--times: {part[:40]!r} is not a finite number ({NUMBER_RULE})")
        if value < 0:
            raise ConfigError(f"--times: {part[:40]} is negative; times are >= 0")
    times = tuple(float(v) + 0.0 for v in values if v is not None)  # + 0.0: -0 is 0
    for before, after in zip(times, times[1:]):
        if after <= before:
            raise ConfigError(f"--times must increase strictly; {after:g} follows {before:g}")
    return times


def parse_names(text: str, what: str = "--classes") -> tuple[str, ...]:
    """Read `--classes no,yes`: names separated by commas."""
    return _names(what, [part.strip() for part in text.split(",")])


def check_task_terms(
    task: TaskSpec, edges: Sequence[float] | None, time_unit: str | None, classes: Sequence[str] | None
) -> None:
    """Bin edges and a time unit only for survival (n - 1 edges for n bins); class names only for classifiers, one
    per output (binary: two, negative first). One rule for a block's contract and for what a user gives."""
    if task.kind != "survival" and (edges is not None or time_unit is not None):
        raise ConfigError(f"bin edges and a time unit are for survival tasks; the task is {task}")
    if edges is not None and len(edges) != task.n - 1:
        raise ConfigError(
            f"{len(edges)} bin edges make {len(edges) + 1} bins, but the task is {task}: give --task "
            f"survival:{len(edges) + 1}"
        )
    if classes is not None:
        if task.kind == "survival":
            raise ConfigError("class names are for classifiers; the task is survival")
        wanted = 2 if task.kind == "binary" else task.n
        if len(classes) != wanted:
            raise ConfigError(f"task {task} takes {wanted} class names, got {len(classes)}")


def tokenizer_digest(tokenizer: str) -> str:
    """The identity of a text block's tokenizer: the sha256 of its tokenizer.json text."""
    return hashlib.sha256(tokenizer.encode("utf-8", errors="surrogatepass")).hexdigest()


def time_scale(data_unit: str | None, model_unit: str | None) -> float:
    """The factor that turns times in `data_unit` into `model_unit`; 1 when either is not known."""
    if data_unit is None or model_unit is None:
        return 1.0
    return TIME_UNITS[data_unit] / TIME_UNITS[model_unit]


@dataclass(frozen=True)
class Contract:
    """What a trained block's inputs and outputs mean. None: not recorded (files written before contracts, or not
    given by the data).

    features: a table's feature names in input order (its columns are aligned by name); tokenizer: sha256 of a text
    block's tokenizer.json; time_unit and edges: a survival block's unit of time and the n - 1 inner edges of its n
    bins (a time t falls in bin k when edge_k <= t < edge_k+1, with edge_0 = 0 and edge_n = infinity); classes:
    the names of a classifier's outputs in order (multiclass: one per class; binary: the negative then the positive
    class; multilabel: one per label column).
    """

    features: tuple[str, ...] | None = None
    tokenizer: str | None = None
    time_unit: str | None = None
    edges: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.features is not None:
            object.__setattr__(self, "features", _names("feature names", self.features))
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str)
            or len(self.tokenizer) != 64
            or any(c not in "0123456789abcdef" for c in self.tokenizer)
        ):
            raise ConfigError(f"the tokenizer's identity must be a sha256 in hex, got {repr(self.tokenizer)[:70]}")
        if self.time_unit is not None:
            check_time_unit(self.time_unit)
        if self.edges is not None:
            object.__setattr__(self, "edges", check_edges(self.edges))
        if self.classes is not None:
            object.__setattr__(self, "classes", _names("class names", self.classes))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "features": self.features,
            "tokenizer": self.tokenizer,
            "time_unit": self.time_unit,
            "edges": self.edges,
            "classes": self.classes,
        }
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in data.items() if value is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a block's contract must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"features", "tokenizer", "time_unit", "edges", "classes"})
        if unknown:
            raise ConfigError(f"a block's contract has unknown key(s): {', '.join(map(str, unknown))[:200]}")
        return cls(**{key: value for key, value in data.items() if value is not None})

    def merged_with(self, other: Contract) -> Contract:
        """This contract with the fields `other` records and this one does not."""
        return replace(
            self,
            **{key: value for key, value in vars(other).items() if value is not None and getattr(self, key) is None},
        )

    def full_edges(self) -> list[float] | None:
        """The n + 1 edges the trainer bins times with (0 first, infinity last), or None."""
        return None if self.edges is None else [0.0, *self.edges, math.inf]


NO_CONTRACT = Contract()


@dataclass(frozen=True)
class Labelling:
    """What a user says of a dataset's labels when training a block: the unit of labels.csv's times, survival bin
    edges (and their unit, when they come from another block: `--bins-from`), and class names in order."""

    time_unit: str | None = None
    bins: tuple[float, ...] | None = None
    bins_unit: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for unit in (self.time_unit, self.bins_unit):
            if unit is not None:
                check_time_unit(unit)
        if self.bins is not None:  # quantile edges of another block may repeat; a user's are checked when read
            object.__setattr__(self, "bins", check_edges(self.bins))
        if self.classes is not None:
            object.__setattr__(self, "classes", _names("class names", self.classes))
        if self.bins_unit is not None and self.time_unit is None:
            raise ConfigError(f"the bins are in {self.bins_unit}: give --time-unit, the unit of labels.csv's times")

    @property
    def unit(self) -> str | None:
        """The unit the block records: its bins' unit, else the labels'."""
        return self.bins_unit or self.time_unit

    @property
    def scale(self) -> float:
        """The factor that turns labels.csv's times into the block's unit."""
        return time_scale(self.time_unit, self.unit)

    @classmethod
    def from_contract(cls, contract: Contract, time_unit: str | None) -> Labelling:
        """`--bins-from`: another block's bins and unit, for labels in `time_unit`."""
        if contract.edges is None:
            raise ConfigError("that block records no survival bin edges (not a survival block, or an older file)")
        if contract.time_unit is None and time_unit is not None:
            raise ConfigError(
                "that block records no time unit, so its bins cannot be read in "
                f"{time_unit}; give --bins and --time-unit instead"
            )
        return cls(time_unit, contract.edges, contract.time_unit)
