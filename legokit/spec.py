"""Block specs (`blocks/NAME.yaml`): how to build and train one block, validated once; flags may override."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .block import BlockConfig, parse_latent
from .contract import Labelling, check_edges, check_task_terms
from .encoders import check_encoder_kwargs, list_encoders
from .errors import ConfigError
from .tasks import TaskSpec
from .train import TrainConfig
from .yamlfile import check_keys, read_yaml, require_mapping

ARCHITECTURE_KEYS = ("latent", "depth", "fft_axes", "heads", "dim_head", "ff_mult", "dropout", "update",
                     "head_features", "shared_init")
LABEL_KEYS = ("time_unit", "bins", "classes")
SPEC_KEYS = ("modality", "description", "encoder", "task", *LABEL_KEYS, *ARCHITECTURE_KEYS, "training")
DEFAULT_ENCODER = "snn"
DEFAULT_TASK = TaskSpec("survival", 4)
ENCODER_KEYS = ("name", "kwargs")
TRAINING_KEYS = tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class BlockSpec:
    """A block to train: its modality, built-in encoder and kwargs, latent shape, depth, task, and training settings.
    Architecture defaults are `BlockConfig`'s and training defaults `TrainConfig`'s: defined once, there."""

    modality: str
    encoder: str = DEFAULT_ENCODER
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    latent: tuple[int, int] = BlockConfig.latent
    depth: int = BlockConfig.depth
    task: TaskSpec = DEFAULT_TASK
    fft_axes: str = BlockConfig.fft_axes
    heads: int = BlockConfig.heads
    dim_head: int = BlockConfig.dim_head
    ff_mult: int = BlockConfig.ff_mult
    dropout: float = BlockConfig.dropout
    update: str = BlockConfig.update
    head_features: str = BlockConfig.head_features
    shared_init: bool = BlockConfig.shared_init
    training: TrainConfig = TrainConfig()
    description: str = ""
    labelling: Labelling = Labelling()  # time unit, survival bin edges, class names (`legokit.contract`)

    def __post_init__(self) -> None:
        if self.encoder not in list_encoders():
            raise ConfigError(f"encoder {self.encoder!r}: train takes a named encoder ({', '.join(list_encoders())}; "
                              "register others with legokit.register_encoder)")
        check_encoder_kwargs(self.encoder, self.encoder_kwargs)  # sizes capped before any data is read
        check_labelling(self.task, self.labelling)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> "BlockSpec":
        path = Path(path)
        data = read_yaml(path, "spec")
        check_keys(path, "", data, SPEC_KEYS)
        if "modality" not in data:
            raise ConfigError(f"{path}: modality: missing")
        encoder = require_mapping(path, "encoder", data.get("encoder", {}))
        check_keys(path, "encoder", encoder, ENCODER_KEYS)
        training = require_mapping(path, "training", data.get("training", {}))
        check_keys(path, "training", training, TRAINING_KEYS)
        given = {k: data[k] for k in ARCHITECTURE_KEYS if k in data}  # absent keys take the one set of defaults
        try:
            if "latent" in given:
                given["latent"] = parse_latent(str(given["latent"]))
            if "task" in data:
                given["task"] = TaskSpec.parse(str(data["task"]))
            if "name" in encoder:
                given["encoder"] = str(encoder["name"])
            if any(k in data for k in LABEL_KEYS):
                bins = data.get("bins")
                given["labelling"] = Labelling(data.get("time_unit"), None if bins is None else check_edges(bins, strict=True),
                                               None, data.get("classes"))
            return cls(
                modality=str(data["modality"]),
                encoder_kwargs=dict(require_mapping(path, "encoder.kwargs", encoder.get("kwargs", {}))),
                training=TrainConfig(**training),
                description=str(data.get("description", "")),
                **given,
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def override(self, **changes: Any) -> "BlockSpec":
        """A copy with the given fields changed (None leaves a field as it is); training fields go to `training`."""
        training = {k: v for k, v in changes.items() if k in TRAINING_KEYS and v is not None}
        own = {k: v for k, v in changes.items() if k not in TRAINING_KEYS and v is not None}
        return replace(self, **own, training=replace(self.training, **training))


def check_labelling(task: TaskSpec, labelling: Labelling) -> None:
    """What a user says of the labels must fit the task (`contract.check_task_terms`)."""
    check_task_terms(task, labelling.bins, labelling.time_unit, labelling.classes)
