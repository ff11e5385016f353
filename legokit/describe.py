"""Human-readable summaries of artifacts, for `legokit inspect` and model cards; reads headers, builds no model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .artifact import read_artifact
from .block import BlockConfig, format_shape
from .errors import ArtifactError
from .persist import PROGRAM_PREFIX


def _encoder_text(config: BlockConfig, program_sha: str | None) -> str:
    spec = config.encoder
    if program_sha is not None:
        return f"{spec.name} program (sha256 {program_sha[:12]}), {spec.out_dim}-d tokens"
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(spec.kwargs.items()))
    return f"{spec.name}({kwargs}), {spec.out_dim}-d tokens"


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every fact `inspect` shows about an artifact, as plain JSON-ready values (the file is fully verified)."""
    import hashlib

    artifact = read_artifact(Path(path))
    try:
        config = BlockConfig.from_dict(artifact.config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt block config ({type(exc).__name__}: {exc})") from None
    programs = {k: v for k, v in artifact.tensors.items() if k.startswith(PROGRAM_PREFIX)}
    program = next(iter(programs.values()), None)
    program_sha = hashlib.sha256(program.numpy().tobytes()).hexdigest() if program is not None else None
    params = sum(t.numel() for k, t in artifact.tensors.items() if not k.startswith(PROGRAM_PREFIX))
    return {
        "path": str(artifact.path),
        "format_version": artifact.version,
        "kind": artifact.kind,
        "modality": config.modality,
        "input_shape": format_shape(config.input_shape),
        "latent": f"{config.latent[0]}x{config.latent[1]}",
        "depth": config.depth,
        "fft_axes": config.fft_axes,
        "task": str(config.task),
        "encoder": _encoder_text(config, program_sha),
        "params": params,
        "size_bytes": artifact.size,
        "sha256": artifact.sha256,
        "legokit_version": artifact.library_version,
        "provenance": artifact.provenance,
    }
