"""Recalibrating survival models after training or merging (`legokit.survival.calibration`): fitted on the
validation split, recorded in the model's provenance, applied by predict and eval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import nn

from legokit.data.training import SplitData
from legokit.errors import ConfigError
from legokit.interface import LegoModel, calibrated, model_contract
from legokit.progress import log
from legokit.survival.calibration import Calibration, fit_calibration
from legokit.training.distributed import world
from legokit.training.leakage import overlaps
from legokit.training.trainer import TrainConfig, TrainResult, predict_logits


def follow_up(data: SplitData, modalities: Sequence[str]) -> float:
    """The training split's last follow-up time (in the model's unit): where the open last bin is read to end."""
    times = data.labels.select(data.ids("train", modalities))["time"]
    return float(times.max()) if len(times) else 0.0


def calibrate_trained(
    model: nn.Module, data: SplitData, result: TrainResult, config: TrainConfig, modalities: Sequence[str]
) -> Calibration | None:
    """Recalibrate a just-trained survival model on its validation split (`config.calibrate`), from the selected
    model's validation logits; a split without samples or events leaves it uncalibrated, with a warning."""
    task = cast(LegoModel, model).task
    if task.kind != "survival" or not config.calibrate or result.edges is None:
        return None
    val = data.targets(data.ids("val", modalities))
    if result.val_logits is None or not len(val["time"]):
        log.warning("no validation samples to calibrate on: the model stays uncalibrated")
        return None
    try:
        calibration = fit_calibration(
            result.val_logits,
            val["time"],
            val["event"],
            result.edges[1:-1],
            follow_up(data, modalities),
            "val",
            config.seed,
        )
    except ConfigError as exc:
        log.warning("%s: the model stays uncalibrated", exc)
        return None
    calibrated(cast(LegoModel, model), calibration)
    return calibration


def calibrate_on(model: LegoModel, data: SplitData, modalities: Sequence[str], seed: int = 0) -> Calibration:
    """Recalibrate a survival model (a merged one, say) on `data`'s validation split, running it there; a split
    without samples or events is a ConfigError."""
    if model.task.kind != "survival":
        raise ConfigError(f"calibration is for survival models; this one's task is {model.task}")
    edges = model_contract(model).edges
    if edges is None:
        raise ConfigError("the model records no bin edges (an older file): it cannot be calibrated")
    ids = data.ids("val", modalities)
    if not ids:
        raise ConfigError(f"{data.folder.root}: no validation samples with {', '.join(modalities)} to calibrate on")
    seen = overlaps(getattr(model, "provenance", None) or {}, ids, ("train",))
    if seen:
        where = "; ".join(f"{o.seen} of {o.where}'s" for o in seen)
        raise ConfigError(
            f"{data.folder.root}: {max(o.seen for o in seen)} of the {len(ids)} validation samples were training "
            f"samples ({where}): calibrate on the split the blocks were trained with (a splits.csv, or their seed)"
        )
    targets = data.targets(ids)
    logits = predict_logits(cast(nn.Module, model), data, ids, place=world())
    calibration = fit_calibration(
        logits, targets["time"], targets["event"], edges, follow_up(data, modalities), "val", seed
    )
    calibrated(model, calibration)
    return calibration
