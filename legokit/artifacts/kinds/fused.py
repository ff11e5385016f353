"""The `fused` kind: a LegoFuse model (stack or weave, MM-Lego Sec. 3.3) in a file, its mode and block order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from legokit.artifacts.format import Artifact
from legokit.artifacts.kinds.common import common_rows
from legokit.artifacts.kinds.composite import (
    blocks_prefix,
    composite_describer,
    composite_from_artifact,
    composite_rows,
    composite_write,
)
from legokit.artifacts.registry import FUSED, artifact_kind
from legokit.compose.fuse import FusedModel, fused_config, parse_fused_config


def fuse_settings(settings: Any) -> dict[str, Any]:
    """A fusion's settings as facts."""
    return {"mode": settings.mode, "order": list(settings.order)}


def fuse_row(facts: Mapping[str, Any]) -> tuple[str, str]:
    """A fusion's settings as one row."""
    return "fuse", f"{facts['mode']}, order {' -> '.join(facts['order'])}"


@artifact_kind(FUSED, FusedModel)
class FusedKind:
    """A fused model: its blocks, the fine-tuned head, the fusion mode and block order, its graph."""

    @staticmethod
    def read(artifact: Artifact) -> FusedModel:
        return composite_from_artifact(artifact, FusedModel, parse_fused_config)

    @staticmethod
    def write(model: FusedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return composite_write(fused_config(model), model)

    parse = parse_fused_config
    describe = composite_describer(parse_fused_config, fuse_settings)
    prefix = blocks_prefix

    @staticmethod
    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        return composite_rows(fuse_row)(facts) + common_rows(facts)
