"""Batches read ahead of the model: a torch DataLoader whose items are whole batches of a split (one item, one list
of ids), so that worker processes read and pad the next batches while the model computes; pinned memory for CUDA.
Half-precision bags stay half on their way from the workers (half the bytes to copy), and are widened to float32
here on CPU, or on the GPU after their copy (`ModalityBatch.widened`).
The batches, and their order, are the same with or without workers: each is a pure function of its ids (and of the
seeded `Subsample`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from legokit.data.batch import ModalityBatch
from legokit.data.stream import Subsample
from legokit.data.training import SplitData

Loaded = tuple[list[str], dict[str, ModalityBatch], dict[str, torch.Tensor]]


class SplitBatches(Dataset[Loaded]):
    """Item i: the ids of batch i, their inputs and their targets (`SplitData.batch`)."""

    def __init__(
        self,
        data: SplitData,
        chunks: Sequence[list[str]],
        edges: torch.Tensor | None = None,
        subsample: Subsample | None = None,
    ):
        self.data, self.chunks, self.edges, self.subsample = data, list(chunks), edges, subsample

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> Loaded:
        ids = self.chunks[index]
        batches, targets = self.data.batch(ids, self.edges, self.subsample, narrow=True)
        return ids, batches, targets


def _as_is(item: Any) -> Any:
    return item


def _one_thread(worker: int) -> None:
    torch.set_num_threads(1)  # a reader pads and copies: the compute threads stay the model's


def read_ahead(
    data: SplitData,
    chunks: Sequence[list[str]],
    edges: torch.Tensor | None = None,
    subsample: Subsample | None = None,
    workers: int = 0,
    pin: bool = False,
) -> Iterator[Loaded]:
    """The batches of `chunks`, in order: read here one at a time (`workers` 0), or by worker processes that keep
    two batches each ready ahead of the model; `pin`: in page-locked memory, for non-blocking copies to CUDA (half
    precision kept; else float32)."""
    dataset = SplitBatches(data, chunks, edges, subsample)
    if workers == 0 or not dataset:
        for ids, batches, targets in (dataset[i] for i in range(len(dataset))):
            yield ids, _widened(data, ids, batches, subsample, pin), targets
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(dataset)),
        collate_fn=_as_is,
        pin_memory=pin,
        prefetch_factor=2,
        worker_init_fn=_one_thread,
        generator=torch.Generator().manual_seed(0),  # its workers' seeds, drawn apart from the global stream
    )
    for ids, batches, targets in loader:
        yield ids, _widened(data, ids, batches, subsample, pin), targets


def _widened(
    data: SplitData, ids: list[str], batches: dict[str, ModalityBatch], subsample: Subsample | None, pin: bool
) -> dict[str, ModalityBatch]:
    """The batches as the model gets them: float32 here on CPU (for CUDA, `pin`: half until copied), recorded as
    these samples' whole inputs when they are (`SplitData.remember`: per-sample lookups may then use them)."""
    if not pin:
        batches = {m: b.widened() for m, b in batches.items()}
    if data.whole(ids, subsample):
        data.remember(ids, batches)
    return batches
