"""The built-in artifact kinds, one module each (class, tensors to and from the file, description), registered by
`registry.artifact_kind`. Look kinds up through this package: importing it registers the built-ins."""

from __future__ import annotations

from legokit.artifacts.kinds.adapter import AdapterKind
from legokit.artifacts.kinds.block import BlockKind
from legokit.artifacts.kinds.fused import FusedKind
from legokit.artifacts.kinds.merged import MergedKind
from legokit.artifacts.registry import ADAPTER, BLOCK, FUSED, MERGED, Kind, kind_named, kind_of, kinds, register_kind

BUILTIN_KINDS: tuple[Kind, ...] = tuple(kind_named(name) for name in (BLOCK, MERGED, FUSED, ADAPTER))

__all__ = [
    "AdapterKind",
    "BUILTIN_KINDS",
    "BlockKind",
    "FusedKind",
    "Kind",
    "MergedKind",
    "kind_named",
    "kind_of",
    "kinds",
    "register_kind",
]
