"""The `merged` kind: a LegoMerge model (MM-Lego Eq. 4, heads by SLERP) in a file, its phase and weights."""

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
from legokit.artifacts.registry import MERGED, artifact_kind
from legokit.compose.merge import MergedModel, merged_config, parse_merged_config


def merge_settings(settings: Any) -> dict[str, Any]:
    """A merge's settings as facts."""
    return {"phase": settings.phase, "weights": dict(settings.weights)}


def merge_row(facts: Mapping[str, Any]) -> tuple[str, str]:
    """A merge's settings as one row."""
    return "merge", f"phase {facts['phase']}, weights " + ", ".join(f"{m}={w:g}" for m, w in facts["weights"].items())


@artifact_kind(MERGED, MergedModel, mergeable=True)
class MergedKind:
    """A merged model: its blocks, the merged head, the merge's phase and weights, its graph."""

    @staticmethod
    def read(artifact: Artifact) -> MergedModel:
        return composite_from_artifact(artifact, MergedModel, parse_merged_config)

    @staticmethod
    def write(model: MergedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        config = merged_config({m: b.config for m, b in model.blocks.items()}, model.config, model.graph)
        return composite_write(config, model)

    parse = parse_merged_config
    describe = composite_describer(parse_merged_config, merge_settings)
    prefix = blocks_prefix

    @staticmethod
    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        return composite_rows(merge_row)(facts) + common_rows(facts)
