"""YAML recipes: a composition graph written down (blocks by path or Hub id, the operation and its parameters, the
output path), validated once here; every error names the file and the key."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from legokit.artifacts.files import load_block, save
from legokit.artifacts.format import KEY_CONFIG, KEY_KIND, KEY_PROVENANCE, read_metadata
from legokit.artifacts.merging import merge_files
from legokit.artifacts.registry import BLOCK
from legokit.compose.graph import Graph
from legokit.compose.joins import check_joinable
from legokit.compose.modes import fusion_modes
from legokit.contract import TIME_UNITS
from legokit.errors import ConfigError, LegoError
from legokit.hub.refs import HubRef, cached_path, is_hub_ref, parse_ref, resolve
from legokit.io.atomic import refuse_inputs
from legokit.io.inputs import read_input
from legokit.io.outputs import check_output
from legokit.io.yamlfile import MAX_YAML_BYTES, check_keys, read_yaml, require_mapping, where
from legokit.nn.block import BlockConfig
from legokit.nn.spectral import DEFAULT_PHASE, PHASE_MODES
from legokit.progress import log
from legokit.schema import RECIPE, file_keys
from legokit.training.trainer import FUSE_TRAINING, TrainConfig
from legokit.training.workflows import fuse_blocks

TOP_KEYS = ("name", "description", "blocks", "operation", "data", "output")
BLOCK_KEYS = ("artifact",)
# a fuse recipe's operation: its kind, the data's time unit, every `TrainConfig` key (`legokit.schema`), and the
# deprecated freeze_encoders
FUSE_KEYS = ("kind", "time_unit", *file_keys(TrainConfig, RECIPE), "freeze_encoders")
MERGE_KEYS = ("kind", "phase", "weights")


def operation_keys() -> dict[str, tuple[str, ...]]:
    """Each operation a recipe may name (merge, or a registered fusion mode) and the keys it takes."""
    return {"merge": MERGE_KEYS, **dict.fromkeys(fusion_modes(), FUSE_KEYS)}


def _text(path: Path, key: str, value: Any, what: str) -> str | None:
    """A recipe value that must be a string, or absent (None); a list, mapping, number or bool names the key."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where(path, key)}: must be {what}, got {type(value).__name__} {repr(value)[:40]}")
    return value


def _blocks(path: Path, data: Any) -> list[BlockRef]:
    """The recipe's blocks: modality name -> {artifact: a path relative to the recipe, or a Hub reference}."""
    blocks = []
    for modality, entry in require_mapping(path, "blocks", data).items():
        key = f"blocks.{modality}"
        _text(path, key, modality, "a modality name (a string key)")
        entry = require_mapping(path, key, entry)
        check_keys(path, key, entry, BLOCK_KEYS)
        artifact = _text(path, key + ".artifact", entry.get("artifact"), "a path or hf://org/repo/file.st")
        if not artifact:
            raise ConfigError(f"{where(path, key + '.artifact')}: missing (a path or hf://org/repo/file.st)")
        if is_hub_ref(artifact):
            try:
                blocks.append(BlockRef(modality, artifact, hub=parse_ref(artifact)))
            except ConfigError as exc:
                raise ConfigError(f"{where(path, key + '.artifact')}: {exc}") from exc
        else:
            blocks.append(BlockRef(modality, artifact, path=(path.parent / artifact)))
    return blocks


@dataclass(frozen=True)
class BlockRef:
    """One block of a recipe: its modality (the key) and where its artifact is (a path or a Hub reference)."""

    modality: str
    artifact: str
    path: Path | None = None
    hub: HubRef | None = None


@dataclass(frozen=True)
class Operation:
    """`merge` with its phase rule and weights, or `stack` / `weave` with their fine-tuning settings."""

    kind: str
    phase: str = DEFAULT_PHASE
    weights: Mapping[str, float] | str | None = None  # or "auto": from the blocks' validation metrics
    training: Mapping[str, Any] | None = None
    time_unit: str | None = None  # the unit of the data's times, when not the blocks'


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Relative paths are relative to the recipe file's folder."""

    path: Path
    name: str
    blocks: tuple[BlockRef, ...]
    operation: Operation
    output: Path
    description: str = ""
    data: Path | None = None
    text: str = ""  # the file as written, embedded in what the recipe makes

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Recipe:
        path = Path(path)
        data = read_yaml(path, "recipe")
        check_keys(path, "", data, TOP_KEYS)
        for key in ("blocks", "operation", "output"):
            if key not in data:
                raise ConfigError(f"{where(path, key)}: missing")
        base = path.parent
        name = _text(path, "name", data.get("name"), "a string")
        description = _text(path, "description", data.get("description"), "a string")
        blocks = _blocks(path, data["blocks"])
        operation = cls._operation(
            path, require_mapping(path, "operation", data["operation"]), [b.modality for b in blocks]
        )
        output = _text(path, "output", data["output"], "a file path")
        if not output:
            raise ConfigError(f"{where(path, 'output')}: must be a file path")
        folder = _text(path, "data", data.get("data"), "a folder path")
        if operation.kind != "merge" and not folder:
            raise ConfigError(
                f"{where(path, 'data')}: missing (a {operation.kind} recipe fine-tunes on a dataset folder)"
            )
        return cls(
            path,
            path.stem if name is None else name,
            tuple(blocks),
            operation,
            base / output,
            description or "",
            None if folder is None else base / folder,
            read_input(path, ConfigError, limit=MAX_YAML_BYTES).decode("utf-8", errors="replace"),
        )

    @staticmethod
    def _operation(path: Path, data: Mapping[str, Any], modalities: list[str]) -> Operation:
        kind = data.get("kind")
        keys = operation_keys()
        if not isinstance(kind, str) or kind not in keys:
            raise ConfigError(f"{where(path, 'operation.kind')}: {repr(kind)[:40]}; choose one of {', '.join(keys)}")
        check_keys(path, "operation", data, keys[kind])
        if kind != "merge":
            training = {k: v for k, v in data.items() if k not in ("kind", "time_unit")}
            unit = data.get("time_unit")
            if unit is not None and (not isinstance(unit, str) or unit not in TIME_UNITS):
                raise ConfigError(
                    f"{where(path, 'operation.time_unit')}: {repr(unit)[:40]}; choose one of {', '.join(TIME_UNITS)}"
                )
            if "freeze_encoders" in training:
                frozen = training.pop("freeze_encoders")
                if "encoders" in training:
                    raise ConfigError(f"{where(path, 'operation.freeze_encoders')}: deprecated, and encoders is given")
                if not isinstance(frozen, bool):
                    raise ConfigError(f"{where(path, 'operation.freeze_encoders')}: must be true or false")
                log.warning(
                    "%s: deprecated; use encoders: frozen, auto or finetune", where(path, "operation.freeze_encoders")
                )
                training["encoders"] = "frozen" if frozen else "finetune"
            try:
                replace(FUSE_TRAINING, **training)
            except ConfigError as exc:
                raise ConfigError(f"{where(path, 'operation')}: {exc}") from exc
            return Operation(kind, training=training, time_unit=unit)
        phase = data.get("phase", DEFAULT_PHASE)
        if not isinstance(phase, str) or phase not in PHASE_MODES:
            raise ConfigError(
                f"{where(path, 'operation.phase')}: {repr(phase)[:40]}; choose one of {', '.join(PHASE_MODES)}"
            )
        weights = data.get("weights")
        if weights is not None and not (isinstance(weights, str) and weights == "auto"):
            weights = dict(require_mapping(path, "operation.weights", weights))
            for modality, weight in weights.items():
                if modality not in modalities:
                    raise ConfigError(f"{where(path, f'operation.weights.{modality}')}: not one of the recipe's blocks")
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                    raise ConfigError(f"{where(path, f'operation.weights.{modality}')}: must be a positive number")
        return Operation(kind, phase, weights)

    def graph(self) -> Graph:
        modalities = [b.modality for b in self.blocks]
        if self.operation.kind == "merge":
            return Graph.for_operation("merge", modalities, phase=self.operation.phase)
        return Graph.for_operation(self.operation.kind, modalities, order=modalities)

    def uncached(self) -> list[BlockRef]:
        """The Hub blocks not in the local cache yet (they would be downloaded by a run)."""
        return [b for b in self.blocks if b.hub is not None and cached_path(b.hub) is None]

    def local_path(self, block: BlockRef, download: bool) -> Path | None:
        if block.hub is None:
            return block.path
        found = cached_path(block.hub)
        if found is None and download:
            return resolve(block.hub)
        return found

    def check(self, download: bool = False) -> Graph:
        """Validate the graph against the blocks' headers (no tensor is read); Hub blocks not cached are skipped
        unless `download`."""
        configs: dict[str, BlockConfig] = {}
        records: dict[str, Any] = {}
        for block in self.blocks:
            key = f"blocks.{block.modality}.artifact"
            local = self.local_path(block, download)
            if local is None:
                continue
            if not local.is_file():
                raise ConfigError(f"{where(self.path, key)}: no such file ({local})")
            try:
                metadata = read_metadata(local)
                if metadata.get(KEY_KIND) != BLOCK:
                    raise ConfigError(f"{local} is a {metadata.get(KEY_KIND)!r} artifact, not a block")
                config = BlockConfig.from_dict(json.loads(metadata[KEY_CONFIG]))
                records[block.modality] = json.loads(metadata.get(KEY_PROVENANCE, "{}"))
            except (LegoError, KeyError, TypeError, ValueError, RecursionError) as exc:
                raise ConfigError(f"{where(self.path, key)}: {exc}") from exc
            if config.modality != block.modality:
                raise ConfigError(
                    f"{where(self.path, key)}: the artifact's modality is {config.modality!r}, not {block.modality!r}"
                )
            configs[block.modality] = config
        graph = self.graph()
        if len(configs) == len(self.blocks):
            try:
                check_joinable(list(configs.values()), records)
            except ConfigError as exc:
                raise ConfigError(f"{where(self.path, 'blocks')}: {exc}") from exc
        return graph

    def run(
        self, progress: bool = True, device: str | None = None, output: str | os.PathLike[str] | None = None
    ) -> Path:
        """Execute the recipe: LegoMerge of its blocks, or LegoFuse and fine-tuning on its data (on `device`, else
        the recipe's, else auto), into `output` (default: the recipe's)."""
        if output is not None:
            return replace(self, output=Path(output)).run(progress, device)
        data = [self.data] if self.operation.kind != "merge" and self.data is not None else []
        check_output(self.output, [self.path, *(b.path for b in self.blocks), *data])  # before any download or work
        self.check(download=True)
        paths = [found for b in self.blocks if (found := self.local_path(b, download=True)) is not None]
        refuse_inputs(self.output, [self.path, *paths, *data])  # the recipe, its blocks and its data stay as they are
        # the recipe travels verbatim in the artifact (and its model card), as mergekit does
        provenance = {"recipe": {"path": str(self.path), "name": self.name, "text": self.text}}
        if self.operation.kind == "merge":
            weights = self.operation.weights
            weights = dict(weights) if isinstance(weights, Mapping) else weights
            return merge_files(paths, self.output, weights, self.operation.phase, provenance)
        if self.data is None or not self.data.is_dir():
            raise ConfigError(f"{where(self.path, 'data')}: no such folder ({self.data})")
        settings: dict[str, Any] = {**dict(self.operation.training or {}), **({"device": device} if device else {})}
        config = replace(FUSE_TRAINING, **settings)
        model, _ = fuse_blocks(
            [load_block(p) for p in paths],
            self.data,
            self.operation.kind,
            config,
            progress=progress,
            time_unit=self.operation.time_unit,
        )
        return save(model, self.output, provenance, inputs=[self.path, *paths, *data])
