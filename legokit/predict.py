"""Predictions of a block or merged model on a dataset folder, any subset of modalities present per sample."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from legokit.cache import TokenCache, encoded_once
from legokit.data.folder import DataError, DatasetFolder
from legokit.data.stream import budget_chunks
from legokit.device import resolve_device
from legokit.errors import ConfigError, positive_int
from legokit.interface import UNCALIBRATED, LegoModel, model_columns, model_contract, model_inputs, survival_outputs
from legokit.io.atomic import write_atomic
from legokit.progress import log, progress_bar
from legokit.survival.outputs import SurvivalOutputs
from legokit.tasks import prediction_columns


@dataclass(frozen=True)
class Predictions:
    """Task outputs per sample, and the files they were computed from."""

    ids: list[str]
    columns: dict[str, list[float]]
    sources: tuple[Path, ...] = ()

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", *self.columns])
        for row, sample in enumerate(self.ids):
            writer.writerow([sample, *(f"{values[row]:.8g}" for values in self.columns.values())])
        return out.getvalue()

    def write(self, path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
        """Write the CSV atomically; refuses to replace any of `inputs` (the model, the data folder's files)."""
        write_atomic(Path(path), self.to_csv().encode(), inputs)
        return Path(path)


DEFAULT_BATCH = 256  # samples per forward pass when predicting


@torch.no_grad()
def predict_folder(
    model: LegoModel,
    data_dir: str | os.PathLike[str],
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "auto",
    progress: bool = False,
    cache: TokenCache | bool | None = True,
    times: Sequence[float] = (),
) -> Predictions:
    """Task outputs (risk and hazards, or probabilities) for every sample that has at least one of the model's
    modalities in the dataset folder; pretrained encoders run once per sample through `cache` (`legokit.cache`).
    A survival model's hazards and survival are recalibrated when it carries a calibration (else a warning says
    it does not); `times`: also S(t) at those times in the model's time unit (`legokit.survival.curves`)."""
    positive_int("batch size", batch_size)
    reading = survival_outputs(model) if model.task.kind == "survival" else None
    if times:
        if reading is None:
            raise ConfigError(f"--times is for survival models; this one's task is {model.task}")
        error, warning = reading.times_problem(times)
        if error is not None:
            raise ConfigError(error)
        if warning is not None:
            log.warning("%s", warning)
    data = DatasetFolder(data_dir, model_inputs(model), model_columns(model))
    target = resolve_device(device)
    module = cast(nn.Module, model)  # every LegoModel is an nn.Module (a block, a merged, fused or adapted model)
    module.to(target).eval()  # in place
    with encoded_once(module, data, data.ids, TokenCache.resolve(cache), progress=progress):
        predictions = _predict(model, data, target, batch_size, progress, reading, times)
    if reading is not None and reading.calibration is None:
        log.warning("%s", UNCALIBRATED)
    return predictions


def _predict(
    model: LegoModel,
    data: DatasetFolder,
    target: torch.device,
    batch_size: int,
    progress: bool,
    reading: SurvivalOutputs | None,
    times: Sequence[float],
) -> Predictions:
    columns: dict[str, list[float]] = {}
    classes = model_contract(model).classes
    with progress_bar("predicting", len(data.ids), enabled=progress, unit="samples") as advance:
        # every token of every bag, in batches of at most `batch_size` samples within the folder's token budget
        for ids in budget_chunks(data.ids, data.lengths(data.ids), data.token_budget(), most=batch_size):
            batches = {m: b.to(target) for m, b in data.batch(ids).items()}
            logits = model(batches).float()
            finite = torch.isfinite(logits).all(dim=1)
            if not finite.all():
                sample = ids[int((~finite).nonzero()[0])]
                raise DataError(
                    f"{data.root}: sample {sample!r}: the model's output is NaN or infinite (check its "
                    "inputs for extreme values)"
                )
            for name, values in prediction_columns(model.task, logits, classes, reading, times).items():
                columns.setdefault(name, []).extend(values.cpu().tolist())
            advance(len(ids), "")
    return Predictions(data.ids, columns, tuple(data.files()))
