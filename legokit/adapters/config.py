"""How `adapt` adapts a model to missing modalities, in one frozen config validated once: the method and its
adapter's settings, and the missing-modality protocol it trains and tests under (MoRA's by default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from legokit.adapters.missing import DEFAULT_MISSING_RATE, DEFAULT_MISSING_SPLIT, MissingRates, MissingSplit
from legokit.adapters.mora import DEFAULT_RANK
from legokit.adapters.registry import adaptation_methods, adapter_class, adapter_names
from legokit.errors import ConfigError

OPTIONS = ("rank", "train_complete")  # the fields only some adapters take (their class's `options`)


@dataclass(frozen=True)
class AdaptConfig:
    """`method`: `head`, a registered adapter (`mora`, `ssf`, ...) or `full`; `rank` (MoRA's), `at` (where the adapter
    goes; default the method's), `train_head` (default the method's), `train_complete` (SSF's: a set for complete
    samples too). Protocol: total missing rate `missing_rate` (eta) shared by `missing_split`, `test_missing_rate`
    for the test metrics (default the same), or independent per-modality rates `train_missing`/`test_missing`."""

    method: str = "mora"
    rank: int = DEFAULT_RANK
    at: str | Sequence[str] | None = None
    train_head: bool | None = None
    train_complete: bool = False
    missing_rate: float | None = DEFAULT_MISSING_RATE
    missing_split: float = DEFAULT_MISSING_SPLIT
    test_missing_rate: float | None = None
    train_missing: str | None = None
    test_missing: str | None = None

    def __post_init__(self) -> None:
        if self.method not in adaptation_methods():
            raise ConfigError(f"unknown adaptation {self.method!r}; choose one of {', '.join(adaptation_methods())}")
        defaults = {f.name: f.default for f in fields(self)}
        for option in OPTIONS:
            if getattr(self, option) != defaults[option] and option not in self.adapter_options:
                owners = [adapter_class(n).__name__ for n in adapter_names() if option in adapter_class(n).options]
                raise ConfigError(
                    f"{option} is a setting of {' and '.join(owners) or 'no adapter'} only; the "
                    f"{self.method!r} adaptation does not take it"
                )
        names = self.at if isinstance(self.at, (list, tuple)) else [self.at]
        if self.at is not None and not all(isinstance(name, str) for name in names):
            raise ConfigError(f"at must be tokens, first, all or module names, got {repr(self.at)[:80]}")
        if self.train_head not in (None, True, False):
            raise ConfigError(f"train_head must be True, False or None (the method's default), got {self.train_head!r}")
        for text in (self.train_missing, self.test_missing):
            MissingRates.parse(text)
        test_rate = self.missing_rate if self.test_missing_rate is None else self.test_missing_rate
        for independent, rate in (
            (self.train_missing, self.missing_rate),
            (self.test_missing or self.train_missing, test_rate),
        ):
            if not independent and rate:  # the rates `training.workflows.missing_protocol` will draw with
                MissingSplit(rate, self.missing_split, 0)

    @property
    def adapter_options(self) -> tuple[str, ...]:
        """The settings the method's adapter takes (none for `head` and `full`)."""
        return adapter_class(self.method).options if self.method in adapter_names() else ()

    def adapter_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the method's adapter class is built with, besides the modalities."""
        return {option: getattr(self, option) for option in self.adapter_options}
