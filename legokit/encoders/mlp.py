"""Token-wise MLP: embeds a feature vector, or each token of a sequence, keeping the token axis."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


class MLP(nn.Module):
    """Maps (b, in_features) to (b, hidden) or (b, n, in_features) to (b, n, hidden), one token at a time."""

    token_input = None  # either a vector or a sequence of tokens
    keeps_tokens = True  # output token i is input token i, so the input's padding mask still applies
    accepts_mask = False

    def __init__(self, in_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict (the 2-D weights are the Linear layers)."""
        weights = [v for k, v in state_dict.items() if k.endswith(".weight") and v.dim() == 2]
        if not weights:
            return {}
        return {"in_features": int(weights[0].shape[1]), "hidden": int(weights[0].shape[0]), "depth": len(weights)}
