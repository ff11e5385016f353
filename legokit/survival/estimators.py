"""Kaplan-Meier estimates of the survival function and of the censoring distribution (the inverse-probability-of-
censoring weights of Uno's C and the Brier score), as right-continuous step functions; at a tie, events come before
censorings (as scikit-survival's `kaplan_meier_estimator` and `CensoringDistributionEstimator`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepFunction:
    """A right-continuous step function: `values[i]` on [times[i], times[i + 1]); 1 before the first time and the
    last value after the last (float64)."""

    times: torch.Tensor
    values: torch.Tensor

    def __call__(self, at: torch.Tensor) -> torch.Tensor:
        index = torch.searchsorted(self.times, at.double().contiguous(), right=True) - 1
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.values])
        return padded[index + 1]


def _counts(time: torch.Tensor, event: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct times (sorted), and at each: the events, the censorings, and the samples at risk just before."""
    distinct, where = torch.unique(time.double(), sorted=True, return_inverse=True)
    leaving = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, where, torch.ones_like(time.double()))
    dying = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, where, event.double())
    at_risk = len(time) - (leaving.cumsum(0) - leaving)
    return distinct, dying, leaving - dying, at_risk


def kaplan_meier(time: torch.Tensor, event: torch.Tensor) -> StepFunction:
    """The product-limit estimate of P(T > t)."""
    distinct, dying, _, at_risk = _counts(time, event)
    return StepFunction(distinct, torch.cumprod(1.0 - dying / at_risk, 0))


def censoring_km(time: torch.Tensor, event: torch.Tensor) -> StepFunction:
    """The Kaplan-Meier estimate of the censoring distribution G(t) = P(C > t): censorings are its events, and an
    event at the same time leaves the risk set first. Every sample an event: G = 1."""
    distinct, dying, censored, at_risk = _counts(time, event)
    if bool(event.bool().all()):
        return StepFunction(distinct, torch.ones_like(distinct))
    ratio = torch.where(censored > 0, censored / (at_risk - dying).clamp_min(1), torch.zeros_like(censored))
    return StepFunction(distinct, torch.cumprod(1.0 - ratio, 0))
