"""One modality's part of a batch: its inputs, its token padding mask, and which samples have the modality."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from legokit.errors import ShapeError


@dataclass(frozen=True)
class ModalityBatch:
    """Inputs x (b, ...) of one modality; `mask` (b, n) marks real tokens; `present` (b,) marks the samples that have
    this modality at all (their x rows are ignored otherwise); `observed` (b,) is False where x is a zero dummy
    standing in for missing data that the model still runs on (the MoRA protocol); only adapters read it.
    None means every token / every sample."""

    x: torch.Tensor
    mask: torch.Tensor | None = None
    present: torch.Tensor | None = None
    observed: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.present is not None and (
            self.present.dtype != torch.bool or tuple(self.present.shape) != (self.x.shape[0],)
        ):
            raise ShapeError(
                f"present must be bool of shape ({self.x.shape[0]},), "
                f"got {self.present.dtype} {tuple(self.present.shape)}"
            )

    def presence(self) -> torch.Tensor:
        """The (b,) availability mask, all True when none was given."""
        if self.present is None:
            return torch.ones(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        return self.present

    def available(self) -> torch.Tensor:
        """(b,) True where the sample really has this modality: present and not a dummy."""
        if self.observed is None:
            return self.presence()
        return self.presence() & self.observed

    def pin_memory(self) -> ModalityBatch:
        """A copy in page-locked memory (what a DataLoader with pin_memory calls), for non-blocking copies to CUDA."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return ModalityBatch(self.x.pin_memory(), pin(self.mask), pin(self.present), pin(self.observed))

    def widened(self) -> ModalityBatch:
        """This batch with half-precision inputs as float32 (what a model computes in; a loader carries them half)."""
        if self.x.dtype not in (torch.float16, torch.bfloat16):
            return self
        return ModalityBatch(self.x.float(), self.mask, self.present, self.observed)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ModalityBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return ModalityBatch(
            self.x.to(device, non_blocking=non_blocking), move(self.mask), move(self.present), move(self.observed)
        )


def batch_size(inputs: Mapping[str, ModalityBatch]) -> int:
    """The shared batch size of several modalities; disagreeing sizes are a ShapeError."""
    sizes = {name: batch.x.shape[0] for name, batch in inputs.items()}
    if not sizes:
        raise ShapeError("no modality given: a batch needs at least one")
    if len(set(sizes.values())) > 1:
        raise ShapeError(f"modalities disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def as_batches(inputs: Mapping[str, ModalityBatch | torch.Tensor]) -> dict[str, ModalityBatch]:
    """`{modality: batch}` from a mapping whose values are batches or plain tensors (every sample present)."""
    return {m: v if isinstance(v, ModalityBatch) else ModalityBatch(v) for m, v in inputs.items()}
