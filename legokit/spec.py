"""Block specs (`blocks/NAME.yaml`): how to build and train one block, validated once; flags may override."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from legokit.contract import Labelling, check_edges, check_task_terms
from legokit.encoders import check_encoder_kwargs, list_encoders
from legokit.errors import ConfigError
from legokit.io.yamlfile import check_keys, read_yaml, require_mapping
from legokit.nn.block import Architecture
from legokit.schema import SPEC, file_keys, parsed
from legokit.tasks import TaskSpec
from legokit.training.trainer import TrainConfig

ARCHITECTURE_KEYS = file_keys(Architecture, SPEC)  # one key per `Architecture` field
LABEL_KEYS = ("time_unit", "bins", "classes")  # `Labelling`'s, written flat
SPEC_KEYS = ("modality", "description", "encoder", "task", *LABEL_KEYS, *ARCHITECTURE_KEYS, "training")
DEFAULT_ENCODER = "snn"
DEFAULT_TASK = TaskSpec("survival", 4)
ENCODER_KEYS = ("name", "kwargs")
TRAINING_KEYS = file_keys(TrainConfig, SPEC)  # one key per `TrainConfig` field


@dataclass(frozen=True)
class _Named:
    """The spec's modality and built-in encoder (a base class only so that these come first, positionally)."""

    modality: str
    encoder: str = DEFAULT_ENCODER
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockSpec(Architecture, _Named):
    """A block to train: its modality, built-in encoder and kwargs, its `Architecture` (latent, depth, ...), task,
    and training settings. Architecture and training fields, their defaults and keys, are `Architecture`'s and
    `TrainConfig`'s: defined once, there."""

    task: TaskSpec = DEFAULT_TASK
    training: TrainConfig = TrainConfig()
    description: str = ""
    labelling: Labelling = Labelling()  # time unit, survival bin edges, class names (`legokit.contract`)

    def __post_init__(self) -> None:
        if self.encoder not in list_encoders():
            raise ConfigError(
                f"encoder {self.encoder!r}: train takes a named encoder ({', '.join(list_encoders())}; "
                "register others with legokit.register_encoder)"
            )
        check_encoder_kwargs(self.encoder, self.encoder_kwargs)  # sizes capped before any data is read
        check_labelling(self.task, self.labelling)
        self._check_architecture()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> BlockSpec:
        path = Path(path)
        data = read_yaml(path, "spec")
        check_keys(path, "", data, SPEC_KEYS)
        if "modality" not in data:
            raise ConfigError(f"{path}: modality: missing")
        encoder = require_mapping(path, "encoder", data.get("encoder", {}))
        check_keys(path, "encoder", encoder, ENCODER_KEYS)
        training = require_mapping(path, "training", data.get("training", {}))
        check_keys(path, "training", training, TRAINING_KEYS)
        try:
            given = parsed(Architecture, data, SPEC)  # absent keys take the one set of defaults
            if "task" in data:
                given["task"] = TaskSpec.parse(str(data["task"]))
            if "name" in encoder:
                given["encoder"] = str(encoder["name"])
            if any(k in data for k in LABEL_KEYS):
                bins = data.get("bins")
                given["labelling"] = Labelling(
                    data.get("time_unit"),
                    None if bins is None else check_edges(bins, strict=True),
                    None,
                    data.get("classes"),
                )
            return cls(
                modality=str(data["modality"]),
                encoder_kwargs=dict(require_mapping(path, "encoder.kwargs", encoder.get("kwargs", {}))),
                training=TrainConfig(**training),
                description=str(data.get("description", "")),
                **given,
            )
        except (ConfigError, TypeError) as exc:
            text = str(exc)  # a message that already names the file is not prefixed twice
            raise ConfigError(text if text.startswith(f"{path}:") else f"{path}: {text}") from exc

    def override(self, **changes: Any) -> BlockSpec:
        """A copy with the given fields changed (None leaves a field as it is); training fields go to `training`."""
        training = {k: v for k, v in changes.items() if k in TRAINING_KEYS and v is not None}
        own = {k: v for k, v in changes.items() if k not in TRAINING_KEYS and v is not None}
        return replace(self, **own, training=replace(self.training, **training))


def check_labelling(task: TaskSpec, labelling: Labelling) -> None:
    """What a user says of the labels must fit the task (`contract.check_task_terms`)."""
    check_task_terms(task, labelling.bins, labelling.time_unit, labelling.classes)
