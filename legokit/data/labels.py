"""Targets and splits of a dataset folder: `labels.csv` (id, then the task's columns) and optional `splits.csv`."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from legokit.contract import name_problem, number_value
from legokit.data.folder import DataError, id_rows, parse_number, read_csv_rows, refuse_repeated_id
from legokit.errors import quoted, quoted_list
from legokit.tasks import TaskSpec

SPLITS = ("train", "val", "test")
ASCII_SPACE = " \t\r\n\x0b\x0c"  # what a label cell may have around it (as a class name, not as a number)


@dataclass(frozen=True)
class Labels:
    """Per-sample targets: `time` and `event` (survival) or `label` (class index, 0/1, or a 0/1 row per label), and
    the class names the label values were read as (None for survival)."""

    path: Path
    task: TaskSpec
    ids: tuple[str, ...]
    targets: Mapping[str, torch.Tensor]
    classes: tuple[str, ...] | None = None
    # each id's row, built once: `select` runs at every training step (16,859 ids in NAFLD)
    row_of: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_of", {sample: row for row, sample in enumerate(self.ids)})

    def select(self, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """The targets of these samples, in order; an id not in labels.csv is a KeyError naming it."""
        index = self.row_of
        rows = torch.tensor([index[i] for i in ids], dtype=torch.long)
        return {name: values[rows] for name, values in self.targets.items()}

    def labelled(self, splits: Mapping[str, str], split: str) -> list[str]:
        """Every labelled sample of a split, whatever modalities it has."""
        return [i for i in self.ids if splits.get(i) == split]


def _integer(path: Path, row: int, column: str, text: str, low: int, high: int) -> int:
    value = parse_number(path, row, column, text)
    if value != int(value) or not low <= value <= high:
        raise DataError(f"{path}: row {row}, column {column}: {text!r} must be an integer from {low} to {high}")
    return int(value)


def class_name(text: str) -> str:
    """A label cell as a class name: ASCII spaces stripped (an NBSP is kept, and refused as a name), and an integral
    number (legokit's number grammar) written as an integer (`1.0` is class 1; `1_2` and `+1` stay names)."""
    text = text.strip(ASCII_SPACE)
    value = number_value(text)
    return str(int(value)) if value is not None and math.isfinite(value) and value == int(value) else text


def _class_codes(
    path: Path, task: TaskSpec, cells: Sequence[tuple[int, str]], classes: Sequence[str] | None
) -> tuple[list[int], tuple[str, ...]]:
    """Class indices of `label` cells and the class names they follow. With `classes` (a trained block's, or
    --classes), cells are mapped by name; without, they are integers 0..K-1 (binary: 0/1), or names sorted."""
    count = 2 if task.kind == "binary" else task.n
    names = [class_name(text) for _, text in cells]
    for (row, _), name in zip(cells, names):
        if not name:
            raise DataError(f"{path}: row {row}, column label: empty (a sample without a label has no row)")
        problem = name_problem(name)
        if problem:
            raise DataError(f"{path}: row {row}, column label: {problem}")
    if classes is None:
        if all(n.lstrip("-").isdigit() for n in names):
            codes = [_integer(path, row, "label", text.strip(ASCII_SPACE), 0, count - 1) for row, text in cells]
            return codes, tuple(str(k) for k in range(count))
        if task.kind == "binary":
            raise DataError(
                f"{path}: binary labels must be 0/1 (found {quoted_list(sorted(set(names)), 4)}); or name "
                "the classes, negative first: --classes NEG,POS"
            )
        classes = sorted(set(names))
        if len(classes) != count:
            raise DataError(
                f"{path}: task {task} has {count} classes, the label column has {len(classes)} "
                f"({quoted_list(classes)}); give --task multiclass:{len(classes)}, or --classes"
            )
    normal = [class_name(name) for name in classes]  # --classes 1.0 is class 1, as in a cell
    index = {name: k for k, name in enumerate(normal)}
    if len(index) < len(normal):
        twice = next(name for k, name in enumerate(normal) if index[name] != k)
        raise DataError(
            f"{path}: the classes {quoted_list([c for c, n in zip(classes, normal) if n == twice])} name "
            "one class; give each class once"
        )
    classes = normal
    codes = []
    for (row, text), name in zip(cells, names):
        if name not in index:
            raise DataError(
                f"{path}: row {row}, column label: {quoted(text.strip(), 40)} is not one of the classes "
                f"{quoted_list(classes)}"
            )
        codes.append(index[name])
    return codes, tuple(classes)


def read_labels(path: Path, task: TaskSpec, classes: Sequence[str] | None = None, time_scale: float = 1.0) -> Labels:
    """Read and check labels.csv for a task: survival needs `time` (> 0, multiplied by `time_scale` into the model's
    unit) and `event` (0/1); binary and multiclass a `label` column (0/1 or 0..K-1, or class names: see
    `_class_codes`); multilabel one 0/1 column per label (K columns after `id`, taken by name when `classes` names
    them)."""
    header, rows = id_rows(path)
    columns = {name: position for position, name in enumerate(header)}
    if task.kind == "survival":
        wanted = ["time", "event"]
    elif task.kind == "multilabel":
        wanted = list(classes) if classes is not None else header[1:]
        if len(wanted) != task.n:
            raise DataError(f"{path}: task {task} needs {task.n} label columns after 'id', found {len(wanted)}")
    else:
        wanted = ["label"]
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise DataError(
            f"{path}: task {task} needs column(s) {quoted_list(missing)}; the file has {quoted_list(header)}"
        )
    first: dict[str, int] = {}
    read = set(wanted)
    for position, name in enumerate(header):
        first.setdefault(name, position)
        if name in read and first[name] != position:
            raise DataError(f"{path}: column {quoted(name)} appears twice in the header")
    ids: list[str] = []
    values: dict[str, list[float]] = {name: [] for name in wanted}
    cells: list[tuple[int, str]] = []
    for number, sample, row in rows:
        ids.append(sample)
        for name in wanted:
            text = row[columns[name]]
            if name == "time":
                value = parse_number(path, number, name, text)
                if value <= 0:
                    raise DataError(f"{path}: row {number}, column time: {text!r} must be positive")
                if not math.isfinite(value * time_scale):
                    raise DataError(f"{path}: row {number}, column time: {text!r} is out of range in the model's unit")
            elif name == "event" or task.kind == "multilabel":
                value = _integer(path, number, name, text, 0, 1)
            else:
                cells.append((number, text))
                continue
            values[name].append(value)
    if not ids:
        raise DataError(f"{path}: no samples")
    found: tuple[str, ...] | None = None
    if task.kind == "survival":
        targets = {
            "time": torch.tensor(values["time"], dtype=torch.float64) * time_scale,
            "event": torch.tensor(values["event"], dtype=torch.bool),
        }
    elif task.kind == "multilabel":
        targets = {"label": torch.tensor([values[n] for n in wanted], dtype=torch.float32).T.contiguous()}
        found = tuple(wanted)
    else:
        codes, found = _class_codes(path, task, cells, classes)
        targets = {"label": torch.tensor(codes, dtype=torch.long)}
    return Labels(path, task, tuple(ids), targets, found)


def random_split(ids: Sequence[str], seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, str]:
    """A seeded 70/15/15 train/val/test assignment."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    return {i: "train" if k < n_train else "val" if k < n_train + n_val else "test" for k, i in enumerate(order)}


def read_splits(path: Path, ids: Sequence[str]) -> dict[str, str]:
    """splits.csv: `id`, `split` in train/val/test, exactly one row for each labelled sample."""
    header, rows = read_csv_rows(path)
    if header[:2] != ["id", "split"]:
        raise DataError(f"{path}: the columns must be id, split; found {', '.join(header)}")
    known = set(ids)
    splits: dict[str, str] = {}
    rows_of: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        sample, split = row[0].strip(), row[1].strip() if len(row) > 1 else ""
        if sample not in known:
            raise DataError(f"{path}: row {number}, column id: {sample!r} is not in labels.csv")
        refuse_repeated_id(path, rows_of, sample, number)
        if split not in SPLITS:
            raise DataError(f"{path}: row {number}, column split: {split!r} must be train, val or test")
        splits[sample] = split
    unassigned = sorted(known - set(splits))
    if unassigned:
        raise DataError(f"{path}: sample {unassigned[0]!r} has no split")
    return splits
