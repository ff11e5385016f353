"""What the built-in encoders share: capped sizes and a parameter budget checked by arithmetic before anything is
allocated, `depth` layers of one width (`snn`, `mlp`), and their sizes read back off a state dict."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from legokit.errors import ConfigError

# caps on what a config may ask for, so that a hostile file or spec cannot make legokit allocate gigabytes
MAX_FEATURES = 2**24  # the widest input a block takes
MAX_WIDTH = 65536  # the widest token an encoder makes
MAX_DEPTH = 64
MAX_PARAMETERS = 100_000_000  # a built-in encoder's weights: 400 MB in float32


def bounded_int(what: str, value: Any, cap: int) -> int:
    """`value` when it is an integer in [1, cap] (not a bool); otherwise a one-line ConfigError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {repr(value)[:40]}")
    if value > cap:
        raise ConfigError(f"{what} is {value:,}; legokit caps it at {cap:,}")
    return value


def bounded_dropout(what: str, value: Any) -> float:
    """A dropout rate in [0, 1); otherwise a ConfigError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {repr(value)[:40]}")
    return float(value)


def parameter_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """How many parameters tensors of these shapes hold."""
    return sum(math.prod(shape) for shape in shapes.values())


def within_budget(
    encoder: str, shapes: Mapping[str, tuple[int, ...]], sizes: Mapping[str, int]
) -> dict[str, tuple[int, ...]]:
    """`shapes` when their parameters fit MAX_PARAMETERS; otherwise a ConfigError naming the sizes that make them."""
    total = parameter_count(shapes)
    if total > MAX_PARAMETERS:
        named = ", ".join(f"{key}={value:,}" for key, value in sizes.items())
        raise ConfigError(
            f"encoder {encoder}: {named} make {total:,} parameters; legokit caps a built-in encoder at "
            f"{MAX_PARAMETERS:,}"
        )
    return dict(shapes)


def stack_shapes(
    encoder: str,
    in_features: Any,
    hidden: Any,
    depth: Any,
    dropout: Any,
    layer: Callable[[int, int, int], dict[str, tuple[int, ...]]],
) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of `depth` layers of width `hidden` (`layer(index, width_in, hidden)` gives one layer's),
    each size checked against its cap first."""
    bounded_int(f"{encoder} encoder in_features", in_features, MAX_FEATURES)
    bounded_int(f"{encoder} encoder hidden", hidden, MAX_WIDTH)
    bounded_int(f"{encoder} encoder depth", depth, MAX_DEPTH)
    bounded_dropout(f"{encoder} encoder dropout", dropout)
    shapes: dict[str, tuple[int, ...]] = {}
    width = in_features
    for index in range(depth):
        shapes.update(layer(index, width, hidden))
        width = hidden
    return shapes


def layer_stack(
    in_features: int, hidden: int, depth: int, layer: Callable[[int, int], list[nn.Module]]
) -> nn.Sequential:
    """`depth` layers made by `layer(width_in, hidden)`, the first from `in_features`."""
    modules: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        modules += layer(width, hidden)
        width = hidden
    return nn.Sequential(*modules)


def stack_sizes(weights: Sequence[torch.Tensor]) -> dict[str, Any]:
    """in_features, hidden and depth of a stack from its Linear weights, in order (empty when there are none)."""
    if not weights:
        return {}
    return {"in_features": int(weights[0].shape[1]), "hidden": int(weights[0].shape[0]), "depth": len(weights)}
