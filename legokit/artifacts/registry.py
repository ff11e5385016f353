"""The artifact-kind registry: each kind of `.st` file (block, merged, fused, adapter) names the model class it
rebuilds, its codec (config and tensors to and from the file) and how `inspect` describes it. Callers dispatch
through it instead of comparing kind strings; `legokit.artifacts.kinds` holds the built-in kinds, each
registered by the `artifact_kind` decorator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from legokit.artifacts.format import Artifact
from legokit.errors import ArtifactError, ConfigError

BLOCK = "block"
MERGED = "merged"
FUSED = "fused"
ADAPTER = "adapter"

Parsed = tuple[dict[str, Any], Any, Any]  # per-modality block configs, the kind's settings, its graph


def no_prefix(modality: str) -> str:
    """A kind whose file holds one block: its tensors sit at the top level."""
    return ""


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
    prefix: Callable[[str], str] = no_prefix  # where a block's tensors sit in the file
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


def artifact_kind(name: str, model: type | None, *, mergeable: bool = False) -> Callable[[type], type]:
    """Class decorator: the class's `read`, `describe` and `rows` (and, for models, `write`, `parse`, `prefix`)
    make the kind registered under `name`; the class is returned as it is."""

    def register(cls: type) -> type:
        found = {key: value.__func__ if isinstance(value, staticmethod) else value for key, value in vars(cls).items()}
        missing = [key for key in ("read", "describe", "rows") if key not in found]
        if missing:
            raise ConfigError(f"artifact kind {name!r} ({cls.__name__}) lacks {', '.join(missing)}")
        kind = Kind(
            name,
            model,
            found["read"],
            found["describe"],
            found["rows"],
            found.get("write"),
            found.get("parse"),
            found.get("prefix", no_prefix),
            mergeable,
        )
        register_kind(kind)
        return cls

    return register
