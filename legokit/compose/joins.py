"""The one place that decides whether blocks can be joined (merged, fused, grown, or named in a recipe): one block
per modality, one latent shape, task, FFT axes, update rule, head features and initialisation, and one task
contract (time unit and bin edges, or class names: classes in another order are mapped by name)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from legokit.compose.graph import BlockFacts, Graph
from legokit.contract import Contract, check_edges, listed
from legokit.errors import ConfigError
from legokit.nn.block import BlockConfig
from legokit.progress import log

# what each agreement protects, and the flag or spec key that sets it
AGREEMENTS = {
    "fft_axes": ("FFT axes", "their spectra are not comparable; train them with one --fft-axes"),
    "update": ("update", "build them with one (wrap --update, or the spec key update)"),
    "head_features": ("head features", "build them with one (wrap --head-features, or the spec key head_features)"),
    "shared_init": (
        "shared initialisation",
        "merging assumes blocks that started from one base; retrain the older "
        "block with this legokit (shared_init: true is the default)",
    ),
}
EDGE_TOLERANCE = 1e-9  # relative: edges read back from JSON, or converted between units, agree to rounding


def block_facts(config: BlockConfig) -> BlockFacts:
    return BlockFacts(config.modality, config.latent, str(config.task))  # latent: checked to be a 2-tuple


@dataclass(frozen=True)
class OutputMap:
    """How one block's head outputs become the joined model's: rows reordered (`order[k]` is the block's output for
    the joined model's output k) and, for a binary block whose classes are the other way round, the logit negated."""

    order: tuple[int, ...] | None = None
    negate: bool = False

    def apply(self, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A head's state dict (norm, linear) with its outputs mapped."""
        mapped = dict(head)
        for name in ("linear.weight", "linear.bias"):
            tensor = mapped[name]
            if self.order is not None:
                tensor = tensor[list(self.order)]
            mapped[name] = -tensor if self.negate else tensor
        return mapped


@dataclass(frozen=True)
class Join:
    """What a join of blocks decided: the joined model's task contract, and each block's output mapping."""

    contract: Contract
    outputs: dict[str, OutputMap] = field(default_factory=dict)

    def head(self, modality: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A block's head state, its outputs in the joined model's order."""
        found = self.outputs.get(modality)
        return found.apply(state) if found is not None else dict(state)


def recorded_edges(config: BlockConfig, provenance: Mapping[str, Any] | None) -> tuple[float, ...] | None:
    """A survival block's inner bin edges: from its contract, else (older files) from its training record."""
    if config.contract.edges is not None:
        return config.contract.edges
    trained = provenance.get("trained") if isinstance(provenance, Mapping) else None
    edges = trained.get("survival_bin_edges") if isinstance(trained, Mapping) else None
    if not isinstance(edges, list) or len(edges) != config.task.n + 1:
        return None
    try:
        return check_edges(edges[1:-1])
    except ConfigError:
        return None


def _same_edges(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=EDGE_TOLERANCE) for x, y in zip(a, b))


def _shown_edges(edges: Sequence[float], unit: str | None) -> str:
    shown = ", ".join(f"{e:g}" for e in edges[:6]) + (", ..." if len(edges) > 6 else "")
    return f"[{shown}]" + (f" {unit}" if unit else "")


def _check_survival(configs: Sequence[BlockConfig], provenance: Mapping[str, Any], warn: bool) -> Contract:
    units = {c.modality: c.contract.time_unit for c in configs}
    known_units = {m: u for m, u in units.items() if u is not None}
    if len(set(known_units.values())) > 1 or (known_units and len(known_units) < len(units)):
        shown = ", ".join(f"{m} in {u or 'an unrecorded unit'}" for m, u in sorted(units.items()))
        raise ConfigError(
            f"time units differ ({shown}): train each block with --bins-from one of them, giving "
            "--time-unit for its labels, so that they share one unit and one set of bins"
        )
    edges = {c.modality: recorded_edges(c, provenance.get(c.modality)) for c in configs}
    known = {m: e for m, e in edges.items() if e is not None}
    first = next(iter(sorted(known)), None)
    unit = next(iter(known_units.values()), None)
    for modality in sorted(known):
        assert first is not None  # known is not empty inside this loop
        if not _same_edges(known[modality], known[first]):
            raise ConfigError(
                f"survival bins differ: {first} splits time at {_shown_edges(known[first], unit)}, "
                f"{modality} at {_shown_edges(known[modality], unit)}; their hazards are for other "
                f"intervals. Train one with --bins-from the other's file (or both with one --bins)"
            )
    for modality in sorted(set(edges) - set(known)):
        if warn:
            log.warning(
                "block %s records no survival bin edges (an older file): its bins cannot be checked against "
                "the other blocks'",
                modality,
            )
    return Contract(time_unit=unit, edges=known[first] if first is not None else None)


def _check_classes(configs: Sequence[BlockConfig], warn: bool) -> tuple[Contract, dict[str, OutputMap]]:
    named = {c.modality: c.contract.classes for c in configs if c.contract.classes is not None}
    for modality in sorted({c.modality for c in configs} - set(named)):
        if warn:
            log.warning(
                "block %s records no class names (an older file): its outputs are taken in the other blocks' order",
                modality,
            )
    if not named:
        return Contract(), {}
    first = min(named)
    reference = named[first]
    outputs: dict[str, OutputMap] = {}
    for modality, classes in sorted(named.items()):
        if set(classes) != set(reference):
            only = sorted(set(reference) ^ set(classes))
            raise ConfigError(
                f"class names differ: {first} has {listed(reference)}, {modality} has "
                f"{listed(classes)} ({listed(only)} in one only); train the blocks on one set of "
                "classes (--classes)"
            )
        if classes == reference:
            continue
        kind = configs[0].task.kind
        if kind == "binary":
            outputs[modality] = OutputMap(negate=True)
        else:
            position = {name: k for k, name in enumerate(classes)}
            outputs[modality] = OutputMap(order=tuple(position[name] for name in reference))
    return Contract(classes=reference), outputs


def check_joinable(
    configs: Sequence[BlockConfig], provenance: Mapping[str, Any] | None = None, warn: bool = True
) -> Join:
    """Decide whether these blocks can be joined into one model; a ConfigError names the first disagreement and
    its fix. `provenance` (per modality) supplies older files' recorded bin edges; `warn` logs what an older file
    does not record."""
    if len(configs) < 2:
        raise ConfigError(f"joining needs at least 2 blocks, got {len(configs)}")
    seen: set[str] = set()
    for config in configs:
        if config.modality in seen:
            raise ConfigError(
                f"modality {config.modality!r} appears twice; a joined model takes one block per modality"
            )
        seen.add(config.modality)
    graph = Graph.for_operation("merge", sorted(seen))
    graph.validate({c.modality: block_facts(c) for c in configs})
    for key, (what, fix) in AGREEMENTS.items():
        values = {c.modality: getattr(c, key) for c in configs}
        if len(set(values.values())) > 1:
            shown = ", ".join(f"{m}: {v}" for m, v in sorted(values.items()))
            raise ConfigError(f"blocks disagree on {what} ({shown}); {fix}")
    task = configs[0].task
    if task.kind == "survival":
        return Join(_check_survival(configs, dict(provenance or {}), warn))
    contract, outputs = _check_classes(configs, warn)
    return Join(contract, outputs)


def joined_contract(configs: Sequence[BlockConfig]) -> Contract:
    """The task contract of a model of these blocks (already checked to join): the first block's in modality order,
    completed by the others'."""
    ordered = sorted(configs, key=lambda c: c.modality)
    contract = Contract()
    for config in ordered:
        own = config.contract
        contract = contract.merged_with(Contract(time_unit=own.time_unit, edges=own.edges, classes=own.classes))
    return contract
