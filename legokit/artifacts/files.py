"""A model to and from one `.st` file through its kind (`legokit.artifacts.registry`): `save` writes any model in the
format its kind registers, `load` rebuilds whatever a file holds. The built-in kinds are registered by
`legokit.artifacts.kinds`, which `legokit/__init__.py` imports (Python runs it before any submodule is imported)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import BLOCK, kind_named, kind_of
from legokit.device import resolve_device
from legokit.errors import ConfigError
from legokit.hub.refs import local_artifact
from legokit.progress import log
from legokit.survival.calibration import Calibration

if TYPE_CHECKING:
    from legokit.nn.block import LegoBlock


def save(
    model: Any,
    path: str | os.PathLike[str],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Write any legokit model (a block, a merged or a fused model) as one standalone `.st` file, atomically, in
    the format its kind registers; `inputs` are files it must not overwrite."""
    kind = kind_of(model)
    if kind.write is None:
        raise ConfigError(f"cannot save a {type(model).__name__}: its artifact kind {kind.name!r} registers no write")
    config, tensors = kind.write(model)
    record = {**getattr(model, "provenance", {}), **dict(provenance or {})}
    if "calibration" in record:
        checked_calibration(Path(path), record["calibration"], model)
    return write_artifact(path, kind.name, config, tensors, record, inputs)


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu", expect: str | None = None) -> Any:
    """Rebuild whatever model a `.st` file (a path or hf://org/repo/file.st) holds (only a kind `expect` if
    given), from the file alone: no user code, nothing unpickled; in eval mode on `device`."""
    artifact = read_artifact(local_artifact(path), expect_kind=expect)
    model = kind_named(artifact.kind, artifact.path).read(artifact)
    if "calibration" in artifact.provenance:  # checked once, here: what predict and eval apply to the outputs
        checked_calibration(artifact.path, artifact.provenance["calibration"], model)
    log.debug(
        "read %s: a %s artifact, %s bytes, sha256 %s", artifact.path, artifact.kind, artifact.size, artifact.sha256
    )
    model.source_sha256 = artifact.sha256  # what adapter artifacts check they fit
    return model.to(resolve_device(device)).eval()


def save_block(
    block: LegoBlock,
    path: str | os.PathLike[str],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """`save` for a block."""
    return save(block, path, provenance, inputs)


def load_block(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LegoBlock:
    """`load` that accepts only a block."""
    return load(path, device, expect=BLOCK)


def checked_calibration(path: Path, record: Any, model: Any) -> Calibration:
    """A model's calibration record, checked against its task; a one-line ConfigError naming `path` otherwise."""
    task = getattr(model, "task", None)
    try:
        return Calibration.for_task(record, getattr(task, "kind", ""), getattr(task, "n", 0))
    except ConfigError as exc:
        raise ConfigError(f"{path}: its calibration record is malformed ({exc})") from exc
