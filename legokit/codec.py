"""How each kind of model sits in a `.st` file: a block's tensors (and its foreign encoder's program), a merged or
fused model's blocks under `blocks.M.` and its head under `head.`, checked against the config before anything is
built. `legokit.kinds` registers these codecs; `legokit.persist` reads and writes files through them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .artifact import Artifact
from .block import BlockConfig, LegoBlock
from .compose.composite import CompositeModel
from .compose.merge import head_width
from .encoders import FOREIGN, ExportedEncoder, encoder_class
from .encoders.foreign import fill_program, thin_program
from .errors import ArtifactError, ConfigError, EncoderError
from .layers import TaskHead
from .spectral import pooled_width

PROGRAM_PREFIX = "__program__."
GRAPH = "encoder.graph."  # a foreign encoder's weights in a block's state dict: encoder.graph.<the program's fqn>


def graph_weights(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A foreign encoder's tensors among a block's (under `prefix`), by the program's fqns."""
    return {name[len(prefix + GRAPH):]: value for name, value in tensors.items() if name.startswith(prefix + GRAPH)}


def block_tensors(block: LegoBlock, prefix: str = "") -> dict[str, torch.Tensor]:
    """A block's state dict plus its foreign encoder's program (as a uint8 tensor), under `prefix`. The program is
    stored thin (`thin_program`): its weights are the state dict's `encoder.graph.<fqn>` tensors, stored once."""
    state = block.state_dict()
    tensors = {prefix + name: value for name, value in state.items()}
    program = block.program()
    if program is not None:
        stored = thin_program(program, graph_weights(state))
        tensors[PROGRAM_PREFIX + prefix + "encoder"] = torch.frombuffer(bytearray(stored), dtype=torch.uint8)
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
    loads the file's tensors. A foreign encoder is rebuilt from its program (bounded by the file): a thin program's
    empty weight records are first refilled from the file's `encoder.graph.<fqn>` tensors (`fill_program`), and the
    whole program then passes the strict allowlist before torch reads it."""
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
            program = fill_program(program_tensor.numpy().tobytes(), graph_weights(tensors, prefix))
            encoder = ExportedEncoder(program, config.encoder.out_dim, takes_mask)
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


def block_from_artifact(artifact: Artifact) -> LegoBlock:
    """Rebuild a block from a verified artifact, with its provenance."""
    block = block_from_tensors(artifact.path, artifact.config, artifact.tensors)
    block.provenance = dict(artifact.provenance)
    return block


def composite_tensors(model: CompositeModel) -> dict[str, torch.Tensor]:
    """A merged or fused model's tensors: each block's under `blocks.M.`, the head's under `head.`."""
    tensors: dict[str, torch.Tensor] = {}
    for modality, block in model.blocks.items():
        tensors.update(block_tensors(block, prefix=f"blocks.{modality}."))
    tensors.update({f"head.{name}": value for name, value in model.head.state_dict().items()})
    return tensors


def composite_from_artifact(artifact: Artifact, model: type[CompositeModel],
                            parse: Callable[[Mapping[str, Any]], tuple]) -> CompositeModel:
    """Rebuild a merged or fused model: its blocks, its head, its settings and its graph."""
    path = artifact.path
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
        built = model(blocks, head, settings, graph)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    built.provenance = dict(artifact.provenance)
    recorded = built.provenance.get("blocks")
    for modality, block in blocks.items():  # each block keeps its own record (seen samples, validation metrics)
        own = recorded.get(modality) if isinstance(recorded, dict) else None
        block.provenance = dict(own) if isinstance(own, dict) else {}
    return built
