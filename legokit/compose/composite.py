"""What merged and fused models share: blocks by modality, one task head, a settings object, a composition graph
and provenance, and the `legokit.interface.LegoModel` interface over them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from legokit.compose.graph import Graph
from legokit.data.batch import ModalityBatch, as_batches, batch_size
from legokit.errors import ShapeError
from legokit.hub.pretrained import HubMixin
from legokit.nn.block import LegoBlock
from legokit.nn.layers import TaskHead
from legokit.nn.spectral import pool_spectrum
from legokit.tasks import TaskSpec


class CompositeModel(HubMixin, nn.Module):
    """Blocks (in `order`) that write one latent, read by one task head; subclasses say how (`encode`)."""

    blocks: Mapping[str, LegoBlock]  # an nn.ModuleDict at runtime, typed as what it holds (torch types it by Module)

    def __init__(self, blocks: Mapping[str, LegoBlock], order: list[str], head: TaskHead, config: Any, graph: Graph):
        super().__init__()
        self.blocks = cast("Mapping[str, LegoBlock]", nn.ModuleDict({m: blocks[m] for m in order}))
        self.head = head
        self.config = config
        self.graph = graph
        self.provenance: dict[str, Any] = {}

    @property
    def modalities(self) -> list[str]:
        return list(self.blocks)

    @property
    def task(self) -> TaskSpec:
        return next(iter(self.blocks.values())).config.task

    @property
    def head_features(self) -> str:
        """What the head reads; the blocks agree on it (`check_joinable`)."""
        return next(iter(self.blocks.values())).config.head_features

    @property
    def block_prefixes(self) -> dict[str, str]:
        return {m: f"blocks.{m}." for m in self.blocks}

    @property
    def first_blocks(self) -> list[str]:
        return list(self.blocks)

    def check_inputs(self, inputs: Mapping[str, ModalityBatch]) -> None:
        """Every input names one of the blocks, and all have one batch size."""
        unknown = sorted(set(inputs) - set(self.blocks))
        if unknown:
            raise ShapeError(f"no block for modality {unknown[0]!r}; this model takes {', '.join(self.modalities)}")
        batch_size(inputs)

    def encode(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Task logits from the model's frequency-domain latent."""
        return self.head(pool_spectrum(spectrum, self.head_features))

    def forward(self, inputs: Mapping[str, ModalityBatch | torch.Tensor]) -> torch.Tensor:
        return self.decode(self.encode(as_batches(inputs)))
