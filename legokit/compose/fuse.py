"""LegoFuse (MM-Lego Section 3): blocks passing one latent from block to block (`stack`), from layer to layer
across blocks (`weave`), or in any registered mode's schedule (`compose.modes`), then fine-tuned for a few epochs.
A modality missing for a sample skips its updates for that sample only; the head starts from the blocks' merged head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange

from legokit.compose.composite import CompositeModel
from legokit.compose.graph import Graph
from legokit.compose.joins import Join, block_facts, check_joinable
from legokit.compose.merge import MergeConfig, head_width, merge_head_tensors, own_blocks
from legokit.compose.modes import mode_named
from legokit.data.batch import ModalityBatch
from legokit.errors import ConfigError, ShapeError
from legokit.nn.block import BlockConfig, LegoBlock
from legokit.nn.layers import TaskHead
from legokit.nn.spectral import to_spatial


@dataclass(frozen=True)
class FuseConfig:
    """A registered fusion mode's name (`stack`, `weave`, ...), and the order in which the blocks update the latent."""

    mode: str
    order: tuple[str, ...]

    def __post_init__(self) -> None:
        mode_named(self.mode)
        if not isinstance(self.order, tuple) or not all(isinstance(m, str) for m in self.order):
            raise ConfigError(f"fuse order must be a list of modality names, got {repr(self.order)[:60]}")


def check_fusable(blocks: Sequence[LegoBlock], mode: str, warn: bool = True) -> Join:
    """Fusion needs what merging needs (`check_joinable`), and what its mode asks (weave: one depth)."""
    join = check_joinable([b.config for b in blocks], {b.modality: getattr(b, "provenance", {}) for b in blocks}, warn)
    mode_named(mode).check({b.modality: b.config for b in blocks})
    return join


class FusedModel(CompositeModel):
    """Blocks joined by stacking or weaving their update steps on one latent, with one task head."""

    def __init__(self, blocks: Mapping[str, LegoBlock], head: TaskHead, config: FuseConfig, graph: Graph | None = None):
        if sorted(config.order) != sorted(blocks):
            raise ConfigError(f"fuse order {list(config.order)} must name each block once: {sorted(blocks)}")
        ordered = [blocks[m] for m in config.order]
        check_fusable(ordered, config.mode, warn=False)
        graph = graph if graph is not None else Graph.for_operation(config.mode, config.order, order=list(config.order))
        super().__init__(blocks, list(config.order), head, config, graph)
        self.graph.validate({m: block_facts(b.config) for m, b in self.blocks.items()})

    @property
    def first_blocks(self) -> list[str]:
        return [self.config.order[0]]

    def _run_block(self, node: str, values: dict[str, Any]):
        (batch,) = values.values()
        if batch is None:
            return None
        block = self.blocks[self.graph.attrs(node)["modality"]]
        tokens, mask = block.tokens(batch.x, batch.mask)
        return tokens, mask, batch.presence()

    def _run_fusion(self, node: str, values: dict[str, Any]) -> torch.Tensor:
        context = {self.graph.attrs(p)["modality"]: v for p, v in values.items() if v is not None}
        order = [m for m in self.config.order if m in context]
        present = torch.stack([context[m][2] for m in order])
        missing = ~present.any(dim=0)
        if not self.training and bool(missing.any()):  # no host sync inside a training step
            raise ShapeError(
                f"sample {int(missing.nonzero()[0, 0])} has none of the modalities {', '.join(self.modalities)}"
            )
        latent = self.blocks[self.config.order[0]].start(present.shape[1])
        steps = mode_named(self.config.mode).schedule(order, {m: self.blocks[m].config.depth for m in order})
        spectrum = latent
        for position, (modality, step) in enumerate(steps):
            block = self.blocks[modality]
            tokens, mask, here = context[modality]
            if not position:
                spectrum = block.step(step, latent, tokens, mask, here)
                continue
            latent = to_spatial(spectrum, self.blocks[steps[position - 1][0]].config.fft_axes)
            updated = block.step(step, latent, tokens, mask, here)
            # the inverse FFT keeps the real part only, so a skipped step would still move the latent: pass the
            # spectrum of a sample without this modality through untouched instead
            spectrum = torch.where(rearrange(here, "b -> b 1 1"), updated, spectrum)
        return spectrum

    def encode(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor:
        """The fused frequency-domain latent (b, c, d); any subset of modalities may be missing per sample."""
        self.check_inputs(inputs)
        run = {
            "input": lambda node, _: inputs.get(self.graph.attrs(node)["modality"]),
            "block": self._run_block,
            self.config.mode: self._run_fusion,
            "head": lambda node, values: next(iter(values.values())),
        }
        return self.graph.execute(run)


def fuse(blocks: Sequence[LegoBlock], mode: str = "stack") -> FusedModel:
    """A fused model of blocks, in the given order, its head initialised from the blocks' merged (SLERP) head.
    Fine-tune it afterwards (`legokit.training.trainer.train_model`, the paper's 2 epochs). The model holds copies of
    the blocks (`merge.own_blocks`): fine-tuning it leaves the caller's blocks as they were, so the same blocks can be
    fused again (stack, then weave) from where they started."""
    config = FuseConfig(mode, tuple(b.modality for b in blocks))
    join = check_fusable(list(blocks), mode)
    merge_config = MergeConfig(tuple(sorted((b.modality, 1.0) for b in blocks)))
    heads = {b.modality: join.head(b.modality, b.task_head.state_dict()) for b in blocks}
    head = TaskHead(head_width(blocks[0].config), blocks[0].config.task.out_features)
    head.load_state_dict(merge_head_tensors(heads, merge_config))
    return FusedModel({b.modality: b for b in own_blocks(blocks)}, head, config)


def fused_config(model: FusedModel) -> dict[str, Any]:
    return {
        "blocks": {m: b.config.to_dict() for m, b in model.blocks.items()},
        "fuse": {"mode": model.config.mode, "order": list(model.config.order)},
        "graph": model.graph.to_json(),
    }


def parse_fused_config(data: Mapping[str, Any]) -> tuple[dict[str, BlockConfig], FuseConfig, Graph]:
    blocks = {m: BlockConfig.from_dict(c) for m, c in data["blocks"].items()}
    order = data["fuse"]["order"]
    if not isinstance(order, list):
        raise ConfigError(f"fuse order must be a list of modality names, got {repr(order)[:60]}")
    config = FuseConfig(data["fuse"]["mode"], tuple(order))
    return blocks, config, Graph.from_json(data["graph"])
