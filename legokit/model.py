"""The interface every legokit model offers (a block, a merged or a fused model, with or without adapters), so
that training, prediction, adapters and files use one set of names instead of asking which class they hold."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import nn

from .data.batch import ModalityBatch
from .data.folder import InputSpec
from .tasks import TaskSpec


class LegoModel(Protocol):
    """Modalities, task, blocks, head, encode -> spectrum -> logits, config and provenance."""

    config: Any
    provenance: dict[str, Any]

    @property
    def modalities(self) -> list[str]: ...

    @property
    def task(self) -> TaskSpec: ...

    @property
    def blocks(self) -> Mapping[str, nn.Module]: ...  # the LegoBlocks inside, by modality (a block: itself)

    @property
    def head(self) -> nn.Module: ...  # the task head module

    @property
    def head_features(self) -> str: ...  # what the head reads of the spectrum (`spectral.pool_spectrum`)

    @property
    def block_prefixes(self) -> Mapping[str, str]: ...  # each block's module path inside the model ("" or "blocks.M.")

    @property
    def first_blocks(self) -> list[str]: ...  # the blocks whose first update step a sample's latent meets first

    def encode(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor: ...  # the frequency-domain latent

    def decode(self, spectrum: torch.Tensor) -> torch.Tensor: ...  # task logits of a spectrum

    def __call__(self, inputs: Mapping[str, ModalityBatch | torch.Tensor]) -> torch.Tensor: ...  # logits


def model_inputs(model: LegoModel) -> dict[str, InputSpec]:
    """What a dataset folder supplies for each modality of a model: a per-sample shape, or raw text."""
    return {m: b.data_input for m, b in model.blocks.items()}
