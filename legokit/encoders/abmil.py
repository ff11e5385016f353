"""Gated attention-based multiple-instance learning (Ilse et al. 2018) over a padded bag of tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import einsum, rearrange
from torch import nn

from legokit.encoders.registry import register_encoder
from legokit.encoders.stack import MAX_FEATURES, MAX_WIDTH, bounded_dropout, bounded_int, within_budget


@register_encoder("abmil")
class ABMIL(nn.Module):
    """Pools a bag (b, n, in_features) with a padding mask (b, n) into one token (b, hidden).

    The attention softmax runs over the instances of each bag, never over the batch; padded
    instances get no weight, and a bag with no instance at all pools to zeros.
    """

    token_input = True
    keeps_tokens = False
    accepts_mask = True

    def __init__(self, in_features: int, hidden: int = 128, attention: int = 64, dropout: float = 0.1):
        super().__init__()
        within_budget(
            "abmil",
            self.weight_shapes(in_features, hidden, attention, dropout),
            {"in_features": in_features, "hidden": hidden, "attention": attention},
        )
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention)
        self.attention_u = nn.Linear(hidden, attention)
        self.attention_w = nn.Linear(attention, 1)
        self.out_dim = hidden

    @staticmethod
    def weight_shapes(
        in_features: int, hidden: int = 128, attention: int = 64, dropout: float = 0.1
    ) -> dict[str, tuple[int, ...]]:
        """The parameter shapes these settings make, by arithmetic alone (checked before anything is allocated); a
        size over its cap is a ConfigError."""
        bounded_int("abmil encoder in_features", in_features, MAX_FEATURES)
        bounded_int("abmil encoder hidden", hidden, MAX_WIDTH)
        bounded_int("abmil encoder attention", attention, MAX_WIDTH)
        bounded_dropout("abmil encoder dropout", dropout)
        return {
            "embed.0.weight": (hidden, in_features),
            "embed.0.bias": (hidden,),
            "attention_v.weight": (attention, hidden),
            "attention_v.bias": (attention,),
            "attention_u.weight": (attention, hidden),
            "attention_u.bias": (attention,),
            "attention_w.weight": (1, attention),
            "attention_w.bias": (1,),
        }

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        gated = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        scores = rearrange(self.attention_w(gated), "b n 1 -> b n")
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # an empty bag: all -inf -> zeros
        else:
            weights = torch.softmax(scores, dim=1)
        return einsum(weights, h, "b n, b n e -> b e")

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict."""
        if "embed.0.weight" not in state_dict or "attention_v.weight" not in state_dict:
            return {}
        embed = state_dict["embed.0.weight"]
        return {
            "in_features": int(embed.shape[1]),
            "hidden": int(embed.shape[0]),
            "attention": int(state_dict["attention_v.weight"].shape[0]),
        }
