"""Encoders a LegoBlock can wrap: named encoders in an open registry (the built-ins `snn`, `abmil`, `mlp`, `tokens`,
`longitudinal`,
and any a user registers with `register_encoder`, as timm's `register_model`) and foreign programs (`export`)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError
from .abmil import ABMIL
from .foreign import ExportedEncoder
from .longitudinal import LongitudinalSummary
from .mlp import MLP
from .snn import SNN
from .stack import within_budget
from .tokens import FeatureTokens

FOREIGN = "export"
BUILTIN: dict[str, type[nn.Module]] = {"snn": SNN, "abmil": ABMIL, "mlp": MLP, "tokens": FeatureTokens,
                                   "longitudinal": LongitudinalSummary}
_ENCODERS: dict[str, type[nn.Module]] = dict(BUILTIN)


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an encoder buildable by name in block specs, `legokit train --encoder` and `.st` files.

    The class takes its sizes as keyword arguments, sets `out_dim` (token width) in `__init__`, maps (b, f) or
    (b, n, f) inputs to (b, e) or (b, n, e), and has a static `infer_kwargs(state_dict)` that reads its sizes back
    (an empty dict when it cannot). A file naming it loads only in a process that registered the same name."""
    if not isinstance(name, str) or not name.isidentifier() or name == FOREIGN:
        raise ConfigError(f"an encoder name must be a Python identifier other than {FOREIGN!r}, got {name!r}")

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(f"encoder {name!r}: register an nn.Module class, got {cls!r}")
        if not callable(getattr(cls, "infer_kwargs", None)):
            raise ConfigError(f"encoder {name!r}: {cls.__name__} needs a static infer_kwargs(state_dict) method")
        known = _ENCODERS.get(name)
        if known is not None and known is not cls:
            raise ConfigError(f"encoder {name!r} is already registered ({known.__name__})")
        _ENCODERS[name] = cls
        return cls

    return register


def list_encoders() -> list[str]:
    """The names `encoder_class` builds: the built-ins, then the registered ones, in registration order."""
    return list(_ENCODERS)


def encoder_class(name: str) -> type[nn.Module]:
    """The class of a named encoder."""
    try:
        return _ENCODERS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown encoder {name!r}; known encoders are {', '.join(_ENCODERS)} (register others "
                          "with legokit.register_encoder)") from exc


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
    try:
        inspect.signature(cls.weight_shapes).bind(**given)
    except TypeError as exc:
        raise ConfigError(f"encoder {name}: {exc}"[:300]) from exc
    sizes = {k: v for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    within_budget(name, cls.weight_shapes(**given), sizes)


def build_encoder(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """A fresh encoder by name (a built-in one checks its sizes before it allocates); a keyword it does not take is a
    ConfigError naming it."""
    cls = encoder_class(name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder {name}: {exc}"[:300]) from exc


def token_input(encoder: nn.Module) -> bool | None:
    """True if the encoder takes a bag of tokens (b, n, f), False for a vector (b, f), None for either."""
    return getattr(encoder, "token_input", None)


__all__ = ["ABMIL", "FOREIGN", "MLP", "SNN", "FeatureTokens", "ExportedEncoder", "LongitudinalSummary", "build_encoder", "check_encoder_kwargs",
           "encoder_class", "list_encoders", "register_encoder"]
