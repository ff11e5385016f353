"""Human-readable summaries of artifacts, for `legokit inspect` and model cards; reads the file, builds no model."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import torch

from .artifact import Artifact, read_artifact, read_artifact_summary
from .block import BlockConfig, format_shape
from .compose.fuse import parse_fused_config
from .compose.merge import parse_merged_config
from .errors import ArtifactError, ConfigError
from .hub import local_artifact
from .persist import BLOCK, FUSED, MERGED, PROGRAM_PREFIX


def _encoder_text(config: BlockConfig, program: torch.Tensor | None) -> str:
    spec = config.encoder
    if program is not None:
        sha = hashlib.sha256(program.numpy().tobytes()).hexdigest()
        return f"{spec.name} program (sha256 {sha[:12]}), {spec.out_dim}-d tokens"
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(spec.kwargs.items()))
    return f"{spec.name}({kwargs}), {spec.out_dim}-d tokens"


def _params(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    return sum(t.numel() for k, t in tensors.items() if k.startswith(prefix) and not k.startswith(PROGRAM_PREFIX))


def _block_facts(config: BlockConfig, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
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
        "encoder": _encoder_text(config, tensors.get(PROGRAM_PREFIX + prefix + "encoder")),
        "params": _params(tensors, prefix),
    }


def _common(artifact: Artifact) -> dict[str, Any]:
    return {
        "path": str(artifact.path),
        "format_version": artifact.version,
        "kind": artifact.kind,
        "params": _params(artifact.tensors),
        "size_bytes": artifact.size,
        "sha256": artifact.sha256,
        "legokit_version": artifact.library_version,
        "provenance": artifact.provenance,
    }


def describe(path: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Every fact `inspect` shows about an artifact, as JSON-ready values. The file is fully verified first unless
    `verify` is False (a file this process just wrote): then only its header is read, in bounded memory."""
    artifact = read_artifact(local_artifact(path)) if verify else read_artifact_summary(path)
    try:
        if artifact.kind == BLOCK:
            return {**_common(artifact), **_block_facts(BlockConfig.from_dict(artifact.config), artifact.tensors)}
        if artifact.kind in (MERGED, FUSED):
            parse = parse_merged_config if artifact.kind == MERGED else parse_fused_config
            configs, settings, graph = parse(artifact.config)
            first = next(iter(configs.values()))
            facts = {
                **_common(artifact),
                "modalities": sorted(configs),
                "latent": f"{first.latent[0]}x{first.latent[1]}",
                "task": str(first.task),
                "blocks": {m: _block_facts(c, artifact.tensors, f"blocks.{m}.") for m, c in sorted(configs.items())},
                "graph": graph.tree(),
            }
            if artifact.kind == MERGED:
                return {**facts, "phase": settings.phase, "weights": dict(settings.weights)}
            return {**facts, "mode": settings.mode, "order": list(settings.order)}
        if artifact.kind == "adapter":
            config = artifact.config
            return {
                **_common(artifact),
                "adapter": config["type"],
                "modalities": list(config["modalities"]),
                "placement": list(config["placement"]),
                "rank": config.get("rank"),
                "base_sha256": config["base_sha256"],
                "adapter_params": _params(artifact.tensors, "adapter."),
            }
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {exc})") from exc
    raise ArtifactError(f"{path}: unknown artifact kind {artifact.kind!r}")
