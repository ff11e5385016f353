"""Saving and loading models as `.st` artifacts: each kind's config and tensors, checked against the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .artifact import Artifact, read_artifact, write_artifact
from .block import BlockConfig, LegoBlock
from .device import resolve_device
from .errors import ArtifactError, ConfigError, EncoderError

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


def block_from_tensors(path: Path, config_data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str = "") -> LegoBlock:
    """Rebuild one block from its config and the artifact's tensors; any inconsistency is an ArtifactError."""
    try:
        config = BlockConfig.from_dict(config_data)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt block config ({type(exc).__name__}: {exc})") from None
    program_tensor = tensors.get(PROGRAM_PREFIX + prefix + "encoder")
    program = None
    if program_tensor is not None:
        if program_tensor.dtype != torch.uint8 or program_tensor.dim() != 1:
            raise ArtifactError(f"{path}: encoder program tensor is not a byte string")
        program = program_tensor.numpy().tobytes()
    try:
        block = LegoBlock(config, program=program)
    except EncoderError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid block config: {exc}") from None
    state = {k: v for k, v in tensors.items() if not k.startswith(PROGRAM_PREFIX)}
    check_state(path, block, state, prefix)
    block.load_state_dict({name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)})
    return block


def save_block(
    block: LegoBlock,
    path: str | os.PathLike[str],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write a block as one standalone `.st` file (atomically); `inputs` are files it must not overwrite."""
    merged = {**getattr(block, "provenance", {}), **dict(provenance or {})}
    return write_artifact(path, BLOCK, block.config.to_dict(), block_tensors(block), merged, inputs)


def load_block(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LegoBlock:
    """Rebuild a block from its `.st` file alone: no user code, nothing unpickled; in eval mode on `device`."""
    artifact = read_artifact(path, expect_kind=BLOCK)
    block = block_from_artifact(artifact)
    return block.to(resolve_device(device)).eval()


def block_from_artifact(artifact: Artifact) -> LegoBlock:
    block = block_from_tensors(artifact.path, artifact.config, artifact.tensors)
    block.provenance = dict(artifact.provenance)
    return block
