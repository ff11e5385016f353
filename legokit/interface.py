"""The interface every legokit model offers (a block, a merged or a fused model, with or without adapters), so
that training, prediction, adapters and files use one set of names instead of asking which class they hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from legokit.compose.joins import joined_contract
from legokit.contract import Contract, time_scale
from legokit.data.batch import ModalityBatch
from legokit.data.folder import InputSpec
from legokit.progress import log
from legokit.survival.calibration import Calibration
from legokit.survival.outputs import SurvivalOutputs
from legokit.tasks import TaskSpec

if TYPE_CHECKING:
    from legokit.nn.block import LegoBlock


class LegoModel(Protocol):
    """Modalities, task, blocks, head, encode -> spectrum -> logits, config and provenance."""

    config: Any
    provenance: dict[str, Any]

    @property
    def modalities(self) -> list[str]: ...

    @property
    def task(self) -> TaskSpec: ...

    @property
    def blocks(self) -> Mapping[str, LegoBlock]: ...  # the LegoBlocks inside, by modality (a block: itself)

    @property
    def head(self) -> nn.Module: ...  # the task head module

    @property
    def head_features(self) -> str: ...  # what the head reads of the spectrum (`spectral.pool_spectrum`)

    @property
    def block_prefixes(self) -> Mapping[str, str]: ...  # each block's module path inside the model ("" or "blocks.M.")

    @property
    def first_blocks(self) -> list[str]: ...  # the blocks whose first update step a sample's latent meets first

    def encode(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor: ...  # the frequency-domain latent

    def decode(self, spectrum: torch.Tensor) -> torch.Tensor: ...  # task logits of a spectrum

    def __call__(self, inputs: Mapping[str, ModalityBatch | torch.Tensor]) -> torch.Tensor: ...  # logits


def model_inputs(model: LegoModel) -> dict[str, InputSpec]:
    """What a dataset folder supplies for each modality of a model: a per-sample shape, or raw text."""
    return {m: b.data_input for m, b in model.blocks.items()}


def model_contract(model: LegoModel) -> Contract:
    """The task contract of a model (time unit and bin edges, or class names): its blocks' (`compose.joins`)."""
    return joined_contract([b.config for b in model.blocks.values()])


def model_columns(model: LegoModel) -> dict[str, tuple[str, ...]]:
    """Each table modality's feature names, by which a dataset folder's columns are aligned; a table block that
    records none (an older file) is read by position, with a warning."""
    columns = {}
    for modality, block in model.blocks.items():
        config = block.config
        if config.contract.features is not None and len(config.input_shape) == 1:
            columns[modality] = config.contract.features
        elif config.input_shape[0] is not None and len(config.input_shape) == 1:
            log.warning(
                "block %s records no feature names (not trained by legokit train, or an older file): its "
                "table columns are read by position",
                modality,
            )
    return columns


def data_scale(model: LegoModel, time_unit: str | None) -> float:
    """The factor that turns a dataset's times (in `time_unit`, when given) into the model's unit."""
    unit = model_contract(model).time_unit
    if time_unit is not None and unit is None and model.task.kind == "survival":
        log.warning(
            "the model records no time unit: the times are taken as they are (--time-unit %s ignored)", time_unit
        )
    return time_scale(time_unit, unit)


def model_calibration(model: LegoModel) -> Calibration | None:
    """A survival model's recalibration (`legokit.survival.calibration`), recorded in its provenance; None when it
    has none (uncalibrated: predict and eval say so)."""
    record = (getattr(model, "provenance", None) or {}).get("calibration")
    return None if record is None else Calibration.from_record(record)


def calibrated(model: LegoModel, calibration: Calibration) -> None:
    """Record `calibration` in the model's provenance (saved with it), in place."""
    model.provenance = {**(getattr(model, "provenance", None) or {}), "calibration": calibration.to_record()}


UNCALIBRATED = (
    "the model is not calibrated: its survival probabilities may be biased (train and fuse calibrate on their "
    "validation split; merge --calibrate-on DATA)"
)


def survival_outputs(model: LegoModel, warn: bool = False) -> SurvivalOutputs:
    """How a survival model's logits are read: its bin edges and calibration; `warn`: say when it has none."""
    calibration = model_calibration(model)
    if calibration is None and warn:
        log.warning("%s", UNCALIBRATED)
    return SurvivalOutputs(model_contract(model).edges, calibration)
