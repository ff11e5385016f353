"""What merged and fused models share in a file: each block's tensors under `blocks.M.`, the head's under `head.`,
settings and graph in the header; how they are rebuilt (checked before anything is built) and described."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from legokit.artifacts.format import Artifact
from legokit.artifacts.kinds.block import block_from_tensors, block_summary, block_tensors
from legokit.artifacts.kinds.common import check_state, common_facts, contract_rows, shape_text
from legokit.compose.composite import CompositeModel
from legokit.compose.merge import head_width
from legokit.errors import ArtifactError, ConfigError
from legokit.nn.layers import TaskHead

Composite = TypeVar("Composite", bound=CompositeModel)


def blocks_prefix(modality: str) -> str:
    """Where a block's tensors sit in a merged or fused model's file."""
    return f"blocks.{modality}."


def composite_tensors(model: CompositeModel) -> dict[str, torch.Tensor]:
    """A merged or fused model's tensors: each block's under `blocks.M.`, the head's under `head.`."""
    tensors: dict[str, torch.Tensor] = {}
    for modality, block in model.blocks.items():
        tensors.update(block_tensors(block, prefix=f"blocks.{modality}."))
    tensors.update({f"head.{name}": value for name, value in model.head.state_dict().items()})
    return tensors


def parsed(artifact: Artifact, parse: Callable[[Mapping[str, Any]], tuple]) -> tuple:
    """A merged or fused model's header config as block configs (at least one), settings and graph; anything else
    is an ArtifactError naming the file."""
    path = artifact.path
    try:
        configs, settings, graph = parse(artifact.config)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid {artifact.kind} config: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt {artifact.kind} config ({type(exc).__name__}: {exc})") from exc
    if not configs:
        raise ArtifactError(f"{path}: invalid {artifact.kind} config: it holds no blocks")
    return configs, settings, graph


def composite_from_artifact(
    artifact: Artifact, model: Callable[..., Composite], parse: Callable[[Mapping[str, Any]], tuple]
) -> Composite:
    """Rebuild a merged or fused model: its blocks, its head, its settings and its graph."""
    path = artifact.path
    configs, settings, graph = parsed(artifact, parse)
    blocks = {
        m: block_from_tensors(path, config.to_dict(), artifact.tensors, prefix=f"blocks.{m}.")
        for m, config in configs.items()
    }
    first = next(iter(configs.values()))
    head = TaskHead(head_width(first), first.task.out_features)
    check_state(path, head, artifact.tensors, prefix="head.")
    head.load_state_dict({k[len("head.") :]: v for k, v in artifact.tensors.items() if k.startswith("head.")})
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


def composite_describer(
    parse: Callable[[Mapping[str, Any]], tuple], settings_facts: Callable[[Any], dict[str, Any]]
) -> Callable[[Artifact], dict[str, Any]]:
    """The facts of a merged or fused model: its blocks', the shared latent and task, its own settings, its graph."""

    def describe(artifact: Artifact) -> dict[str, Any]:
        configs, settings, graph = parsed(artifact, parse)
        first = next(iter(configs.values()))
        return {
            **common_facts(artifact),
            "title": f"legokit {artifact.kind} model: {', '.join(sorted(configs))}",
            "modalities": sorted(configs),
            "latent": f"{first.latent[0]}x{first.latent[1]}",
            "task": str(first.task),
            "blocks": {
                m: block_summary(c, artifact.tensors, f"blocks.{m}.", artifact.digests)
                for m, c in sorted(configs.items())
            },
            "graph": graph.tree(),
            **settings_facts(settings),
        }

    return describe


def composite_rows(settings_row: Callable[[Mapping[str, Any]], tuple[str, str]]):
    """Rows of a merged or fused model: modalities, latent, task, its settings, one row per block."""

    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = [
            ("modalities", ", ".join(facts["modalities"])),
            ("latent", f"{facts['latent']} (channels x dims)"),
            ("task", facts["task"]),
            settings_row(facts),
        ]
        for modality, block in facts["blocks"].items():
            found.append(
                (
                    f"block {modality}",
                    f"{block['encoder']}; input {shape_text(block['input_shape'])}; "
                    f"depth {block['depth']}; {block['params']:,} params",
                )
            )
            found.extend(contract_rows(block.get("contract", {}), modality))
        return found

    return rows
