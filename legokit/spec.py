"""Block specs (`blocks/NAME.yaml`): how to build and train one block, validated once; flags may override."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .block import DEFAULT_HEAD_FEATURES, DEFAULT_SHARED_INIT, DEFAULT_UPDATE, parse_latent
from .encoders import BUILTIN_ENCODERS
from .errors import ConfigError
from .tasks import TaskSpec
from .train import TrainConfig
from .yamlfile import check_keys, read_yaml, require_mapping

SPEC_KEYS = ("modality", "description", "encoder", "latent", "depth", "task", "fft_axes", "heads", "dim_head",
             "dropout", "update", "head_features", "shared_init", "training")
ENCODER_KEYS = ("name", "kwargs")
TRAINING_KEYS = tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class BlockSpec:
    """A block to train: its modality, built-in encoder and kwargs, latent shape, depth, task, and training settings."""

    modality: str
    encoder: str = "snn"
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    latent: tuple[int, int] = (64, 64)
    depth: int = 2
    task: TaskSpec = TaskSpec("survival", 4)
    fft_axes: str = "both"
    heads: int = 1
    dim_head: int = 64
    dropout: float = 0.0
    update: str = DEFAULT_UPDATE
    head_features: str = DEFAULT_HEAD_FEATURES
    shared_init: bool = DEFAULT_SHARED_INIT
    training: TrainConfig = TrainConfig()
    description: str = ""

    def __post_init__(self) -> None:
        if self.encoder not in BUILTIN_ENCODERS:
            raise ConfigError(f"encoder {self.encoder!r}: train takes a built-in encoder ({', '.join(BUILTIN_ENCODERS)})")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> "BlockSpec":
        path = Path(path)
        data = read_yaml(path, "spec")
        check_keys(path, "", data, SPEC_KEYS)
        if "modality" not in data:
            raise ConfigError(f"{path}: modality: missing")
        encoder = require_mapping(path, "encoder", data.get("encoder", {"name": "snn"}))
        check_keys(path, "encoder", encoder, ENCODER_KEYS)
        training = require_mapping(path, "training", data.get("training", {}))
        check_keys(path, "training", training, TRAINING_KEYS)
        try:
            return cls(
                modality=str(data["modality"]),
                encoder=str(encoder.get("name", "snn")),
                encoder_kwargs=dict(require_mapping(path, "encoder.kwargs", encoder.get("kwargs", {}))),
                latent=parse_latent(str(data.get("latent", "64x64"))),
                depth=data.get("depth", 2),
                task=TaskSpec.parse(str(data.get("task", "survival:4"))),
                fft_axes=data.get("fft_axes", "both"),
                heads=data.get("heads", 1),
                dim_head=data.get("dim_head", 64),
                dropout=data.get("dropout", 0.0),
                update=data.get("update", DEFAULT_UPDATE),
                head_features=data.get("head_features", DEFAULT_HEAD_FEATURES),
                shared_init=data.get("shared_init", DEFAULT_SHARED_INIT),
                training=TrainConfig(**training),
                description=str(data.get("description", "")),
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
