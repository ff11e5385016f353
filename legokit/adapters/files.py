"""Adapter artifacts: an adapter's parameters (and the head trained with it) in their own `.st` file, which names
the base artifact it fits by content hash; attaching it to another base is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Any, Mapping

import torch
from torch import nn

from ..artifact import read_artifact, write_artifact
from ..errors import ArtifactError, ConfigError, brief
from ..hubref import local_artifact
from ..registry import ADAPTER
from .base import Adapted, Adapter, attach
from .mora import MoRA, MoRASite
from .ssf import SSF, SSFSite



def save_adapter(adapted: Adapted, adapter: Adapter, path: str | os.PathLike[str], base_sha256: str | None,
                 provenance: Mapping[str, Any] | None = None, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write one adapter, the head it trained with (none when the head stayed frozen, as SSF's does by default, so
    that attaching it never puts the base head back over another adapter's), and the base's content hash; `inputs`
    are never replaced."""
    if base_sha256 is None:
        raise ConfigError("an adapter artifact must name its base: load the base from a file first (legokit.load)")
    tensors = {f"adapter.{k}": v for k, v in adapter.state_dict().items()}
    head = adapted.head
    head_trained = any(p.requires_grad for p in head.parameters())
    if head_trained:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    config = {**adapter.config(), "base_sha256": base_sha256, "head_trained": head_trained}
    return write_artifact(path, ADAPTER, config, tensors, provenance, inputs)


def load_adapter(path: str | os.PathLike[str]) -> tuple[Adapter, dict[str, torch.Tensor], str, dict[str, Any]]:
    """An adapter (with its sites, not yet attached), its head tensors, its base's hash and its provenance; `path`
    may be a file or a Hub reference (hf://org/repo/adapter.st)."""
    artifact = read_artifact(local_artifact(path), expect_kind=ADAPTER)
    config = artifact.config
    try:
        modalities = list(config["modalities"])
        if config["type"] == "mora":
            adapter: Adapter = MoRA(modalities, rank=int(config["rank"]))
            for key, (in_features, out_features) in config["sites"].items():
                adapter.sites[key] = MoRASite(int(in_features), int(out_features), adapter.rank, len(modalities))
        elif config["type"] == "ssf":
            adapter = SSF(modalities)
            for key, (channels, dim) in config["sites"].items():
                adapter.sites[key] = SSFSite(int(channels), 2 ** len(modalities), int(dim))
        else:
            raise ArtifactError(f"{path}: unknown adapter type {config['type']!r}")
        adapter.placement = list(config["placement"])
        base_sha = str(config["base_sha256"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ArtifactError(f"{path}: corrupt adapter config ({type(exc).__name__}: {exc})") from exc
    state = {k[len("adapter."):]: v for k, v in artifact.tensors.items() if k.startswith("adapter.")}
    try:
        adapter.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: adapter tensors do not match its config ({brief(exc, 160)})") from exc
    head = {k[len("head."):]: v for k, v in artifact.tensors.items() if k.startswith("head.")}
    return adapter, head, base_sha, dict(artifact.provenance)


def attach_file(model: nn.Module, path: str | os.PathLike[str]) -> Adapted:
    """Attach a saved adapter to a model loaded from its base artifact (checked by hash), with its trained head."""
    adapter, head, base_sha, _ = load_adapter(path)
    actual = getattr(model, "source_sha256", None)
    if actual != base_sha:
        shown = "a model not loaded from a file" if actual is None else f"base {actual[:12]}"
        raise ConfigError(f"{path}: this adapter was trained on base {base_sha[:12]}, not on {shown}; "
                          "attach it to the artifact it was trained on")
    adapted = attach(model, adapter)
    if not head:  # the head stayed frozen while this adapter trained: the model's head is the one it trained with
        return adapted
    try:
        adapted.head.load_state_dict(head)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: its head does not fit this model") from exc
    return adapted
