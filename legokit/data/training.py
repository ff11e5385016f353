"""A labelled dataset folder with its split: what training and evaluation read."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from legokit.data.batch import ModalityBatch
from legokit.data.folder import DataError, DatasetFolder, InputSpec
from legokit.data.labels import Labels, random_split, read_labels, read_splits
from legokit.data.stream import Moments, Subsample, budget_chunks
from legokit.tasks import TaskSpec
from legokit.torch_internals import version_counter
from legokit.training.distributed import World
from legokit.training.metrics import survival_bins, to_bins


class _Held:
    """A modality's inputs and mask in a batch `SplitData.batch` built: by reference (not kept alive) and version."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor | None):
        self.x, self.mask = weakref.ref(x), None if mask is None else weakref.ref(mask)
        self.versions = _versions(x, mask)

    def holds(self, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """These very tensors, written in place by nobody since."""
        same_mask = mask is None if self.mask is None else self.mask() is mask
        return self.x() is x and same_mask and _versions(x, mask) == self.versions


def _versions(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, int]:
    return version_counter(x), -1 if mask is None else version_counter(mask)


@dataclass
class SplitData:
    """Modalities, labels and a train/val/test assignment of one dataset folder."""

    folder: DatasetFolder
    labels: Labels
    splits: dict[str, str]
    split_source: str
    # the ids and inputs of the last batch built (`samples_in`): per-sample work is then looked up by id
    built: tuple[tuple[str, ...], tuple[_Held, ...]] = field(default=((), ()), init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        """Pickled (to a worker process) without the last batch's references, which do not travel."""
        return {**self.__dict__, "built": ((), ())}

    @classmethod
    def load(
        cls,
        root: str | os.PathLike[str],
        inputs: Mapping[str, InputSpec],
        task: TaskSpec,
        seed: int = 0,
        splits: Mapping[str, str] | None = None,
        columns: Mapping[str, Sequence[str]] | None = None,
        classes: Sequence[str] | None = None,
        time_scale: float = 1.0,
    ) -> SplitData:
        """Read a folder for a model's inputs and task; the split is `splits`, else splits.csv, else a seeded
        random 70/15/15 split of the labelled samples. `columns` (tables' feature names), `classes` and `time_scale`
        come from the model's contract (`legokit.contract`)."""
        root = Path(root)
        folder = DatasetFolder(root, inputs, columns)
        labels = read_labels(root / "labels.csv", task, classes, time_scale)
        folder.check_known(set(labels.ids), root / "labels.csv")
        if splits is not None:
            assignment, source = dict(splits), "given"
        elif os.path.lexists(root / "splits.csv"):  # a pipe or a dangling link there is refused, not skipped
            assignment, source = read_splits(root / "splits.csv", labels.ids), "splits.csv"
        else:
            assignment, source = random_split(labels.ids, seed), f"random 70/15/15, seed {seed}"
        return cls(folder, labels, assignment, source)

    def ids(self, split: str, modalities: Iterable[str] | None = None) -> list[str]:
        """Labelled samples of a split that have at least one of `modalities` (default: any the folder has)."""
        wanted = list(modalities) if modalities is not None else list(self.folder.modalities)
        having: set[str] = set()
        for name in wanted:
            having |= self.folder.ids_of(name)
        return [i for i in self.labels.ids if self.splits.get(i) == split and i in having]

    def survival_edges(self, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Bin edges from the uncensored times of these samples (default: every labelled training sample, whatever
        modalities it has, so that blocks trained on one folder and split share their bins)."""
        targets = self.labels.select(self.labels.labelled(self.splits, "train") if ids is None else ids)
        return survival_bins(targets["time"], targets["event"], self.labels.task.n)

    def targets(self, ids: Sequence[str], edges: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """These samples' targets (with each survival time's bin when `edges` are given); no input is read."""
        targets = self.labels.select(ids)
        if edges is not None:
            targets["bin"] = to_bins(targets["time"], edges)
        return targets

    def batch(
        self,
        ids: Sequence[str],
        edges: torch.Tensor | None = None,
        subsample: Subsample | None = None,
        narrow: bool = False,
    ) -> tuple[dict[str, ModalityBatch], dict[str, torch.Tensor]]:
        """Inputs and targets of these samples (with each survival time's bin when `edges` are given; at most
        `subsample.most` tokens of each bag when given; half-precision bags kept half when `narrow`)."""
        targets = self.targets(ids, edges)
        batches = self.folder.batch(ids, subsample=subsample, narrow=narrow)
        if self.whole(ids, subsample):
            self.remember(ids, batches)
        return batches, targets

    def whole(self, ids: Sequence[str], subsample: Subsample | None) -> bool:
        """Whether these samples' batch holds every token of every bag (`subsample` left them all)."""
        return subsample is None or max(self.folder.lengths(ids), default=0) <= subsample.most

    def remember(self, ids: Sequence[str], batches: Mapping[str, ModalityBatch]) -> None:
        """Record that these batches hold these samples' inputs, unchanged (`batch` does; so may a loader, for the
        batches it hands the model), replacing the last record."""
        self.built = (tuple(ids), tuple(_Held(b.x, b.mask) for b in batches.values()))

    def samples_in(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[str, ...] | None:
        """The ids of the samples that `x` holds, row by row, when `x` and `mask` are a modality's inputs in the last
        batches recorded (`remember`), unchanged since; None for any other tensor (a copy, a rewritten batch)."""
        ids, held = self.built
        return ids if any(h.holds(x, mask) for h in held) else None

    def normalization(
        self, modality: str, ids: Sequence[str], place: World = World()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and standard deviation of a modality over these samples' real values (or tokens); under
        torchrun each process reads its share (`place`) and the moments are merged."""
        having = [i for i in ids if i in self.folder.ids_of(modality)]
        if not having:
            raise DataError(f"{self.folder.root}: modality {modality} has no samples in the training split")
        mine = place.shard(having)
        chunks = budget_chunks(mine, self.folder.lengths(mine, [modality]), self.folder.token_budget([modality]))
        moments = Moments()
        for chunk in chunks:  # one streaming pass, a chunk within the folder's token budget at a time
            batch = self.folder.batch(chunk, [modality], narrow=True)[modality]
            values = (batch.x[batch.mask] if batch.mask is not None else batch.x).float()
            if len(chunks) == 1 and place.size == 1:  # the whole split at once: as it always was, in float32
                return values.mean(dim=0), values.std(dim=0, unbiased=False)
            moments.add(values)
        if place.size > 1:
            merged = Moments()
            for share in place.gathered(moments):
                merged.merge(share)
            moments = merged
        return moments.result()
