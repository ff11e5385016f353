"""Attention and feed-forward modules of a LegoBlock update step (MM-Lego Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CrossAttention(nn.Module):
    """Latent queries attend to encoder tokens, through `scaled_dot_product_attention` (Eq. 3).

    A key-padding mask (b, n), True where a token is real, hides padded tokens; a sample whose
    tokens are all masked gets a zero update, so the residual leaves its latent untouched.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int = 1, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm_query = nn.LayerNorm(query_dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if context.shape[1] == 1 and not (self.training and self.dropout > 0):
            return self._one_token(query, context, mask)
        q = self.to_q(self.norm_query(query))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h e) -> b h n e", h=self.heads) for t in (q, k, v))
        attn_mask = None
        has_tokens = None
        if mask is not None:
            has_tokens = mask.any(dim=-1)
            # an all-masked row would be a softmax over nothing (NaN): let it attend anywhere, then zero it below
            safe = mask | rearrange(~has_tokens, "b -> b 1")
            attn_mask = rearrange(safe, "b n -> b 1 1 n")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = self.to_out(rearrange(out, "b h n e -> b n (h e)"))
        if has_tokens is not None:
            out = out * rearrange(has_tokens, "b -> b 1 1").to(out.dtype)
        return out

    def _one_token(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The exact result for a single key: its softmax weight is 1 for every query, so the output is the projected
        value, the same for all queries; no query/key projections, no softmax (the built-in table encoders and
        attention-MIL emit one token)."""
        inner = self.to_q.out_features
        if type(self.to_kv) is nn.Linear:  # the value half of the projection only
            value = F.linear(self.norm_context(context), self.to_kv.weight[inner:])
        else:  # wrapped (an adapter on the projection): run the module as it is
            value = self.to_kv(self.norm_context(context))[..., inner:]
        out = self.to_out(value)
        if mask is not None:
            out = out * rearrange(mask[:, 0], "b -> b 1 1").to(out.dtype)
        return out.expand(-1, query.shape[1], -1)


class FeedForward(nn.Module):
    """Pre-norm GELU feed-forward that follows the attention in each update step."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UpdateLayer(nn.Module):
    """One LegoBlock update of rows of FFT(L) (its Re rows, or Re and Im rows): cross-attention to the encoder
    tokens, then feed-forward, both residual.

    `present` (b,) marks the samples that have this modality; the others keep their latent unchanged.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float):
        super().__init__()
        self.attention = CrossAttention(dim, context_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.feed_forward = FeedForward(dim, mult=ff_mult, dropout=dropout)

    def forward(
        self,
        real: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        updated = real + self.attention(real, tokens, mask)
        updated = updated + self.feed_forward(updated)
        if present is None:
            return updated
        return torch.where(rearrange(present, "b -> b 1 1"), updated, real)


class TaskHead(nn.Module):
    """LayerNorm + Linear on pooled frequency-domain features: the block's task head (MM-Lego Section 3)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))
