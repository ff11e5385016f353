"""Spherical interpolation of parameter tensors, for merging task heads (MM-Lego Section 3). Pure tensor math."""

from __future__ import annotations

from collections.abc import Sequence

import torch

COLINEAR = 1e-4  # radians: below this angle two tensors are treated as colinear and mixed linearly


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    return torch.arccos(cos.clamp(-1.0, 1.0))


def slerp(a: torch.Tensor, b: torch.Tensor, mu: float) -> torch.Tensor:
    """sin((1-mu)t)/sin(t) a + sin(mu t)/sin(t) b, with t the angle between the flattened tensors.

    Falls back to (1-mu) a + mu b when t is tiny or pi-close (colinear tensors, e.g. two fresh LayerNorms) or a
    tensor is zero, so it never returns NaN. Computed in float64, returned in a's dtype.
    """
    fa, fb = a.reshape(-1).double(), b.reshape(-1).double()
    linear = (1.0 - mu) * fa + mu * fb
    if fa.norm() == 0 or fb.norm() == 0:
        return linear.reshape(a.shape).to(a.dtype)
    theta = _angle(fa, fb)
    sin = torch.sin(theta)
    if theta < COLINEAR or sin < COLINEAR:
        return linear.reshape(a.shape).to(a.dtype)
    mixed = torch.sin((1.0 - mu) * theta) / sin * fa + torch.sin(mu * theta) / sin * fb
    return mixed.reshape(a.shape).to(a.dtype)


def spherical_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float], iterations: int = 100) -> torch.Tensor:
    """Order-independent merge of K tensors: weighted Karcher mean of their directions on the unit sphere, scaled
    by the weighted mean of their norms. For K = 2 it is `slerp` with mu = w_b / (w_a + w_b), exactly the paper's
    rule; if any tensor is zero or the directions are (anti)colinear, it is the weighted linear mean.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError("spherical_mean needs one weight per tensor, and at least one tensor")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    w = w / w.sum()
    if len(tensors) == 2:
        return slerp(tensors[0], tensors[1], float(w[1]))
    flat = torch.stack([t.reshape(-1).double() for t in tensors])
    linear = (w[:, None] * flat).sum(0)
    norms = flat.norm(dim=1)
    if (norms == 0).any():
        return linear.reshape(tensors[0].shape).to(tensors[0].dtype)
    units = flat / norms[:, None]
    mean = (w[:, None] * units).sum(0)
    if mean.norm() < COLINEAR:
        return linear.reshape(tensors[0].shape).to(tensors[0].dtype)
    mean = mean / mean.norm()
    for _ in range(iterations):
        cos = (units @ mean).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        scale = torch.where(theta < COLINEAR, 1.0, theta / torch.sin(theta).clamp_min(1e-12))
        tangent = (w * scale)[:, None] * (units - cos[:, None] * mean)
        step = tangent.sum(0)
        size = step.norm()
        if size < 1e-12:
            break
        mean = torch.cos(size) * mean + torch.sin(size) * step / size
        mean = mean / mean.norm()
    merged = mean * (w * norms).sum()
    return merged.reshape(tensors[0].shape).to(tensors[0].dtype)
