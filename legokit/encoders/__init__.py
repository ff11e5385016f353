"""Encoders a LegoBlock can wrap: named encoders in an open registry (`legokit.encoders.registry`: the built-ins,
listed by `list_encoders`, register through `register_encoder` as a user's do) and foreign programs (`export`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol, cast

from torch import nn

from legokit.errors import ConfigError

# isort: off
# the built-ins register on import, in this order (the order `list_encoders` and help texts show)
from legokit.encoders.snn import SNN
from legokit.encoders.abmil import ABMIL
from legokit.encoders.mlp import MLP
from legokit.encoders.tokens import FeatureTokens
from legokit.encoders.longitudinal import LongitudinalSummary

# isort: on
from legokit.encoders.foreign import ExportedEncoder
from legokit.encoders.registry import FOREIGN, Encoder, check_encoder, encoder_class, list_encoders, register_encoder
from legokit.encoders.stack import within_budget

BUILTIN: dict[str, type[nn.Module]] = {name: encoder_class(name) for name in list_encoders()}  # before any user's


class _Sized(Protocol):
    """A built-in encoder class: its static `weight_shapes(**sizes)` gives each tensor's shape (`registry.OPTIONAL`)."""

    @staticmethod
    def weight_shapes(**kwargs: Any) -> dict[str, tuple[int, ...]]: ...


def check_encoder_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, by arithmetic alone, sizes a built-in encoder would build over its caps or its parameter budget (a
    spec names no in_features until the data does: the smallest, 1, is assumed); registered encoders are their
    authors' to bound."""
    cls = encoder_class(name)
    if BUILTIN.get(name) is not cls:
        return
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"encoder {name}: kwargs must be a mapping, got {type(kwargs).__name__}")
    given = {"in_features": 1, **kwargs}
    sized = cast("type[_Sized]", cls)  # a built-in: each has weight_shapes
    try:
        inspect.signature(sized.weight_shapes).bind(**given)
    except TypeError as exc:
        raise ConfigError(f"encoder {name}: {exc}"[:300]) from exc
    sizes = {k: v for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    within_budget(name, sized.weight_shapes(**given), sizes)


def build_encoder(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """A fresh encoder by name (a built-in one checks its sizes before it allocates); a keyword it does not take is a
    ConfigError naming it."""
    cls = encoder_class(name)
    try:
        encoder = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder {name}: {exc}"[:300]) from exc
    check_encoder(name, encoder)
    return encoder


def token_input(encoder: nn.Module) -> bool | None:
    """True if the encoder takes a bag of tokens (b, n, f), False for a vector (b, f), None for either."""
    return getattr(encoder, "token_input", None)


__all__ = [
    "ABMIL",
    "BUILTIN",
    "Encoder",
    "FOREIGN",
    "MLP",
    "SNN",
    "FeatureTokens",
    "ExportedEncoder",
    "LongitudinalSummary",
    "build_encoder",
    "check_encoder_kwargs",
    "encoder_class",
    "list_encoders",
    "register_encoder",
]
