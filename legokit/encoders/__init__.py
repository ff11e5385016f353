"""Encoders a LegoBlock can wrap: the named built-ins (`snn`, `abmil`, `mlp`, `tokens`) and foreign programs (`export`)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from torch import nn

from ..errors import ConfigError
from .abmil import ABMIL
from .foreign import ExportedEncoder
from .mlp import MLP
from .snn import SNN
from .tokens import FeatureTokens

BUILTIN_ENCODERS: Mapping[str, type[nn.Module]] = MappingProxyType({"snn": SNN, "abmil": ABMIL, "mlp": MLP, "tokens": FeatureTokens})
FOREIGN = "export"


def encoder_class(name: str) -> type[nn.Module]:
    """The class of a built-in encoder, by registry name."""
    try:
        return BUILTIN_ENCODERS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown encoder {name!r}; built-in encoders are {', '.join(BUILTIN_ENCODERS)}") from exc


def build_encoder(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """A fresh built-in encoder; a keyword it does not take is a ConfigError naming it."""
    cls = encoder_class(name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder {name}: {exc}"[:300]) from exc


def token_input(encoder: nn.Module) -> bool | None:
    """True if the encoder takes a bag of tokens (b, n, f), False for a vector (b, f), None for either."""
    return getattr(encoder, "token_input", None)


__all__ = ["ABMIL", "BUILTIN_ENCODERS", "FOREIGN", "MLP", "SNN", "FeatureTokens", "ExportedEncoder", "build_encoder", "encoder_class"]
