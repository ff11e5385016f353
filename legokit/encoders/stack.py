"""What the feed-forward encoders (`snn`, `mlp`) share: `depth` layers of one width, and their sizes read back off a
state dict."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn


def layer_stack(in_features: int, hidden: int, depth: int, layer: Callable[[int, int], list[nn.Module]]) -> nn.Sequential:
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
