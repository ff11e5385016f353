"""Adapter artifacts: an adapter's parameters (and the head trained with it) in their own `.st` file, which names
the base artifact it fits by content hash; attaching it to another base is refused."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from legokit.adapters.base import MAX_MODALITIES, Adapted, Adapter, attach, site_key
from legokit.adapters.registry import adapter_class, adapter_names
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import ADAPTER
from legokit.errors import ArtifactError, ConfigError, brief
from legokit.hub.refs import local_artifact

# what an adapter file's config may ask for; its tensors must then hold exactly that
MAX_SITES = 4096
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def save_adapter(
    adapted: Adapted,
    adapter: Adapter,
    path: str | os.PathLike[str],
    base_sha256: str | None,
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
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
    """An adapter file's config, checked: its type (a registered method), modalities, sites (key -> two sizes),
    placement, base, and the method's own settings (`options`: MoRA's rank, SSF's `train_complete`)."""

    type: str
    modalities: tuple[str, ...]
    sites: dict[str, tuple[int, int]]
    placement: tuple[str, ...]
    base_sha256: str
    options: dict[str, Any]

    def adapter(self) -> Adapter:
        """The plan's adapter without its sites: its settings only, nothing allocated."""
        return adapter_class(self.type)(self.modalities, **self.options)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every adapter tensor's name and shape this plan builds, by arithmetic alone."""
        adapter = self.adapter()
        return {
            f"sites.{key}.{name}": shape
            for key, sizes in self.sites.items()
            for name, shape in adapter.site_shapes(sizes).items()
        }


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


def _sizes(path: Path, method: type[Adapter], key: Any, value: Any) -> tuple[int, int]:
    """One site's two sizes, as its method records them (MoRA's [in, out] widths, SSF's [channels, channel dim])."""
    if not isinstance(key, str) or not isinstance(value, list) or len(value) != 2:
        raise ArtifactError(f"{path}: corrupt adapter config: site {repr(key)[:40]} must list two sizes")
    try:
        method.check_sizes(key, value)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: corrupt adapter config: {exc}") from exc
    first, second = value
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
    """An adapter file's config checked field by field (type, modality count, the method's settings, site sizes,
    placement, base hash) before anything is built from it; any problem is a one-line ArtifactError."""
    kind = _field(path, config, "type", str)
    if kind not in adapter_names():
        raise ArtifactError(f"{path}: unknown adapter type {kind[:40]!r} (legokit knows {', '.join(adapter_names())})")
    method = adapter_class(kind)
    modalities = _modalities(path, config)
    try:
        options = method.read_options(config)
        method(modalities, **options)  # its constructor checks them too; without sites it allocates nothing
    except ConfigError as exc:
        raise ArtifactError(f"{path}: corrupt adapter config: {exc}") from exc
    sites = _field(path, config, "sites", dict)
    if len(sites) > MAX_SITES:
        raise ArtifactError(f"{path}: an adapter with {len(sites):,} sites; legokit reads up to {MAX_SITES:,}")
    sizes = {key: _sizes(path, method, key, value) for key, value in sites.items()}
    placement = _placement(path, config, sizes)
    base = _field(path, config, "base_sha256", str)
    if not _SHA256.match(base):
        raise ArtifactError(f"{path}: corrupt adapter config: base_sha256 is not a sha256 hex digest")
    if "head_trained" in config:
        _field(path, config, "head_trained", bool)
    return AdapterPlan(kind, modalities, sizes, placement, base, options)


def check_tensors(path: Path, plan: AdapterPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every tensor the plan builds is in the file, float32, of the planned shape; nothing else is, but the head; and
    the method's invariants hold (SSF without `train_complete`: the complete row is the identity)."""
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
    state = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    try:
        plan.adapter().check_stored(plan.sites, state)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def build_adapter(plan: AdapterPlan, state: Mapping[str, torch.Tensor]) -> Adapter:
    """The adapter of a checked plan, built on the meta device and given the file's tensors (checked against the
    plan by `check_tensors`): nothing is allocated beyond what the file holds."""
    with torch.device("meta"):
        adapter = plan.adapter()
        for key, sizes in plan.sites.items():
            adapter.sites[key] = adapter.build_site(sizes)
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
    state = {k[len("adapter.") :]: v for k, v in artifact.tensors.items() if k.startswith("adapter.")}
    try:
        adapter = build_adapter(plan, state)
    except (ConfigError, RuntimeError) as exc:
        raise ArtifactError(f"{artifact.path}: adapter tensors do not match its config ({brief(exc, 160)})") from exc
    head = {k[len("head.") :]: v for k, v in artifact.tensors.items() if k.startswith("head.")}
    return adapter, head, plan.base_sha256, dict(artifact.provenance)


def attach_file(model: nn.Module, path: str | os.PathLike[str]) -> Adapted:
    """Attach a saved adapter to a model loaded from its base artifact (checked by hash), with its trained head."""
    adapter, head, base_sha, _ = load_adapter(path)
    actual = getattr(model, "source_sha256", None)
    if actual != base_sha:
        shown = "a model not loaded from a file" if actual is None else f"base {actual[:12]}"
        raise ConfigError(
            f"{path}: this adapter was trained on base {base_sha[:12]}, not on {shown}; "
            "attach it to the artifact it was trained on"
        )
    adapted = attach(model, adapter)
    if not head:  # the head stayed frozen while this adapter trained: the model's head is the one it trained with
        return adapted
    try:
        adapted.head.load_state_dict(head)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: its head does not fit this model") from exc
    return adapted
