"""What `legokit eval` reports of a survival model beyond Harrell's C: Uno's C, and at each horizon (its bin
edges, or the user's times) the time-dependent AUC, the Brier score and calibration against Kaplan-Meier, plus the
integrated Brier score (`legokit.survival.metrics`); the censoring weights come from the training split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from legokit.data.training import SplitData
from legokit.errors import ConfigError
from legokit.interface import LegoModel, survival_outputs
from legokit.progress import log
from legokit.survival.estimators import censoring_km
from legokit.survival.metrics import integration_grid, survival_report
from legokit.training.metrics import risk_from_logits


def survival_scores(
    model: LegoModel,
    data: SplitData,
    ids: Sequence[str],
    logits: torch.Tensor,
    times: Sequence[float] = (),
) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """The survival metrics of these samples' `logits` at `times` (default: the model's inner bin edges), and the
    predicted S at those horizons with the horizons (for the calibration plot); none when the model records no
    bin edges (an older file)."""
    reading = survival_outputs(model, warn=True)
    horizons = tuple(times) or reading.edges
    if not horizons:
        return {}, None
    error, warning = reading.times_problem(horizons)
    if error is not None:
        raise ConfigError(error)
    if warning is not None:
        log.warning("%s", warning)
    report = split_report(
        lambda at: reading.at(logits, at), risk_from_logits(logits), data, ids, horizons, list(model.modalities)
    )
    return report, (reading.at(logits, horizons), torch.tensor(horizons, dtype=torch.float64))


def split_report(
    survival: Callable[[Sequence[float]], torch.Tensor],
    risk: torch.Tensor,
    data: SplitData,
    ids: Sequence[str],
    horizons: Sequence[float],
    modalities: Sequence[str],
) -> dict[str, float]:
    """`survival_report` of any model whose S(t) at given times is `survival(times)` (n, len(times)) and whose
    ranking is `risk`, on these samples, with censoring weights from the training split's samples."""
    targets = data.targets(ids)
    trained = data.targets(data.ids("train", modalities))
    if not len(trained["time"]):
        log.warning(
            "%s: no training samples: Uno's C and the Brier scores weigh censoring by these samples' own",
            data.folder.root,
        )
        trained = targets
    censoring = censoring_km(trained["time"], trained["event"])
    unweighed = int((targets["event"].bool() & (censoring(targets["time"]) <= 0)).sum())
    if unweighed:
        log.warning(
            "%d of the events come after the training split's last follow-up, where no censoring weight exists: "
            "Uno's C and the AUC and Brier score at later horizons leave them out (undefined when none is left)",
            unweighed,
        )
    at = torch.tensor(list(horizons), dtype=torch.float64)
    predicted = survival(list(horizons))
    grid = survival(integration_grid(at).tolist()) if len(horizons) >= 2 else predicted
    return survival_report(risk, predicted, grid, targets["time"], targets["event"], censoring, at)
