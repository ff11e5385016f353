"""The `.st` artifact format: a safetensors file whose header names legokit, a format version, a kind and a config.

This module knows the file format only (header keys, versions, checksums, atomic writes); each model kind
turns itself into a config and tensors and back. Header metadata is str -> str, with JSON nested as strings.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import ArtifactError

FORMAT_TAG = "legokit-artifact"
FORMAT_VERSION = 1
KEY_FORMAT = "legokit.format"
KEY_VERSION = "legokit.format_version"
KEY_KIND = "legokit.kind"
KEY_CONFIG = "legokit.config"
KEY_PROVENANCE = "legokit.provenance"
KEY_LIBRARY = "legokit.library_version"
KEY_CHECKSUM = "legokit.tensors_sha256"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


@dataclass(frozen=True)
class Artifact:
    """A read artifact: its kind, config, provenance, tensors (on CPU) and the sha256 of the whole file."""

    path: Path
    kind: str
    version: int
    config: dict[str, Any]
    provenance: dict[str, Any]
    library_version: str
    tensors: dict[str, torch.Tensor]
    sha256: str
    size: int


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: catches bit rot in the data."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks: the artifact's content hash that adapters record."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that share no memory, as safetensors requires."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync it, then rename it over `path` in one step."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ArtifactError(f"{path}: directory {directory} does not exist")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def write_artifact(
    path: str | os.PathLike[str],
    kind: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write an artifact atomically; refuses to replace any of `inputs` (the files it was made from)."""
    from . import __version__

    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise ArtifactError(f"{path}: refusing to overwrite an input file; choose another output path")
    prepared = _prepare(tensors)
    metadata = {
        "format": "pt",
        KEY_FORMAT: FORMAT_TAG,
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_KIND: kind,
        KEY_CONFIG: json.dumps(config, sort_keys=True),
        KEY_PROVENANCE: json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        KEY_LIBRARY: __version__,
        KEY_CHECKSUM: tensors_digest(prepared),
    }
    write_atomic(path, safetensors_bytes(prepared, metadata=metadata))
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_container(path: Path) -> int:
    """Cheap checks before safetensors parses anything; returns the file size."""
    if not path.exists():
        raise ArtifactError(f"{path}: no such file")
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file")
    size = path.stat().st_size
    if size < 8:
        raise ArtifactError(f"{path}: not a safetensors file (only {size} bytes)")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        first = handle.read(1)
    if header_len > MAX_HEADER or first != b"{":
        raise ArtifactError(f"{path}: not a safetensors file (no JSON header at the start)")
    if 8 + header_len > size:
        raise ArtifactError(f"{path}: truncated file (header of {header_len} bytes, file of {size})")
    return size


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of a legokit artifact, validated (tag, version); tensors are not read."""
    path = Path(path)
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from None
    if metadata.get(KEY_FORMAT) != FORMAT_TAG:
        raise ArtifactError(f"{path}: a safetensors file, but not a legokit artifact (no '{KEY_FORMAT}' tag)")
    try:
        version = int(metadata.get(KEY_VERSION, ""))
    except ValueError:
        raise ArtifactError(f"{path}: corrupt header: format version {metadata.get(KEY_VERSION)!r}") from None
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: written in legokit format version {version}; this legokit reads up to {FORMAT_VERSION} (upgrade legokit)"
        )
    if version < 1:
        raise ArtifactError(f"{path}: corrupt header: format version {version}")
    return metadata


def _json_field(path: Path, metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError:
        raise ArtifactError(f"{path}: corrupt header: {key} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: corrupt header: {key} is not a JSON object")
    return value


def read_artifact(path: str | os.PathLike[str], expect_kind: str | None = None) -> Artifact:
    """Read and verify a whole artifact: header, kind, tensors and their checksum."""
    path = Path(path)
    metadata = read_metadata(path)
    kind = metadata.get(KEY_KIND, "")
    if expect_kind is not None and kind != expect_kind:
        raise ArtifactError(f"{path}: is a legokit artifact of kind {kind!r}, expected a {expect_kind}")
    config = _json_field(path, metadata, KEY_CONFIG)
    provenance = _json_field(path, metadata, KEY_PROVENANCE)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: tensor data cannot be read ({_one_line(exc)})") from None
    if tensors_digest(tensors) != metadata.get(KEY_CHECKSUM):
        raise ArtifactError(f"{path}: tensor data does not match the checksum in its header (corrupted file)")
    return Artifact(
        path=path,
        kind=kind,
        version=int(metadata[KEY_VERSION]),
        config=config,
        provenance=provenance,
        library_version=metadata.get(KEY_LIBRARY, "unknown"),
        tensors=tensors,
        sha256=file_sha256(path),
        size=path.stat().st_size,
    )
