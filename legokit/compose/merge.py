"""LegoMerge (MM-Lego Section 3): K blocks joined with no training. Latents are merged per sample in the frequency
domain (Eq. 4: harmonic mean of magnitudes, mean of phases) over the modalities present; heads are merged once by
SLERP (K = 2) or its order-independent spherical mean (K > 2)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from legokit.compose.composite import CompositeModel
from legokit.compose.graph import Graph
from legokit.compose.joins import block_facts, check_joinable
from legokit.data.batch import ModalityBatch
from legokit.errors import ConfigError, ShapeError
from legokit.nn.block import BlockConfig, LegoBlock
from legokit.nn.layers import TaskHead
from legokit.nn.spectral import DEFAULT_PHASE, PHASE_MODES, merge_spectra, pooled_width
from legokit.nn.sphere import spherical_mean
from legokit.tasks import TaskSpec
from legokit.training.metrics import PRIMARY

HEAD_RULE = "slerp (K=2) / weighted Karcher mean of directions x weighted mean norm (K>2), per tensor"


@dataclass(frozen=True)
class MergeConfig:
    """How blocks were merged: a weight per modality and the phase rule (`paper` arithmetic or `circular`)."""

    weights: tuple[tuple[str, float], ...]
    phase: str = DEFAULT_PHASE

    def __post_init__(self) -> None:
        if self.phase not in PHASE_MODES:
            raise ConfigError(f"phase must be one of {', '.join(PHASE_MODES)}, got {self.phase!r}")
        for modality, weight in self.weights:
            if not isinstance(weight, (int, float)) or not weight > 0 or weight != weight or weight == float("inf"):
                raise ConfigError(f"merge weight of {modality} must be a positive finite number, got {weight!r}")

    @property
    def modalities(self) -> list[str]:
        return [m for m, _ in self.weights]

    def weight_of(self, modality: str) -> float:
        return dict(self.weights)[modality]


def normalized(weights: Sequence[float]) -> list[float]:
    """Weights rescaled to a mean of 1: only their ratios matter (Eq. 4 and SLERP are weighted means), and weights
    like 1e39, fine in float64, would overflow float32 arithmetic."""
    total = sum(weights)
    return [w / total * len(weights) for w in weights]


def resolve_weights(
    modalities: Sequence[str],
    weights: Sequence[float] | Mapping[str, float] | str | None,
    known: Mapping[str, float] | None = None,
    tasks: Mapping[str, TaskSpec] | None = None,
    provenance: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[tuple[str, float], ...]:
    """One weight per modality, sorted by modality: given as a list in block order, a mapping, `auto` (from the
    blocks' `tasks` and `provenance`: `auto_weights`), or defaults (1.0, or the weight a grown model already had)."""
    known = dict(known or {})
    if isinstance(weights, str):
        if weights != AUTO:
            raise ConfigError(f"weights must be numbers or 'auto', got {weights!r}")
        weights = auto_weights(tasks or {}, provenance or {})
    if weights is None:
        chosen = {m: known.get(m, 1.0) for m in modalities}
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(modalities))
        if unknown:
            raise ConfigError(f"weights name modalities that are not merged: {', '.join(unknown)}")
        chosen = {m: float(weights.get(m, known.get(m, 1.0))) for m in modalities}
    else:
        if len(weights) != len(modalities):
            raise ConfigError(f"{len(weights)} weights given for {len(modalities)} blocks ({', '.join(modalities)})")
        chosen = {m: float(w) for m, w in zip(modalities, weights)}
    bad = [f"{m}={w}" for m, w in chosen.items() if not math.isfinite(w) or w <= 0]
    if bad:
        raise ConfigError(f"merge weights must be positive and finite, got {', '.join(bad)}")
    if not math.isfinite(sum(chosen.values())):
        raise ConfigError("merge weights are too large to add up; give them on a smaller scale")
    return tuple(sorted(chosen.items()))


AUTO = "auto"
CHANCE = 0.5  # every task's primary metric (c-index, AUC) is 0.5 for a model that knows nothing
FLOOR = 0.01


def auto_weights(tasks: Mapping[str, TaskSpec], provenance: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`--weights auto`: each block weighs by how far its validation metric (recorded when it was trained) is above
    chance, floored at 0.01, so a block no better than chance barely moves the merge (beyond the paper)."""
    chosen = {}
    for modality, task in tasks.items():
        name = PRIMARY[task.kind]
        record = provenance.get(modality) if isinstance(provenance, Mapping) else None
        trained = record.get("trained") if isinstance(record, Mapping) else None
        val = trained.get("val") if isinstance(trained, Mapping) else None
        metric = val.get(name) if isinstance(val, Mapping) else None
        if metric is None:
            raise ConfigError(
                f"block {modality} has no validation {name} in its provenance; --weights auto needs "
                "blocks trained by legokit train (or give the weights)"
            )
        if isinstance(metric, bool) or not isinstance(metric, (int, float)) or not 0.0 <= metric <= 1.0:
            shown = repr(metric)[:40]
            raise ConfigError(f"block {modality}: its recorded validation {name} is {shown}, not a number in [0, 1]")
        chosen[modality] = max(float(metric) - CHANCE, FLOOR)
    return chosen


def merge_head_tensors(heads: Mapping[str, Mapping[str, torch.Tensor]], config: MergeConfig) -> dict[str, torch.Tensor]:
    """Per-tensor spherical merge of the blocks' head parameters, in modality order (order-independent rule)."""
    names = sorted(next(iter(heads.values())))
    order = config.modalities
    return {
        name: spherical_mean([heads[m][name] for m in order], normalized([config.weight_of(m) for m in order]))
        for name in names
    }


class MergedModel(CompositeModel):
    """A multimodal model from merged blocks: each present modality's block encodes its input, the latents are
    merged per sample (Eq. 4), and the merged head reads the merged latent. Executes its composition graph."""

    def __init__(
        self, blocks: Mapping[str, LegoBlock], head: TaskHead, config: MergeConfig, graph: Graph | None = None
    ):
        check_joinable([blocks[m].config for m in sorted(blocks)], warn=False)
        graph = graph if graph is not None else Graph.for_operation("merge", sorted(blocks), phase=config.phase)
        super().__init__(blocks, sorted(blocks), head, config, graph)
        self.graph.validate({m: block_facts(b.config) for m, b in self.blocks.items()})

    def _run_input(self, inputs: Mapping[str, ModalityBatch]):
        def run(node: str, _: dict[str, Any]) -> ModalityBatch | None:
            return inputs.get(self.graph.attrs(node)["modality"])

        return run

    def _run_block(self, node: str, values: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        (batch,) = values.values()
        if batch is None:
            return None
        block = self.blocks[self.graph.attrs(node)["modality"]]
        return block.encode(batch.x, batch.mask), batch.presence()

    def _run_merge(self, node: str, values: dict[str, Any]) -> torch.Tensor:
        given = {self.graph.attrs(p)["modality"]: v for p, v in values.items() if v is not None}
        modalities = list(given)
        spectra = torch.stack([s for s, _ in given.values()])
        present = torch.stack([p for _, p in given.values()])
        missing = ~present.any(dim=0)
        if not self.training and bool(missing.any()):  # checked at inference; training data never has such samples
            first = int(missing.nonzero()[0, 0])
            raise ShapeError(f"sample {first} has none of the modalities {', '.join(self.modalities)}")
        weights = torch.tensor(normalized([self.config.weight_of(m) for m in modalities]), device=spectra.device)
        return merge_spectra(spectra, weights, present, self.config.phase)

    def encode(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor:
        """The merged frequency-domain latent (b, c, d) of a batch in which any subset of modalities may be missing."""
        self.check_inputs(inputs)
        run = {
            "input": self._run_input(inputs),
            "block": self._run_block,
            "merge": self._run_merge,
            "head": lambda node, values: next(iter(values.values())),
        }
        return self.graph.execute(run)


def expand(models: Sequence[LegoBlock | MergedModel]) -> tuple[list[LegoBlock], dict[str, float]]:
    """The blocks inside a list of blocks and merged models, with the weights the merged ones already carried."""
    blocks: list[LegoBlock] = []
    known: dict[str, float] = {}
    for model in models:
        if not isinstance(getattr(model, "config", None), (BlockConfig, MergeConfig)):  # a block or a merged model
            raise ConfigError(f"can only merge LegoBlocks and merged models, got {type(model).__name__}")
        blocks.extend(model.blocks.values())
        known.update(dict(getattr(model.config, "weights", ())))
    return blocks, known


def own_blocks(blocks: Sequence[LegoBlock]) -> list[LegoBlock]:
    """Deep copies of the blocks, for a merged or fused model of its own: training, adapting (adapters wrap layers
    in place), freezing or switching it to eval mode never changes the caller's blocks, so the same blocks can be
    fused twice. Copied as one list, so that what blocks share stays shared between the copies. A token source bound
    by `cache.encoded_once` stays with the original; the cache is keyed by content (`cache.keys`), not by block, so
    the copies' frozen encoders find the tokens the originals' encoders left."""
    bound = {id(b.token_source): None for b in blocks if getattr(b, "token_source", None) is not None}
    return copy.deepcopy(list(blocks), bound)


def merge(
    models: Sequence[LegoBlock | MergedModel],
    weights: Sequence[float] | Mapping[str, float] | str | None = None,
    phase: str = DEFAULT_PHASE,
) -> MergedModel:
    """LegoMerge of K >= 2 blocks (merged models count as their blocks, so a model grows by merging a new block
    into it, with the same result as merging all blocks at once). Every block is used, as a copy (`own_blocks`);
    returned in eval mode. `weights="auto"` weighs each block by its recorded validation metric (`auto_weights`)."""
    blocks, known = expand(models)
    by_modality = {b.modality: b for b in blocks}
    join = check_joinable([b.config for b in blocks], {m: getattr(b, "provenance", {}) for m, b in by_modality.items()})
    config = MergeConfig(
        resolve_weights(
            [b.modality for b in blocks],
            weights,
            known,
            {m: b.config.task for m, b in by_modality.items()},
            {m: getattr(b, "provenance", {}) for m, b in by_modality.items()},
        ),
        phase,
    )
    heads = {m: join.head(m, b.task_head.state_dict()) for m, b in by_modality.items()}
    first = by_modality[config.modalities[0]].config
    head = TaskHead(head_width(first), first.task.out_features)
    head.load_state_dict(merge_head_tensors(heads, config))
    model = MergedModel(dict(zip(by_modality, own_blocks(list(by_modality.values())))), head, config)
    model.provenance = {"blocks": {m: dict(getattr(b, "provenance", {})) for m, b in sorted(by_modality.items())}}
    return model.eval()  # merging trains nothing: ready for inference


def merged_config(configs: Mapping[str, BlockConfig], merge_config: MergeConfig, graph: Graph) -> dict[str, Any]:
    """The header config of a merged artifact: every block's config, the merge settings and the graph."""
    return {
        "blocks": {m: configs[m].to_dict() for m in sorted(configs)},
        "merge": {"weights": dict(merge_config.weights), "phase": merge_config.phase, "head_rule": HEAD_RULE},
        "graph": graph.to_json(),
    }


def parse_merged_config(data: Mapping[str, Any]) -> tuple[dict[str, BlockConfig], MergeConfig, Graph]:
    blocks = {m: BlockConfig.from_dict(c) for m, c in data["blocks"].items()}
    settings = data["merge"]
    config = MergeConfig(tuple(sorted((m, float(w)) for m, w in settings["weights"].items())), settings["phase"])
    return blocks, config, Graph.from_json(data["graph"])


def head_width(config: BlockConfig) -> int:
    """Input width of a block's head: d or 2 d channel means, by its head features."""
    return pooled_width(config.latent[1], config.head_features)


__all__ = ["MergeConfig", "MergedModel", "merge"]
