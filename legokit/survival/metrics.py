"""The metrics survival practitioners report, with scikit-survival's definitions and conventions (tests hold them
equal to 1e-6): Uno's C (concordance weighted by the inverse probability of censoring, truncated at `tau`), the
cumulative/dynamic time-dependent AUC, the Brier score and its integral, and calibration against Kaplan-Meier. The
censoring distribution G is estimated on the training split (`survival_train`), as in Uno et al. (2011)."""

from __future__ import annotations

import torch

from legokit.survival.curves import time_labels
from legokit.survival.estimators import StepFunction, kaplan_meier

TIED = 1e-8  # risks this close count as tied (1/2), as scikit-survival's tied_tol
ROWS = 1024  # events compared at once in Uno's C: memory stays rows x samples


def _sure(time: torch.Tensor, event: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return time.double().cpu(), event.bool().cpu()


def uno_c(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    censoring: StepFunction,
    tau: float | None = None,
) -> float:
    """Uno's C: over pairs (i, j) where i has an event before tau and j is still at risk after it (t_j > t_i, or
    t_j = t_i with j censored), the share with risk_i > risk_j (ties 1/2), each pair weighted by 1 / G(t_i)^2.
    NaN without a comparable pair."""
    time, event = _sure(time, event)
    risk = risk.double().cpu()
    weight = torch.zeros_like(time)
    counted = event & (time < tau) if tau is not None else event
    weight[counted] = censoring(time[counted]).reciprocal().square()
    numerator = denominator = 0.0
    cases = torch.nonzero(event).flatten()
    for start in range(0, len(cases), ROWS):
        rows = cases[start : start + ROWS]
        later = (time[None, :] > time[rows, None]) | ((time[None, :] == time[rows, None]) & ~event[None, :])
        tied = (risk[None, :] - risk[rows, None]).abs() <= TIED
        concordant = (risk[None, :] < risk[rows, None]) & ~tied
        score = (concordant.double() + 0.5 * tied.double()) * later
        numerator += float((weight[rows] * score.sum(1)).sum())
        denominator += float((weight[rows] * later.sum(1)).sum())
    if not bool(cases.numel()) or denominator == 0.0:
        return float("nan")
    return numerator / denominator


def dynamic_auc(
    risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, censoring: StepFunction, times: torch.Tensor
) -> torch.Tensor:
    """The cumulative/dynamic AUC at each of `times`: cases had an event by t (weighted by 1 / G(t_i)), controls
    are still event-free after t; `risk` (n,) or (n, len(times)), higher = earlier event. NaN where a time has no
    case or no control."""
    time, event = _sure(time, event)
    risk = risk.double().cpu()
    weight = torch.where(event, censoring(time).reciprocal(), torch.zeros_like(time))
    scores = []
    for k, at in enumerate(times.double().tolist()):
        r = risk[:, k] if risk.dim() == 2 else risk
        case, control = event & (time <= at), time > at
        if not bool(case.any()) or not bool(control.any()):
            scores.append(float("nan"))
            continue
        tied = (r[case, None] - r[None, control]).abs() <= TIED
        higher = (r[case, None] > r[None, control]) & ~tied
        pairs = higher.double() + 0.5 * tied.double()
        w = weight[case]
        scores.append(float((w[:, None] * pairs).sum() / (w.sum() * control.sum())))
    return torch.tensor(scores, dtype=torch.float64)


def brier_scores(
    survival: torch.Tensor, time: torch.Tensor, event: torch.Tensor, censoring: StepFunction, times: torch.Tensor
) -> torch.Tensor:
    """The IPCW Brier score at each of `times` of predicted survival S(t) (n, len(times)): the squared S(t) of a
    sample with an event by t weighted by 1 / G(t_i), the squared 1 - S(t) of one still event-free weighted by
    1 / G(t) (a zero G: weight 0)."""
    time, event = _sure(time, event)
    survival = survival.double().cpu()
    times = times.double().cpu()

    def inverse(g: torch.Tensor) -> torch.Tensor:
        return torch.where(g > 0, g.reciprocal(), torch.zeros_like(g))

    at_time, at_horizon = inverse(censoring(time)), inverse(censoring(times))
    case = event[:, None] & (time[:, None] <= times[None, :])
    control = time[:, None] > times[None, :]
    terms = survival.square() * case * at_time[:, None] + (1 - survival).square() * control * at_horizon[None, :]
    return terms.mean(0)


def integrated_brier(
    survival: torch.Tensor, time: torch.Tensor, event: torch.Tensor, censoring: StepFunction, times: torch.Tensor
) -> float:
    """The Brier score integrated over `times` (trapezoids) and divided by their span: at least two times."""
    if len(times) < 2:
        raise ValueError("the integrated Brier score needs at least two times")
    scores = brier_scores(survival, time, event, censoring, times)
    times = times.double()
    return float(torch.trapezoid(scores, times) / (times[-1] - times[0]))


def calibration_error(
    survival: torch.Tensor, time: torch.Tensor, event: torch.Tensor, times: torch.Tensor
) -> torch.Tensor:
    """|mean predicted S(t) - Kaplan-Meier S(t)| over these samples, at each of `times` (calibration in the large)."""
    time, event = _sure(time, event)
    observed = kaplan_meier(time, event)(times.double())
    return (survival.double().cpu().mean(0) - observed).abs()


def grouped_calibration_error(
    survival: torch.Tensor, time: torch.Tensor, event: torch.Tensor, times: torch.Tensor, groups: int = 5
) -> torch.Tensor:
    """Calibration in the small at each of `times`: the samples cut into `groups` equal groups by predicted S(t),
    the size-weighted mean over groups of |mean predicted S(t) - the group's Kaplan-Meier S(t)| (fewer groups when
    a group would hold under 20 samples)."""
    time, event = _sure(time, event)
    survival = survival.double().cpu()
    count = max(1, min(groups, len(time) // 20))
    errors = []
    for k, at in enumerate(times.double()):
        order = torch.argsort(survival[:, k], stable=True)
        total = 0.0
        for members in torch.tensor_split(order, count):
            observed = kaplan_meier(time[members], event[members])(at.reshape(1))
            total += len(members) * float((survival[members, k].mean() - observed[0]).abs())
        errors.append(total / len(time))
    return torch.tensor(errors, dtype=torch.float64)


def survival_report(
    risk: torch.Tensor,
    at_horizons: torch.Tensor,
    on_grid: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    censoring: StepFunction,
    horizons: torch.Tensor,
) -> dict[str, float]:
    """Every survival metric of one split, by name: Uno's C (truncated at the last horizon); at each horizon t the
    AUC, the Brier score and both calibration errors, from predicted S(t) `at_horizons` (n, H); and the integrated
    Brier score from S on `integration_grid(horizons)` (`on_grid`, n x 100; at least two horizons)."""
    report = {"uno_c": uno_c(risk, time, event, censoring, float(horizons[-1]))}
    auc = dynamic_auc(-at_horizons, time, event, censoring, horizons)
    brier = brier_scores(at_horizons, time, event, censoring, horizons)
    large = calibration_error(at_horizons, time, event, horizons)
    small = grouped_calibration_error(at_horizons, time, event, horizons)
    for k, label in enumerate(time_labels(horizons.tolist())):
        report[f"auc@{label}"] = float(auc[k])
        report[f"brier@{label}"] = float(brier[k])
        report[f"calibration@{label}"] = float(large[k])
        report[f"calibration_groups@{label}"] = float(small[k])
    if len(horizons) >= 2:
        report["integrated_brier"] = integrated_brier(on_grid, time, event, censoring, integration_grid(horizons))
    return report


def integration_grid(times: torch.Tensor, points: int = 100) -> torch.Tensor:
    """The times the integrated Brier score is taken over: `points` evenly spaced from the first to the last."""
    return torch.linspace(float(times[0]), float(times[-1]), points, dtype=torch.float64)
