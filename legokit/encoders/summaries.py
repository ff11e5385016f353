"""Summaries of an irregular longitudinal sequence, per feature: last value, mean, slope over time, and the number of
tokens. Pure tensor math shared by the `longitudinal` encoder and the Cox baseline (`legokit.training.baselines`), so
the block and the classical model a practitioner would fit read the same facts off the same tokens."""

from __future__ import annotations

import torch
from einops import rearrange, reduce

KINDS = ("last", "mean", "slope")


def summary_width(features: int) -> int:
    """The width of `sequence_summaries` for tokens of this many features."""
    return len(KINDS) * features + 1


def sequence_summaries(
    x: torch.Tensor, mask: torch.Tensor | None = None, time_feature: int | None = 0, min_spread: float = 1e-2
) -> torch.Tensor:
    """(b, n, f) tokens in time order (oldest first, padding after the real tokens) -> (b, 3f + 1): each feature's
    last value, mean and least-squares slope against feature `time_feature` (token position when None), then
    log(1 + number of tokens). A slope needs two tokens whose times spread by more than `min_spread` in variance;
    otherwise it is 0. A sample with no token gives zeros. Computed in float64 and clipped to `x`'s dtype's finite
    range, so finite inputs (any float32 a dataset folder holds) give finite summaries."""
    dtype = x.dtype
    x = x.to(torch.float64)
    b, n, f = x.shape
    real = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask.to(torch.bool)
    weight = rearrange(real.to(x.dtype), "b n -> b n 1")
    count = reduce(weight, "b n 1 -> b 1", "sum")
    safe = count.clamp_min(1.0)
    last_index = (real.long().cumsum(dim=1) == rearrange(count.long(), "b 1 -> b 1")) & real
    last = reduce(x * rearrange(last_index.to(x.dtype), "b n -> b n 1"), "b n f -> b f", "sum")
    mean = reduce(x * weight, "b n f -> b f", "sum") / safe
    if time_feature is None:
        time = rearrange(torch.arange(n, dtype=x.dtype, device=x.device), "n -> 1 n 1").expand(b, n, 1)
    else:
        time = x[..., time_feature : time_feature + 1]
    time_mean = reduce(time * weight, "b n 1 -> b 1 1", "sum") / rearrange(safe, "b 1 -> b 1 1")
    centred = (time - time_mean) * weight
    spread = reduce(centred.pow(2), "b n 1 -> b 1", "sum") / safe
    covariance = reduce(centred * (x - rearrange(mean, "b f -> b 1 f")), "b n f -> b f", "sum") / safe
    defined = (count >= 2) & (spread > min_spread)
    slope = torch.where(defined, covariance / spread.clamp_min(min_spread), torch.zeros_like(covariance))
    limit = torch.finfo(dtype).max if dtype.is_floating_point else torch.finfo(torch.float32).max
    out = torch.cat([last, mean, slope, torch.log1p(count)], dim=1).clamp(-limit, limit)
    return out.to(dtype if dtype.is_floating_point else torch.float32)
