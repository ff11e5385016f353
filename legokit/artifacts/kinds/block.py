"""The `block` kind: one LegoBlock in a file. Its tensors (and a foreign encoder's program) to and from the file,
checked against its config before anything is built, and what `inspect` and model cards say about it."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from legokit.artifacts.format import Artifact
from legokit.artifacts.kinds.common import (
    PROGRAM_PREFIX,
    check_loaded,
    check_state,
    common_facts,
    common_rows,
    contract_rows,
    count_params,
    graph_weights,
    shape_text,
)
from legokit.artifacts.registry import BLOCK, artifact_kind
from legokit.encoders import FOREIGN, Encoder, ExportedEncoder, encoder_class
from legokit.encoders.foreign import fill_program, thin_program
from legokit.errors import ArtifactError, ConfigError, EncoderError
from legokit.nn.block import BlockConfig, LegoBlock, format_shape
from legokit.nn.spectral import pooled_width


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


def _check_sizes_first(path: Path, config: BlockConfig, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The largest tensors a config asks for (latent, every update step's projections and feed-forward, the head, a
    built-in encoder's weights, built on the meta device) must be the file's: a cheap check before the real build."""
    channels, dim = config.latent
    inner = config.heads * config.dim_head
    expected = {
        "latent": (channels, dim),
        "input_shift": (config.features,),
        "input_scale": (config.features,),
        "task_head.linear.weight": (config.task.out_features, pooled_width(dim, config.head_features)),
    }
    numbered = (re.match(r"([0-9]{1,6})\.", k[len(prefix) + 7 :]) for k in tensors if k.startswith(prefix + "layers."))
    steps = {int(found.group(1)) for found in numbered if found}
    if steps != set(range(config.depth)):
        raise ArtifactError(f"{path}: the config asks for {config.depth} update steps, the file holds {len(steps)}")
    for step in range(config.depth):
        expected[f"layers.{step}.attention.to_q.weight"] = (inner, dim)
        expected[f"layers.{step}.attention.to_kv.weight"] = (2 * inner, config.encoder.out_dim)
        expected[f"layers.{step}.feed_forward.net.1.weight"] = (dim * config.ff_mult, dim)
    if config.encoder.name != FOREIGN:
        _check_builtin_sizes(
            path, config, {k[len(prefix) + 8 :]: v for k, v in tensors.items() if k.startswith(prefix + "encoder.")}
        )
    for name, shape in expected.items():
        stored = tensors.get(prefix + name)
        if stored is None:
            raise ArtifactError(f"{path}: missing tensor '{prefix + name}'")
        if tuple(stored.shape) != shape:
            raise ArtifactError(
                f"{path}: tensor '{prefix + name}' has shape {tuple(stored.shape)}, expected {shape} (from the config)"
            )


def _check_builtin_sizes(path: Path, config: BlockConfig, weights: Mapping[str, torch.Tensor]) -> None:
    """A built-in encoder's sizes in the config (given, or its defaults) must be those its weights in the file have."""
    try:
        cls = encoder_class(config.encoder.name)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from exc
    stored = cast("type[Encoder]", cls).infer_kwargs(weights)  # `check_encoder_class` checked it has infer_kwargs
    if not stored:
        raise ArtifactError(f"{path}: the file holds no weights of its {config.encoder.name} encoder")
    defaults = inspect.signature(cls).parameters
    for key, value in stored.items():
        asked = config.encoder.kwargs.get(key, defaults[key].default if key in defaults else None)
        if asked is inspect.Parameter.empty:  # a size the encoder needs, neither in the config nor defaulted
            raise ArtifactError(f"{path}: the config's encoder lacks {key}; its weights in the file have {value}")
        if asked != value:
            raise ArtifactError(
                f"{path}: the config's encoder {key} is {asked!r}, its weights in the file have {value}"
            )
    shapes = getattr(cls, "weight_shapes", None)
    if shapes is not None:  # sizes that only arithmetic on the config gives: checked before anything is allocated
        asked = {k: p.default for k, p in defaults.items() if p.default is not inspect.Parameter.empty}
        try:
            expected = shapes(**{**asked, **config.encoder.kwargs})
        except (TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"{path}: invalid {config.encoder.name} encoder config: {exc}") from exc
        for name, shape in expected.items():
            if name in weights and tuple(weights[name].shape) != shape:
                raise ArtifactError(
                    f"{path}: encoder tensor '{name}' has shape {tuple(weights[name].shape)}, the "
                    f"config asks for {shape}"
                )


def block_from_tensors(
    path: Path, config_data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str = ""
) -> LegoBlock:
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
    block.load_state_dict({name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)})
    if encoder is not None:
        check_loaded(path, block, state, prefix)
    return block


def block_from_artifact(artifact: Artifact) -> LegoBlock:
    """Rebuild a block from a verified artifact, with its provenance."""
    block = block_from_tensors(artifact.path, artifact.config, artifact.tensors)
    block.provenance = dict(artifact.provenance)
    return block


def _program_sha256(program: torch.Tensor, digest: str | None) -> str | None:
    """The sha256 of a stored program's bytes: hashed from the tensor when its data was read, else the digest a
    summary took from the file for its placeholder (`read_artifact_summary`). A meta tensor's data is never read."""
    if program.device.type != "meta":
        return hashlib.sha256(program.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return digest


def _encoder_text(config: BlockConfig, program: torch.Tensor | None, digest: str | None = None) -> str:
    spec = config.encoder
    if program is not None:
        sha = _program_sha256(program, digest)
        where = f"sha256 {sha[:12]}" if sha else "not read"
        return f"{spec.name} program ({where}), {spec.out_dim}-d tokens"
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(spec.kwargs.items()))
    return f"{spec.name}({kwargs}), {spec.out_dim}-d tokens"


def block_summary(
    config: BlockConfig, tensors: Mapping[str, torch.Tensor], prefix: str = "", digests: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One block's facts (alone, or inside a merged or fused model under `prefix`); `digests` are a summary's
    sha256 of the byte tensors it holds as placeholders."""
    program = PROGRAM_PREFIX + prefix + "encoder"
    return {
        "modality": config.modality,
        "input_shape": format_shape(config.input_shape),
        "latent": f"{config.latent[0]}x{config.latent[1]}",
        "depth": config.depth,
        "fft_axes": config.fft_axes,
        "update": config.update,
        "head_features": config.head_features,
        "shared_init": config.shared_init,
        "task": str(config.task),
        "encoder": _encoder_text(config, tensors.get(program), (digests or {}).get(program)),
        "params": count_params(tensors, prefix),
        "contract": config.contract.to_dict(),
    }


def describe_block(artifact: Artifact) -> dict[str, Any]:
    config = BlockConfig.from_dict(artifact.config)
    return {
        **common_facts(artifact),
        "title": f"LegoBlock: {config.modality}",
        "modalities": [config.modality],
        **block_summary(config, artifact.tensors, digests=artifact.digests),
    }


def block_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("modality", facts["modality"]),
        ("input shape", shape_text(facts["input_shape"])),
        ("latent", f"{facts['latent']} (channels x dims)"),
        ("depth", str(facts["depth"])),
        ("fft axes", facts["fft_axes"]),
        (
            "latent math",
            f"update {facts['update']}, head reads {facts['head_features']}, "
            f"{'shared' if facts['shared_init'] else 'own'} initialisation",
        ),
        ("task", facts["task"]),
        ("encoder", facts["encoder"]),
        *contract_rows(facts.get("contract", {})),
    ]


@artifact_kind(BLOCK, LegoBlock, mergeable=True)
class BlockKind:
    """A LegoBlock alone: its config is the header's, its tensors are its state dict."""

    @staticmethod
    def read(artifact: Artifact) -> LegoBlock:
        return block_from_artifact(artifact)

    @staticmethod
    def write(block: LegoBlock) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return block.config.to_dict(), block_tensors(block)

    @staticmethod
    def parse(data: Mapping[str, Any]) -> tuple[dict[str, BlockConfig], None, None]:
        config = BlockConfig.from_dict(data)
        return {config.modality: config}, None, None

    @staticmethod
    def describe(artifact: Artifact) -> dict[str, Any]:
        return describe_block(artifact)

    @staticmethod
    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        return block_rows(facts) + common_rows(facts)
