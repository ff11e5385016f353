"""The practitioner's strongest simple baseline on summary features: xgboost with the Cox objective (`survival:cox`),
tuned on the validation split. It sees exactly the columns of Cox with summary features
(`legokit.training.baselines.summary_design`). xgboost is in the `bench` extra only (as `xgboost-cpu`, the wheel
without the CUDA collective library); the library never imports it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import xgboost

from legokit.data.folder import DataError
from legokit.data.training import SplitData
from legokit.training.baselines import summary_design
from legokit.training.metrics import concordance_index

# 12 settings: tree depth x learning rate x minimum child weight; rounds by early stopping on validation
DEPTHS = (2, 4, 6)
RATES = (0.03, 0.1)
CHILD_WEIGHTS = (1.0, 10.0)
ROUNDS = 2000
PATIENCE = 50


@dataclass(frozen=True)
class Tuned:
    """The chosen setting, its boosting rounds, and every setting's validation c-index."""

    setting: dict
    rounds: int
    scores: tuple[tuple[str, float], ...]


def _labels(time: torch.Tensor, event: torch.Tensor) -> list[float]:
    # survival:cox reads a negative label as censored at |label|; a time of 0 is moved just above it
    clamped = time.double().clamp_min(1e-6)
    return torch.where(event.bool(), clamped, -clamped).tolist()


def xgboost_cox_risks(
    data: SplitData,
    modalities: Sequence[str],
    train: Sequence[str],
    val: Sequence[str],
    ids: Sequence[str],
    seed: int,
    time_feature: int | None = 0,
) -> tuple[dict[str, float], Tuned]:
    """Risks (log relative hazards) of `ids` under xgboost `survival:cox` on summary features fit on `train`: each of
    the 12 settings stops early on the validation partial likelihood, and the one with the best validation c-index is
    kept."""
    design = summary_design(data, modalities, train, time_feature)
    val = [i for i in val if any(i in data.folder.ids_of(m) for m in modalities)]
    targets = data.labels.select(val)
    if not val or not bool(targets["event"].bool().any()):
        raise DataError(
            f"xgboost tuned on validation needs validation samples with {', '.join(modalities)} and an event"
        )
    fit = xgboost.DMatrix(design.x.double().numpy(), label=_labels(design.time, design.event))
    held = xgboost.DMatrix(design.rows(data, val).double().numpy(), label=_labels(targets["time"], targets["event"]))
    fitted: list[tuple[float, xgboost.Booster, dict, int]] = []
    scores = []
    for depth, rate, child in itertools.product(DEPTHS, RATES, CHILD_WEIGHTS):
        setting = {
            "objective": "survival:cox",
            "eval_metric": "cox-nloglik",
            "max_depth": depth,
            "eta": rate,
            "min_child_weight": child,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "seed": seed,
            "nthread": 1,
            "verbosity": 0,
        }
        booster = xgboost.train(
            setting, fit, ROUNDS, evals=[(held, "val")], early_stopping_rounds=PATIENCE, verbose_eval=False
        )
        rounds = booster.best_iteration + 1
        risk = torch.from_numpy(booster.predict(held, output_margin=True, iteration_range=(0, rounds))).double()
        score = concordance_index(risk, targets["time"], targets["event"])
        scores.append((f"depth {depth}, eta {rate:g}, min child {child:g}", score))
        fitted.append((score, booster, setting, rounds))
    _, booster, setting, rounds = max(fitted, key=lambda found: found[0])  # the first of equal scores
    tuned = Tuned(setting, rounds, tuple(scores))
    if not ids:
        return {}, tuned
    scored = xgboost.DMatrix(design.rows(data, ids).double().numpy())
    risk = booster.predict(scored, output_margin=True, iteration_range=(0, rounds)).tolist()
    return dict(zip(ids, risk)), tuned
