"""Adapter artifacts: an adapter's parameters (and the head trained with it) in their own `.st` file, which names
the base artifact it fits by content hash; attaching it to another base is refused."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Any, Mapping

import torch
from torch import nn

from ..artifact import read_artifact, write_artifact
from ..encoders.stack import bounded_int
from ..errors import ArtifactError, ConfigError, brief
from ..hubref import local_artifact
from ..registry import ADAPTER
from .base import MAX_MODALITIES, Adapted, Adapter, attach, site_key
from .mora import MAX_RANK, MoRA, MoRASite
from .ssf import SSF, SSFSite

# what an adapter file's config may ask for; its tensors must then hold exactly that
MAX_SITES = 4096
MAX_SITE_WIDTH = 2**24
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TYPES = ("mora", "ssf")


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


@dataclass(frozen=True)
class AdapterPlan:
    """An adapter file's config, checked: its type, modalities, rank, sites (key -> two sizes), placement, and for
    SSF whether the complete combination trained (`train_complete`: a file without the key was written before it
    existed, when it always did)."""

    type: str
    modalities: tuple[str, ...]
    rank: int
    sites: dict[str, tuple[int, int]]
    placement: tuple[str, ...]
    base_sha256: str
    train_complete: bool = True

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every adapter tensor's name and shape this plan builds, by arithmetic alone."""
        shapes: dict[str, tuple[int, ...]] = {}
        count = len(self.modalities)
        for key, (first, second) in self.sites.items():
            if self.type == "mora":  # [in, out]: down (r, in), up (M, out, r)
                shapes[f"sites.{key}.down"] = (self.rank, first)
                shapes[f"sites.{key}.up"] = (count, second, self.rank)
            else:  # [channels, dim]: scale and shift (2^M, channels), the complete row the identity or trained
                shapes[f"sites.{key}.scale"] = shapes[f"sites.{key}.shift"] = (2**count, first)
        return shapes


def _field(path: Path, config: Mapping[str, Any], key: str, kind: type) -> Any:
    """The config's `key`, which must be of type `kind`."""
    value = config.get(key)
    if not isinstance(value, kind):
        raise ArtifactError(f"{path}: corrupt adapter config: {key} must be a {kind.__name__}, got {repr(value)[:40]}")
    return value


def _modalities(path: Path, config: Mapping[str, Any]) -> tuple[str, ...]:
    """1 to MAX_MODALITIES distinct names (SSF builds 2^M parameter sets)."""
    names = _field(path, config, "modalities", list)
    if not 1 <= len(names) <= MAX_MODALITIES:
        raise ArtifactError(f"{path}: an adapter over {len(names)} modalities; legokit reads 1 to {MAX_MODALITIES}")
    if not all(isinstance(n, str) and 0 < len(n) <= 64 for n in names) or len(set(names)) != len(names):
        raise ArtifactError(f"{path}: corrupt adapter config: modalities must be distinct names of 1 to 64 characters")
    return tuple(names)


def _sizes(path: Path, kind: str, key: Any, value: Any) -> tuple[int, int]:
    """One site's two sizes: MoRA's [in, out] widths, SSF's [channels, channel dim (-1 or 1)]."""
    if not isinstance(key, str) or not isinstance(value, list) or len(value) != 2:
        raise ArtifactError(f"{path}: corrupt adapter config: site {repr(key)[:40]} must list two sizes")
    first, second = value
    try:
        bounded_int(f"site {key} width", first, MAX_SITE_WIDTH)
        if kind == "mora":
            bounded_int(f"site {key} width", second, MAX_SITE_WIDTH)
        elif second not in (-1, 1) or isinstance(second, bool):
            raise ConfigError(f"site {key} channel dim must be -1 or 1, got {repr(second)[:20]}")
    except ConfigError as exc:
        raise ArtifactError(f"{path}: corrupt adapter config: {exc}") from exc
    return first, second


def _placement(path: Path, config: Mapping[str, Any], sites: Mapping[str, Any]) -> tuple[str, ...]:
    """The module names the sites wrap: distinct strings, one per site."""
    names = _field(path, config, "placement", list)
    if not all(isinstance(n, str) and 0 < len(n) <= 1024 for n in names) or len(set(names)) != len(names):
        raise ArtifactError(f"{path}: corrupt adapter config: placement must name distinct modules")
    empty = nn.ModuleDict()  # a key that is one of its attributes (forward, training) cannot name a site
    taken = [n for n in names if hasattr(empty, site_key(n))]
    if taken:
        raise ArtifactError(f"{path}: corrupt adapter config: {taken[0][:40]!r} cannot name a site")
    if sorted(site_key(n) for n in names) != sorted(sites):
        raise ArtifactError(f"{path}: corrupt adapter config: its placement and its sites name different modules")
    return tuple(names)


def read_plan(path: Path, config: Mapping[str, Any]) -> AdapterPlan:
    """An adapter file's config checked field by field (types, modality count, rank, site sizes, placement, base
    hash, SSF's `train_complete`) before anything is built from it; any problem is a one-line ArtifactError."""
    kind = _field(path, config, "type", str)
    if kind not in _TYPES:
        raise ArtifactError(f"{path}: unknown adapter type {kind[:40]!r}")
    modalities = _modalities(path, config)
    rank = 0
    if kind == "mora":
        try:
            rank = bounded_int("MoRA rank", config.get("rank"), MAX_RANK)
        except ConfigError as exc:
            raise ArtifactError(f"{path}: corrupt adapter config: {exc}") from exc
    sites = _field(path, config, "sites", dict)
    if len(sites) > MAX_SITES:
        raise ArtifactError(f"{path}: an adapter with {len(sites):,} sites; legokit reads up to {MAX_SITES:,}")
    sizes = {key: _sizes(path, kind, key, value) for key, value in sites.items()}
    placement = _placement(path, config, sizes)
    base = _field(path, config, "base_sha256", str)
    if not _SHA256.match(base):
        raise ArtifactError(f"{path}: corrupt adapter config: base_sha256 is not a sha256 hex digest")
    if "head_trained" in config:
        _field(path, config, "head_trained", bool)
    train_complete = _field(path, config, "train_complete", bool) if "train_complete" in config else True
    return AdapterPlan(kind, modalities, rank, sizes, placement, base, train_complete)


def check_tensors(path: Path, plan: AdapterPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every tensor the plan builds is in the file, float32, of the planned shape; nothing else is, but the head."""
    expected = {f"adapter.{name}": shape for name, shape in plan.shapes().items()}
    for name, shape in expected.items():
        stored = tensors.get(name)
        if stored is None:
            raise ArtifactError(f"{path}: missing tensor '{name}'")
        if stored.dtype != torch.float32:
            raise ArtifactError(f"{path}: tensor '{name}' is {stored.dtype}, expected torch.float32")
        if tuple(stored.shape) != shape:
            raise ArtifactError(f"{path}: tensor '{name}' has shape {tuple(stored.shape)}, its config asks for {shape}")
    unexpected = sorted(k for k in tensors if k not in expected and not k.startswith("head."))
    if unexpected:
        raise ArtifactError(f"{path}: unexpected tensor '{unexpected[0][:80]}'")
    if plan.type == "ssf" and not plan.train_complete:  # the complete row is the identity, never silently dropped
        for key in plan.sites:
            for name, identity in (("scale", 1.0), ("shift", 0.0)):
                if not bool((tensors[f"adapter.sites.{key}.{name}"][-1] == identity).all()):
                    raise ArtifactError(f"{path}: train_complete is false, but site {key[:80]!r} holds a {name} "
                                        f"other than the identity ({identity:g}) for complete samples")


def build_adapter(plan: AdapterPlan, state: Mapping[str, torch.Tensor]) -> Adapter:
    """The adapter of a checked plan, built on the meta device and given the file's tensors (checked against the
    plan by `check_tensors`): nothing is allocated beyond what the file holds."""
    with torch.device("meta"):
        if plan.type == "mora":
            adapter: Adapter = MoRA(plan.modalities, rank=plan.rank)
            for key, (in_features, out_features) in plan.sites.items():
                adapter.sites[key] = MoRASite(in_features, out_features, plan.rank, len(plan.modalities))
        else:
            adapter = SSF(plan.modalities, train_complete=plan.train_complete)
            for key, (channels, dim) in plan.sites.items():
                adapter.sites[key] = SSFSite(channels, 2 ** len(plan.modalities), dim, plan.train_complete)
    adapter.load_state_dict(dict(state), assign=True)
    adapter.placement = list(plan.placement)
    return adapter


def load_adapter(path: str | os.PathLike[str]) -> tuple[Adapter, dict[str, torch.Tensor], str, dict[str, Any]]:
    """An adapter (with its sites, not yet attached), its head tensors, its base's hash and its provenance; `path`
    may be a file or a Hub reference (hf://org/repo/adapter.st). The config is checked against the file's tensors
    before any module is built from it."""
    artifact = read_artifact(local_artifact(path), expect_kind=ADAPTER)
    plan = read_plan(artifact.path, artifact.config)
    check_tensors(artifact.path, plan, artifact.tensors)
    state = {k[len("adapter."):]: v for k, v in artifact.tensors.items() if k.startswith("adapter.")}
    try:
        adapter = build_adapter(plan, state)
    except (ConfigError, RuntimeError) as exc:
        raise ArtifactError(f"{artifact.path}: adapter tensors do not match its config ({brief(exc, 160)})") from exc
    head = {k[len("head."):]: v for k, v in artifact.tensors.items() if k.startswith("head.")}
    return adapter, head, plan.base_sha256, dict(artifact.provenance)


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
