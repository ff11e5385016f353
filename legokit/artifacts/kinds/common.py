"""What every artifact kind shares: where a program and a foreign encoder's weights sit in a file, the check that a
module's state is exactly the file's, and the facts and rows every description has (size, hashes,
version); the provenance's rows are `legokit.artifacts.describe`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from legokit.artifacts.format import Artifact
from legokit.errors import ArtifactError

PROGRAM_PREFIX = "__program__."
GRAPH = "encoder.graph."  # a foreign encoder's weights in a block's state dict: encoder.graph.<the program's fqn>


def graph_weights(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A foreign encoder's tensors among a block's (under `prefix`), by the program's fqns."""
    return {name[len(prefix + GRAPH) :]: value for name, value in tensors.items() if name.startswith(prefix + GRAPH)}


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
    unexpected = sorted(k for k in tensors if k.startswith(prefix) and k[len(prefix) :] not in expected)
    if unexpected:
        raise ArtifactError(f"{path}: unexpected tensor '{unexpected[0]}'")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def check_loaded(path: Path, module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """After loading, every tensor of the module equals the file's bit for bit: a program whose weights config
    points two names at one record ties them, and the last one loaded would silently win."""
    for name, value in module.state_dict().items():
        stored = tensors[prefix + name]
        if value.dtype != stored.dtype or not torch.equal(_bits(value), _bits(stored)):
            raise ArtifactError(
                f"{path}: tensor '{prefix + name}' is not what the block loads: its program ties it to another "
                "weight that the file holds with other values"
            )


def count_params(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    """Parameters stored under `prefix`, programs (byte strings) left out."""
    return sum(t.numel() for k, t in tensors.items() if k.startswith(prefix) and not k.startswith(PROGRAM_PREFIX))


def listed(names: Any, most: int = 6) -> str:
    """The first `most` names, and how many there are in all when there are more."""
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def shape_text(shape: str) -> str:
    """A stored input shape ("12x?") as the tensor a caller passes ("(batch, 12, n)")."""
    return f"(batch, {shape.replace('x', ', ').replace('?', 'n')})"


def contract_rows(contract: Mapping[str, Any], modality: str = "") -> list[tuple[str, str]]:
    """The contract as rows: input schema, time unit and bin edges, classes; what is not recorded says so."""
    where = f" {modality}" if modality else ""
    rows = []
    if "features" in contract:
        rows.append((f"schema{where}", f"{len(contract['features'])} features by name: {listed(contract['features'])}"))
    elif "tokenizer" in contract:
        rows.append((f"schema{where}", f"text, tokenizer sha256 {contract['tokenizer'][:12]}"))
    if "edges" in contract:
        unit = contract.get("time_unit") or "unrecorded unit"
        rows.append((f"bins{where}", f"edges {listed(f'{e:g}' for e in contract['edges'])} ({unit})"))
    if "classes" in contract:
        rows.append((f"classes{where}", listed(contract["classes"], 10)))
    if not contract:
        rows.append((f"contract{where}", "not recorded (an older file): tables read by position, bins unchecked"))
    return rows


def common_facts(artifact: Artifact) -> dict[str, Any]:
    """What every artifact has: path, format, kind, size, hashes, version and provenance."""
    return {
        "path": str(artifact.path),
        "format_version": artifact.version,
        "kind": artifact.kind,
        "params": count_params(artifact.tensors),
        "size_bytes": artifact.size,
        "sha256": artifact.sha256,
        "legokit_version": artifact.library_version,
        "provenance": artifact.provenance,
    }


def common_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Size, hash and version; the provenance has its own rows (`provenance_rows`), short or in full."""
    return [
        (
            "size",
            f"{facts['params']:,} params, {facts['size_bytes']:,} bytes, written by legokit {facts['legokit_version']}",
        ),
        ("sha256", facts["sha256"]),
    ]
