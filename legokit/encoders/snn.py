"""Self-normalising network for tabular data (Klambauer et al. 2017): SELU, AlphaDropout, LeCun-normal weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from legokit.encoders.registry import register_encoder
from legokit.encoders.stack import layer_stack, stack_shapes, stack_sizes, within_budget


@register_encoder("snn")
class SNN(nn.Module):
    """Maps a feature vector (b, in_features) to one token (b, hidden)."""

    token_input = False  # takes (b, features), not a bag of tokens
    keeps_tokens = False
    accepts_mask = False

    def __init__(self, in_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        within_budget(
            "snn",
            self.weight_shapes(in_features, hidden, depth, dropout),
            {"in_features": in_features, "hidden": hidden, "depth": depth},
        )
        self.net = layer_stack(
            in_features, hidden, depth, lambda n, h: [nn.Linear(n, h), nn.SELU(), nn.AlphaDropout(dropout)]
        )
        self.out_dim = hidden
        for module in self.net:
            if isinstance(module, nn.Linear):
                # LeCun normal: keeps SELU activations at zero mean and unit variance
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
                nn.init.zeros_(module.bias)

    @staticmethod
    def weight_shapes(
        in_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1
    ) -> dict[str, tuple[int, ...]]:
        """The parameter shapes these settings make, by arithmetic alone (checked before anything is allocated); a
        size over its cap is a ConfigError."""
        return stack_shapes(
            "snn",
            in_features,
            hidden,
            depth,
            dropout,
            lambda index, width, out: {f"net.{3 * index}.weight": (out, width), f"net.{3 * index}.bias": (out,)},
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict, so `legokit wrap --arch snn` needs no --arch-kwargs."""
        return stack_sizes([v for k, v in state_dict.items() if k.startswith("net.") and k.endswith(".weight")])
