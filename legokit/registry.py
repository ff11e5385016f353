"""The artifact-kind registry: each kind of `.st` file (block, merged, fused, adapter) names the model class it
rebuilds, its codec (config and tensors to and from the file) and how `inspect` describes it. Callers dispatch
through it instead of comparing kind strings; `legokit.kinds` registers the built-in kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .artifact import Artifact
from .errors import ArtifactError, ConfigError

BLOCK = "block"
MERGED = "merged"
FUSED = "fused"
ADAPTER = "adapter"

Parsed = tuple[dict[str, Any], Any, Any]  # per-modality block configs, the kind's settings, its graph


@dataclass(frozen=True)
class Kind:
    """One kind of artifact. `model` is None for files that are not a model on their own (an adapter)."""

    name: str
    model: type | None
    read: Callable[[Artifact], Any]  # a verified artifact -> its model
    describe: Callable[[Artifact], dict[str, Any]]  # the facts `inspect` and model cards show
    rows: Callable[[Mapping[str, Any]], list[tuple[str, str]]]  # those facts as (field, text) rows
    write: Callable[[Any], tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None  # model -> config, tensors
    parse: Callable[[Mapping[str, Any]], Parsed] | None = None  # a header config -> blocks, settings, graph
    prefix: Callable[[str], str] = lambda modality: ""  # where a block's tensors sit in the file
    mergeable: bool = False  # `legokit merge` takes it as an input


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add a kind; a name already taken by another kind is refused."""
    known = _KINDS.get(kind.name)
    if known is not None and known != kind:
        raise ConfigError(f"artifact kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def kind_named(name: str, where: object = "artifact") -> Kind:
    """The registered kind of this name; an unknown one is an ArtifactError naming `where` (usually the file)."""
    found = _KINDS.get(name)
    if found is None:
        raise ArtifactError(f"{where}: unknown artifact kind {name!r} (legokit knows {', '.join(sorted(_KINDS))})")
    return found


def kind_of(model: object) -> Kind:
    """The kind a model is saved as, by its class (or the nearest registered base class)."""
    for cls in type(model).__mro__:
        for kind in _KINDS.values():
            if kind.model is cls:
                return kind
    names = ", ".join(sorted(k.model.__name__ for k in _KINDS.values() if k.model is not None))
    raise ConfigError(f"cannot save a {type(model).__name__}; legokit saves {names}")


def kinds() -> list[str]:
    """The names of the registered kinds."""
    return sorted(_KINDS)
