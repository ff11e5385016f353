"""The built-in artifact kinds, registered once: block, merged, fused (models) and adapter (attached to a model).
Each names its class, its config codec, its tensors' codec and how it is described."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .artifact import Artifact
from .block import BlockConfig, LegoBlock
from .codec import block_from_artifact, block_tensors, composite_from_artifact, composite_tensors
from .compose.fuse import FusedModel, fused_config, parse_fused_config
from .compose.merge import MergedModel, merged_config, parse_merged_config
from .errors import ArtifactError
from .facts import (adapter_rows, block_rows, common_rows, composite_describer, composite_rows, describe_adapter,
                    describe_block, fuse_row, fuse_settings, merge_row, merge_settings)
from .registry import ADAPTER, BLOCK, FUSED, MERGED, Kind, register_kind


def _parse_block(data: Mapping[str, Any]) -> tuple[dict[str, BlockConfig], None, None]:
    config = BlockConfig.from_dict(data)
    return {config.modality: config}, None, None


def _write_block(block: LegoBlock) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return block.config.to_dict(), block_tensors(block)


def _write_merged(model: MergedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = merged_config({m: b.config for m, b in model.blocks.items()}, model.config, model.graph)
    return config, composite_tensors(model)


def _write_fused(model: FusedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return fused_config(model), composite_tensors(model)


def _read_adapter(artifact: Artifact) -> Any:
    raise ArtifactError(f"{artifact.path}: is an adapter; load its base and attach it (--adapter)")


def _blocks_prefix(modality: str) -> str:
    return f"blocks.{modality}."


BUILTIN_KINDS = (
    Kind(BLOCK, LegoBlock, block_from_artifact, describe_block, lambda f: block_rows(f) + common_rows(f),
         _write_block, _parse_block, mergeable=True),
    Kind(MERGED, MergedModel, lambda a: composite_from_artifact(a, MergedModel, parse_merged_config),
         composite_describer(parse_merged_config, merge_settings),
         lambda f: composite_rows(merge_row)(f) + common_rows(f), _write_merged, parse_merged_config,
         _blocks_prefix, mergeable=True),
    Kind(FUSED, FusedModel, lambda a: composite_from_artifact(a, FusedModel, parse_fused_config),
         composite_describer(parse_fused_config, fuse_settings),
         lambda f: composite_rows(fuse_row)(f) + common_rows(f), _write_fused, parse_fused_config, _blocks_prefix),
    Kind(ADAPTER, None, _read_adapter, describe_adapter, lambda f: adapter_rows(f) + common_rows(f)),
)
for _kind in BUILTIN_KINDS:
    register_kind(_kind)
