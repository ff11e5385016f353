"""A discrete-time model's survival curve at any time. The model gives S at the end of each bin, S_k = prod_{j<=k}
(1 - h_j) (MM-Lego Appendix D); between the knots (0, 1), (e_1, S_1), ..., (e_{n-1}, S_{n-1}) and (F, S_n), where
e_k are the inner bin edges and F the last follow-up of the training data (the end the open last bin is read to),
log S is linear in t: a constant hazard within each bin. Past F the curve is held at S_n (callers warn)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TINY = 1e-300  # S of a curve that reached 0, so that its log stays finite; read back as 0


def knots(edges: Sequence[float], follow_up: float) -> torch.Tensor:
    """The knot times 0, e_1, ..., e_{n-1}, F (float64)."""
    return torch.tensor([0.0, *edges, max(follow_up, *edges, 0.0)], dtype=torch.float64)


def survival_at(survival: torch.Tensor, edges: Sequence[float], follow_up: float, times: torch.Tensor) -> torch.Tensor:
    """S(t) (b, len(times)) at each of `times` (>= 0) from S at the end of each bin (b, n): log-linear between the
    knots, 1 at 0, held at S_n past `follow_up`. Non-increasing in t when each row of `survival` is."""
    at = knots(edges, follow_up)
    curve = torch.cat([torch.ones_like(survival[:, :1]), survival], dim=1).double().clamp_min(TINY).log()
    t = times.double().clamp(0, float(at[-1]))
    upper = torch.searchsorted(at, t, right=True).clamp(1, len(at) - 1)
    lower = upper - 1
    width = at[upper] - at[lower]
    # a segment of no width (an empty bin, or a follow-up not past the last edge): the value before the step
    share = torch.where(width > 0, (t - at[lower]) / width.clamp_min(TINY), torch.zeros_like(t))
    logs = curve[:, lower] + share[None, :] * (curve[:, upper] - curve[:, lower])
    return torch.where(logs <= math.log(TINY) * (1 - 1e-12), torch.zeros_like(logs), logs.exp())


def time_labels(times: Sequence[float]) -> list[str]:
    """Names for columns and metrics at these times: short (`365`, `0.5`) unless two would print alike, then each
    time's shortest exact form (`repr`)."""
    short = [f"{t:g}" for t in times]
    return short if len(set(short)) == len(short) else [repr(float(t)) for t in times]
