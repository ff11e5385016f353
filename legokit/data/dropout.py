"""Modality dropout for fine-tuning: each training sample's modalities are dropped at random, never all of a sample's,
so that a multimodal model does not learn to rely on a modality that some samples lack."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from legokit.data.batch import ModalityBatch, batch_size
from legokit.errors import ConfigError


def check_rate(value: object, name: str = "modality_dropout") -> float:
    """`value` when it is a number in [0, 1) (not a bool, not NaN); otherwise a ConfigError naming the setting. Compared
    before any conversion to float: an integer past float's range is refused, not an OverflowError; -0.0 is 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {repr(value)[:40]}")
    return float(value) + 0.0


def drop_modalities(
    batches: Mapping[str, ModalityBatch], rate: float, generator: torch.Generator
) -> dict[str, ModalityBatch]:
    """New batches in which each modality a sample has (present and observed) is dropped with probability `rate`,
    drawn from `generator`; when a draw would drop all of a sample's modalities, one of them, drawn at random, is
    kept, so a sample with one modality is never changed. A dropped row is `present` False (and not `observed`) with
    zero inputs and mask, as the data marks a missing modality. The inputs are not modified; rate 0 returns them."""
    check_rate(rate)
    names = list(batches)
    if rate == 0 or not names:
        return dict(batches)
    size = batch_size(batches)
    has = torch.stack([batches[m].available().cpu() for m in names], dim=1)  # (b, M)
    # a fixed number of draws per batch, whatever they decide: the stream depends on the batch shapes only
    drawn = torch.rand((size, len(names)), generator=generator) < rate
    keeper = torch.rand((size, len(names)), generator=generator).masked_fill(~has, -1.0).argmax(dim=1)
    drop = has & drawn
    emptied = has.any(dim=1) & ~(has & ~drop).any(dim=1)
    drop[emptied, keeper[emptied]] = False
    out: dict[str, ModalityBatch] = {}
    for column, name in enumerate(names):
        gone = drop[:, column]
        out[name] = _without(batches[name], gone) if bool(gone.any()) else batches[name]
    return out


def _without(batch: ModalityBatch, gone: torch.Tensor) -> ModalityBatch:
    """The batch with the `gone` (b,) rows made missing: zero inputs and mask, not present, not observed."""
    gone = gone.to(batch.x.device)

    def zeroed(t: torch.Tensor) -> torch.Tensor:
        return torch.where(gone.reshape(-1, *([1] * (t.dim() - 1))), torch.zeros((), dtype=t.dtype, device=t.device), t)

    observed = None if batch.observed is None else batch.observed & ~gone
    return ModalityBatch(
        zeroed(batch.x), None if batch.mask is None else zeroed(batch.mask), batch.presence() & ~gone, observed
    )
