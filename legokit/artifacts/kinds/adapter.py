"""The `adapter` kind: a missing-modality adapter (MoRA, SSF) in a file. Not a model alone: it is attached to the
base model whose sha256 it records (`legokit.adapters.files`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from legokit.artifacts.format import Artifact
from legokit.artifacts.kinds.common import common_facts, common_rows, count_params
from legokit.artifacts.registry import ADAPTER, artifact_kind
from legokit.errors import ArtifactError


def describe_adapter(artifact: Artifact) -> dict[str, Any]:
    """An adapter's facts: its method, modalities, sites, rank and the base it fits."""
    config = artifact.config
    return {
        **common_facts(artifact),
        "title": f"legokit {config['type']} adapter: {', '.join(config['modalities'])}",
        "adapter": config["type"],
        "modalities": list(config["modalities"]),
        "placement": list(config["placement"]),
        "rank": config.get("rank"),
        "base_sha256": config["base_sha256"],
        "adapter_params": count_params(artifact.tensors, "adapter."),
    }


def adapter_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An adapter's facts as rows."""
    sites = facts["placement"]
    return [
        ("adapter", facts["adapter"] + (f", rank {facts['rank']}" if facts["rank"] else "")),
        ("modalities", ", ".join(facts["modalities"])),
        ("sites", f"{len(sites)}: " + ", ".join(sites[:4]) + (" ..." if len(sites) > 4 else "")),
        ("adapter params", f"{facts['adapter_params']:,} (plus the head it trained)"),
        ("fits base", f"sha256 {facts['base_sha256']}"),
    ]


@artifact_kind(ADAPTER, None)
class AdapterKind:
    """An adapter file: described and inspected like a model, loaded only by attaching it to its base."""

    @staticmethod
    def read(artifact: Artifact) -> Any:
        raise ArtifactError(f"{artifact.path}: is an adapter; load its base and attach it (--adapter)")

    describe = describe_adapter

    @staticmethod
    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        return adapter_rows(facts) + common_rows(facts)
