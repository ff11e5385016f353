"""Saving and loading models as `.st` artifacts: each kind's config and tensors, checked against the file."""

from __future__ import annotations

import inspect
import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .archive import program_records
from .artifact import Artifact, OpenedArtifact, Source, Stored, open_artifact, read_artifact, refuse_inputs
from .artifact import write_artifact, write_streaming
from .block import BlockConfig, LegoBlock
from .compose.fuse import FusedModel, fused_config, parse_fused_config
from .compose.graph import Graph
from .compose.merge import MergeConfig, MergedModel, head_width, merge_head_tensors, merged_config, parse_merged_config
from .compose.merge import check_mergeable, resolve_weights
from .device import resolve_device
from .encoders import FOREIGN, ExportedEncoder, encoder_class
from .errors import ArtifactError, ConfigError, EncoderError
from .hub import local_artifact
from .layers import TaskHead
from .spectral import pooled_width

BLOCK = "block"
PROGRAM_PREFIX = "__program__."


def block_tensors(block: LegoBlock, prefix: str = "") -> dict[str, torch.Tensor]:
    """A block's state dict plus its foreign encoder's program (as a uint8 tensor), under `prefix`."""
    tensors = {prefix + name: value for name, value in block.state_dict().items()}
    program = block.program()
    if program is not None:
        tensors[PROGRAM_PREFIX + prefix + "encoder"] = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    return tensors


def check_state(path: Path, module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Every tensor the module needs is in the file with the right shape and dtype, and nothing else is."""
    expected = module.state_dict()
    for name, value in expected.items():
        stored = tensors.get(prefix + name)
        if stored is None:
            raise ArtifactError(f"{path}: missing tensor '{prefix + name}'")
        if tuple(stored.shape) != tuple(value.shape):
            raise ArtifactError(
                f"{path}: tensor '{prefix + name}' has shape {tuple(stored.shape)}, expected {tuple(value.shape)}"
            )
        if stored.dtype != value.dtype:
            raise ArtifactError(f"{path}: tensor '{prefix + name}' has dtype {stored.dtype}, expected {value.dtype}")
    unexpected = sorted(k for k in tensors if k.startswith(prefix) and k[len(prefix):] not in expected)
    if unexpected:
        raise ArtifactError(f"{path}: unexpected tensor '{unexpected[0]}'")


def _check_sizes_first(path: Path, config: BlockConfig, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The largest tensors a config asks for (latent, every update step's projections and feed-forward, the head, a
    built-in encoder's weights, built on the meta device) must be the file's: a cheap check before the real build."""
    channels, dim = config.latent
    inner = config.heads * config.dim_head
    expected = {"latent": (channels, dim), "input_shift": (config.features,), "input_scale": (config.features,),
                "task_head.linear.weight": (config.task.out_features, pooled_width(dim, config.head_features))}
    numbered = (re.match(r"([0-9]{1,6})\.", k[len(prefix) + 7:]) for k in tensors if k.startswith(prefix + "layers."))
    steps = {int(found.group(1)) for found in numbered if found}
    if steps != set(range(config.depth)):
        raise ArtifactError(f"{path}: the config asks for {config.depth} update steps, the file holds {len(steps)}")
    for step in range(config.depth):
        expected[f"layers.{step}.attention.to_q.weight"] = (inner, dim)
        expected[f"layers.{step}.attention.to_kv.weight"] = (2 * inner, config.encoder.out_dim)
        expected[f"layers.{step}.feed_forward.net.1.weight"] = (dim * config.ff_mult, dim)
    if config.encoder.name != FOREIGN:
        _check_builtin_sizes(path, config, {k[len(prefix) + 8:]: v for k, v in tensors.items()
                                            if k.startswith(prefix + "encoder.")})
    for name, shape in expected.items():
        stored = tensors.get(prefix + name)
        if stored is None:
            raise ArtifactError(f"{path}: missing tensor '{prefix + name}'")
        if tuple(stored.shape) != shape:
            raise ArtifactError(f"{path}: tensor '{prefix + name}' has shape {tuple(stored.shape)}, expected {shape} "
                                "(from the config)")


def _check_builtin_sizes(path: Path, config: BlockConfig, weights: Mapping[str, torch.Tensor]) -> None:
    """A built-in encoder's sizes in the config (given, or its defaults) must be those its weights in the file have."""
    try:
        cls = encoder_class(config.encoder.name)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from exc
    stored = cls.infer_kwargs(weights)
    if not stored:
        raise ArtifactError(f"{path}: the file holds no weights of its {config.encoder.name} encoder")
    defaults = inspect.signature(cls).parameters
    for key, value in stored.items():
        asked = config.encoder.kwargs.get(key, defaults[key].default if key in defaults else None)
        if asked != value:
            raise ArtifactError(f"{path}: the config's encoder {key} is {asked!r}, its weights in the file have {value}")
    shapes = getattr(cls, "weight_shapes", None)
    if shapes is not None:  # sizes that only arithmetic on the config gives: checked before anything is allocated
        asked = {k: p.default for k, p in defaults.items() if p.default is not inspect.Parameter.empty}
        try:
            expected = shapes(**{**asked, **config.encoder.kwargs})
        except (TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"{path}: invalid {config.encoder.name} encoder config: {exc}") from exc
        for name, shape in expected.items():
            if name in weights and tuple(weights[name].shape) != shape:
                raise ArtifactError(f"{path}: encoder tensor '{name}' has shape {tuple(weights[name].shape)}, the "
                                    f"config asks for {shape}")


def block_from_tensors(path: Path, config_data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str = "") -> LegoBlock:
    """Rebuild one block from its config and the artifact's tensors; any inconsistency is an ArtifactError.

    The config's sizes are checked against the file's tensors before anything is built (`_check_sizes_first`), so a
    config that asks for gigabytes the file does not hold is refused before any memory is spent; the built block then
    loads the file's tensors. A foreign encoder is rebuilt from its program (bounded by the file)."""
    try:
        config = BlockConfig.from_dict(config_data)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt block config ({type(exc).__name__}: {exc})") from exc
    program_tensor = tensors.get(PROGRAM_PREFIX + prefix + "encoder")
    encoder = None
    if program_tensor is not None:
        if program_tensor.dtype != torch.uint8 or program_tensor.dim() != 1:
            raise ArtifactError(f"{path}: encoder program tensor is not a byte string")
        if config.encoder.name != FOREIGN:
            raise ArtifactError(f"{path}: an encoder program beside a built-in encoder ({config.encoder.name})")
        takes_mask = bool(config.encoder.kwargs.get("mask_keyword"))
        try:
            encoder = ExportedEncoder(program_tensor.numpy().tobytes(), config.encoder.out_dim, takes_mask)
        except EncoderError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc
    elif config.encoder.name == FOREIGN:
        raise ArtifactError(f"{path}: a foreign encoder without its program tensor")
    _check_sizes_first(path, config, tensors, prefix)
    try:
        block = LegoBlock(config, encoder=encoder)
    except (ConfigError, EncoderError) as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from exc
    state = {k: v for k, v in tensors.items() if not k.startswith(PROGRAM_PREFIX)}
    check_state(path, block, state, prefix)
    block.load_state_dict({name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)})
    return block


def save_block(
    block: LegoBlock,
    path: str | os.PathLike[str],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Write a block as one standalone `.st` file (atomically); `inputs` are files it must not overwrite."""
    merged = {**getattr(block, "provenance", {}), **dict(provenance or {})}
    return write_artifact(path, BLOCK, block.config.to_dict(), block_tensors(block), merged, inputs)


def load_block(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LegoBlock:
    """Rebuild a block from its `.st` file alone (a path or hf://org/repo/file.st): no user code, nothing
    unpickled; in eval mode on `device`."""
    artifact = read_artifact(local_artifact(path), expect_kind=BLOCK)
    block = block_from_artifact(artifact)
    return block.to(resolve_device(device)).eval()


def block_from_artifact(artifact: Artifact) -> LegoBlock:
    block = block_from_tensors(artifact.path, artifact.config, artifact.tensors)
    block.provenance = dict(artifact.provenance)
    return block


MERGED = "merged"
FUSED = "fused"


def _composite_tensors(model: MergedModel | FusedModel) -> dict[str, torch.Tensor]:
    """A merged or fused model's tensors: each block's under `blocks.M.`, the head's under `head.`."""
    tensors: dict[str, torch.Tensor] = {}
    for modality, block in model.blocks.items():
        tensors.update(block_tensors(block, prefix=f"blocks.{modality}."))
    tensors.update({f"head.{name}": value for name, value in model.head.state_dict().items()})
    return tensors


def save(model: LegoBlock | MergedModel | FusedModel, path: str | os.PathLike[str],
         provenance: Mapping[str, Any] | None = None, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write any legokit model as one standalone `.st` file (atomically)."""
    if isinstance(model, LegoBlock):
        return save_block(model, path, provenance, inputs)
    record = {**model.provenance, **dict(provenance or {})}
    if isinstance(model, MergedModel):
        config = merged_config({m: b.config for m, b in model.blocks.items()}, model.config, model.graph)
        return write_artifact(path, MERGED, config, _composite_tensors(model), record, inputs)
    if isinstance(model, FusedModel):
        return write_artifact(path, FUSED, fused_config(model), _composite_tensors(model), record, inputs)
    raise ConfigError(f"cannot save a {type(model).__name__}; expected a block, a merged or a fused model")


def _composite_from_artifact(artifact: Artifact) -> MergedModel | FusedModel:
    """Rebuild a merged or fused model: its blocks, its head, its settings and its graph."""
    path = artifact.path
    parse = parse_merged_config if artifact.kind == MERGED else parse_fused_config
    try:
        configs, settings, graph = parse(artifact.config)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid {artifact.kind} config: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt {artifact.kind} config ({type(exc).__name__}: {exc})") from exc
    blocks = {
        m: block_from_tensors(path, config.to_dict(), artifact.tensors, prefix=f"blocks.{m}.")
        for m, config in configs.items()
    }
    first = next(iter(configs.values()))
    head = TaskHead(head_width(first), first.task.out_features)
    check_state(path, head, artifact.tensors, prefix="head.")
    head.load_state_dict({k[len("head."):]: v for k, v in artifact.tensors.items() if k.startswith("head.")})
    try:
        model = (MergedModel if artifact.kind == MERGED else FusedModel)(blocks, head, settings, graph)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    model.provenance = dict(artifact.provenance)
    recorded = model.provenance.get("blocks")
    for modality, block in blocks.items():  # each block keeps its own record (seen samples, validation metrics)
        own = recorded.get(modality) if isinstance(recorded, dict) else None
        block.provenance = dict(own) if isinstance(own, dict) else {}
    return model


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LegoBlock | MergedModel | FusedModel:
    """Rebuild whatever model a `.st` file (a path or hf://org/repo/file.st) holds: a block, a merged or a fused
    model, in eval mode on `device`."""
    artifact = read_artifact(local_artifact(path))
    if artifact.kind == BLOCK:
        model: nn.Module = block_from_artifact(artifact)
    elif artifact.kind in (MERGED, FUSED):
        model = _composite_from_artifact(artifact)
    elif artifact.kind == "adapter":
        raise ArtifactError(f"{artifact.path}: is an adapter; load its base and attach it (--adapter)")
    else:
        raise ArtifactError(f"{artifact.path}: unknown artifact kind {artifact.kind!r}")
    model.source_sha256 = artifact.sha256  # what adapter artifacts check they fit
    return model.to(resolve_device(device)).eval()


@dataclass(frozen=True)
class _Part:
    """One block inside an input file: its config and the prefix of its tensors there."""

    origin: OpenedArtifact
    config: BlockConfig
    prefix: str


def _parts(origin: OpenedArtifact) -> tuple[list[_Part], dict[str, float]]:
    metadata, path = origin.metadata, origin.path
    kind = metadata.get("legokit.kind")
    try:
        data = json.loads(metadata.get("legokit.config", "{}"))
        if kind == BLOCK:
            return [_Part(origin, BlockConfig.from_dict(data), "")], {}
        if kind == MERGED:
            configs, merge_config, _ = parse_merged_config(data)
            return [_Part(origin, c, f"blocks.{m}.") for m, c in configs.items()], dict(merge_config.weights)
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {exc})") from exc
    raise ArtifactError(f"{path}: cannot merge an artifact of kind {kind!r}")


def _check_stored_program(origin: OpenedArtifact, stored: Stored) -> None:
    """A block's encoder program must pass the strict allowlist before merge copies it into a new artifact."""
    if stored.dtype != "U8" or len(stored.shape) != 1:
        raise ArtifactError(f"{origin.path}: encoder program tensor is not a byte string")
    try:
        program_records(origin.read(stored), strict=True, what=f"{origin.path}: encoder program")
    except EncoderError as exc:
        raise ArtifactError(str(exc)) from exc


def _block_sources(part: _Part, heads: dict[str, dict[str, torch.Tensor]]) -> list[Source]:
    """What a block of an input contributes to the merged file: its tensors (streamed) and its head (loaded)."""
    modality, origin = part.config.modality, part.origin
    heads[modality] = {}
    sources = []
    for name, stored in origin.header.layout.items():
        if name.startswith(part.prefix) and stored.dtype in ("F16", "BF16", "F64", "C64"):
            raise ArtifactError(f"{origin.path}: tensor '{name}' is {stored.dtype}; legokit merges float32 blocks")
        if name.startswith(part.prefix + "task_head."):
            head = origin.tensor(stored)
            if not torch.isfinite(head).all():
                raise ArtifactError(f"{origin.path}: head tensor '{name}' holds NaN or infinite values")
            heads[modality][name[len(part.prefix + "task_head."):]] = head
        if name == PROGRAM_PREFIX + part.prefix + "encoder":
            _check_stored_program(origin, stored)
            sources.append(Source.of_file(f"{PROGRAM_PREFIX}blocks.{modality}.encoder", origin, name, stored))
        elif name.startswith(part.prefix) and not name.startswith(PROGRAM_PREFIX):
            sources.append(Source.of_file(f"blocks.{modality}.{name[len(part.prefix):]}", origin, name, stored))
    return sources


def _blocks_provenance(parts: Sequence[_Part]) -> dict[str, Any]:
    """Each merged block's own provenance (training data, split, seen samples), from its input file."""
    found: dict[str, Any] = {}
    for part in parts:
        try:
            record = json.loads(part.origin.metadata.get("legokit.provenance", "{}"))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ArtifactError(f"{part.origin.path}: corrupt header: legokit.provenance is not valid JSON") from exc
        if not isinstance(record, dict):
            record = {}
        blocks = record.get("blocks") if part.prefix else None
        blocks = blocks if isinstance(blocks, dict) else {}
        found[part.config.modality] = blocks.get(part.config.modality, {}) if part.prefix else record
    return found


def merge_files(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    weights: Sequence[float] | Mapping[str, float] | str | None = None,
    phase: str = "paper",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """`legokit merge`: LegoMerge of block (or merged-model) files into one merged artifact, streamed: the blocks'
    tensors are copied in chunks and only the small heads are loaded, so memory stays near one chunk. Each input is
    opened once and read only through that file descriptor."""
    paths = [Path(p) for p in paths]
    refuse_inputs(output, paths)
    with ExitStack() as stack:
        parts: list[_Part] = []
        known: dict[str, float] = {}
        owner: dict[str, Path] = {}
        for path in paths:
            found, carried = _parts(open_artifact(path, stack))
            for part in found:
                if part.config.modality in owner:
                    raise ConfigError(f"modality {part.config.modality!r} is in both {owner[part.config.modality]} and {path}")
                owner[part.config.modality] = path
            parts.extend(found)
            known.update(carried)
        try:
            check_mergeable([p.config for p in parts])
        except ConfigError as exc:
            raise ConfigError(f"cannot merge {', '.join(map(str, paths))}: {exc}") from exc
        blocks_record = _blocks_provenance(parts)
        tasks = {p.config.modality: p.config.task for p in parts}
        config = MergeConfig(resolve_weights(list(tasks), weights, known, tasks, blocks_record), phase)
        heads: dict[str, dict[str, torch.Tensor]] = {}
        sources = [source for part in parts for source in _block_sources(part, heads)]
        sources += [Source.of_tensor(f"head.{n}", t) for n, t in merge_head_tensors(heads, config).items()]
        configs = {p.config.modality: p.config for p in parts}
        graph = Graph.for_operation("merge", sorted(configs), phase=phase)
        record = {"merged_from": [str(p) for p in paths], "blocks": blocks_record, **dict(provenance or {})}
        return write_streaming(output, MERGED, merged_config(configs, config, graph), sources, record, inputs=paths)
