"""Feature tokenizer for tables (FT-Transformer, Gorishniy et al. 2021): one token per feature, so a block's
cross-attention has many keys to choose among instead of one pooled vector."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from legokit.encoders.registry import register_encoder
from legokit.encoders.stack import MAX_FEATURES, MAX_WIDTH, bounded_dropout, bounded_int, within_budget


@register_encoder("tokens")
class FeatureTokens(nn.Module):
    """Maps a feature vector (b, in_features) to tokens (b, t, dim): token k = x_group_k @ W_k + b_k.

    With one feature per token (tables up to `max_tokens` columns) this is FT-Transformer's tokenizer, value times
    a learned embedding plus a feature bias; wider tables (thousands of genes) are cut into `max_tokens` groups of
    consecutive features, each group embedded by its own linear map, so attention cost stays bounded.
    """

    token_input = False  # takes (b, features) and makes the tokens itself
    keeps_tokens = False
    accepts_mask = False

    def __init__(self, in_features: int, dim: int = 64, max_tokens: int = 256, dropout: float = 0.0):
        super().__init__()
        shapes = within_budget(
            "tokens",
            self.weight_shapes(in_features, dim, max_tokens, dropout),
            {"in_features": in_features, "dim": dim},
        )
        self.count, self.group, _ = shapes["weight"]
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(self.count, self.group, dim))
        self.bias = nn.Parameter(torch.empty(self.count, dim))
        bound = 1 / math.sqrt(dim)  # FT-Transformer's uniform initialisation of the embeddings
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    @staticmethod
    def weight_shapes(
        in_features: int, dim: int = 64, max_tokens: int = 256, dropout: float = 0.0
    ) -> dict[str, tuple[int, ...]]:
        """The parameter shapes these settings make, by arithmetic alone (a file's config is checked against its
        tensors with this before anything is allocated); a bad setting is a ConfigError."""
        bounded_int("tokens encoder in_features", in_features, MAX_FEATURES)
        bounded_int("tokens encoder dim", dim, MAX_WIDTH)
        bounded_int("tokens encoder max_tokens", max_tokens, MAX_FEATURES)
        bounded_dropout("tokens encoder dropout", dropout)
        group = math.ceil(in_features / max_tokens)
        count = math.ceil(in_features / group)
        return {"weight": (count, group, dim), "bias": (count, dim)}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (b, t, dim) of a batch of feature vectors (b, in_features); the mask is unused (no padding)."""
        padding = self.count * self.group - self.in_features
        groups = rearrange(F.pad(x, (0, padding)), "b (t g) -> b t g", g=self.group)
        return self.dropout(torch.einsum("btg,tgd->btd", groups, self.weight) + self.bias)

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The token width read off a saved state dict (the table width and grouping are the config's: padding
        makes them ambiguous from the weights alone)."""
        weight = state_dict.get("weight")
        return {"dim": int(weight.shape[-1])} if weight is not None and weight.dim() == 3 else {}
