"""The encoder registry and the interface it checks: named encoders (the built-ins and any a user adds, as timm's
`register_model`) register with `register_encoder`; blocks, specs and `.st` files build them by that name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from legokit.errors import ConfigError

FOREIGN = "export"  # the encoder name of a foreign program (`legokit.encoders.foreign`), never a registered one


@runtime_checkable
class Encoder(Protocol):
    """What legokit calls on a named encoder. LegoBlock reads `out_dim` (token width, set in `__init__`) and calls
    `forward` on (b, f) or (b, n, f) inputs for (b, e) or (b, n, e) tokens; artifact loading calls the static
    `infer_kwargs(state_dict)` (its sizes read back from weights; {} when it cannot). Optional class attributes are
    checked when present (`OPTIONAL`)."""

    out_dim: int

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]: ...


# optional members, what LegoBlock and the artifact code do with them, and the values each may take
OPTIONAL: Mapping[str, str] = {
    "token_input": "True: takes a bag of tokens (b, n, f); False: a vector (b, f); None: either",
    "accepts_mask": "True: forward(x, mask) receives the padding mask",
    "keeps_tokens": "True: output token i is input token i, so the input's padding mask still applies",
    "weight_shapes": "a static weight_shapes(**kwargs) -> {tensor name: shape}, checked against a file before loading",
}

_ENCODERS: dict[str, type[nn.Module]] = {}


def check_encoder_class(name: str, cls: Any) -> None:
    """Refuse a class that does not have the `Encoder` interface, in one line naming what it lacks."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"encoder {name!r}: register an nn.Module class, got {cls!r}")
    if not callable(getattr(cls, "infer_kwargs", None)):
        raise ConfigError(f"encoder {name!r}: {cls.__name__} needs a static infer_kwargs(state_dict) method")
    if cls.forward is nn.Module.forward:
        raise ConfigError(f"encoder {name!r}: {cls.__name__} needs a forward(x[, mask]) method")
    token_input = getattr(cls, "token_input", None)
    if token_input not in (True, False, None):
        raise ConfigError(f"encoder {name!r}: token_input must be True, False or None, got {token_input!r}")
    for flag in ("accepts_mask", "keeps_tokens"):
        if not isinstance(getattr(cls, flag, False), bool):
            raise ConfigError(f"encoder {name!r}: {flag} must be True or False, got {getattr(cls, flag)!r}")
    weight_shapes = getattr(cls, "weight_shapes", None)
    if weight_shapes is not None and not callable(weight_shapes):
        raise ConfigError(f"encoder {name!r}: weight_shapes must be a static method")


def check_encoder(name: str, encoder: nn.Module) -> None:
    """A built encoder must say its token width: an `out_dim` integer set in `__init__`."""
    width = getattr(encoder, "out_dim", None)
    if not isinstance(encoder, Encoder) or isinstance(width, bool) or not isinstance(width, int):
        raise ConfigError(
            f"encoder {name}: {type(encoder).__name__} must set an integer out_dim (its token width) "
            f"in __init__, got {width!r}"
        )


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an encoder buildable by name in block specs, `legokit train --encoder` and `.st` files,
    as the built-ins are. The class has the `Encoder` interface, checked here; it takes its sizes as keyword
    arguments. A file naming it loads only in a process that registered the same name."""
    if not isinstance(name, str) or not name.isidentifier() or name == FOREIGN:
        raise ConfigError(f"an encoder name must be a Python identifier other than {FOREIGN!r}, got {name!r}")

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        known = _ENCODERS.get(name)
        if known is not None and known is not cls:
            raise ConfigError(f"encoder {name!r} is already registered ({known.__name__})")
        check_encoder_class(name, cls)
        _ENCODERS[name] = cls
        return cls

    return register


def list_encoders() -> list[str]:
    """The names `encoder_class` builds: the built-ins, then the registered ones, in registration order."""
    return list(_ENCODERS)


def encoder_class(name: str) -> type[nn.Module]:
    """The class of a named encoder; an unknown name is a one-line error listing the registered ones."""
    try:
        return _ENCODERS[name]
    except KeyError as exc:
        raise ConfigError(
            f"unknown encoder {name!r}; known encoders are {', '.join(_ENCODERS)} (register others "
            "with legokit.register_encoder)"
        ) from exc
