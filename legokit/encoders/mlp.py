"""Token-wise MLP: embeds a feature vector, or each token of a sequence, keeping the token axis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from legokit.encoders.registry import register_encoder
from legokit.encoders.stack import layer_stack, stack_shapes, stack_sizes, within_budget


@register_encoder("mlp")
class MLP(nn.Module):
    """Maps (b, in_features) to (b, hidden) or (b, n, in_features) to (b, n, hidden), one token at a time."""

    token_input = None  # either a vector or a sequence of tokens
    keeps_tokens = True  # output token i is input token i, so the input's padding mask still applies
    accepts_mask = False

    def __init__(self, in_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        within_budget(
            "mlp",
            self.weight_shapes(in_features, hidden, depth, dropout),
            {"in_features": in_features, "hidden": hidden, "depth": depth},
        )
        self.net = layer_stack(
            in_features, hidden, depth, lambda n, h: [nn.Linear(n, h), nn.GELU(), nn.LayerNorm(h), nn.Dropout(dropout)]
        )
        self.out_dim = hidden

    @staticmethod
    def weight_shapes(
        in_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1
    ) -> dict[str, tuple[int, ...]]:
        """The parameter shapes these settings make, by arithmetic alone (checked before anything is allocated); a
        size over its cap is a ConfigError."""
        return stack_shapes(
            "mlp",
            in_features,
            hidden,
            depth,
            dropout,
            lambda index, width, out: {
                f"net.{4 * index}.weight": (out, width),
                f"net.{4 * index}.bias": (out,),
                f"net.{4 * index + 2}.weight": (out,),
                f"net.{4 * index + 2}.bias": (out,),
            },
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict (the 2-D weights are the Linear layers)."""
        return stack_sizes([v for k, v in state_dict.items() if k.endswith(".weight") and v.dim() == 2])
