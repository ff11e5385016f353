"""Dataset folders: per modality either `NAME.csv` (an `id` column, then features) or `NAME/` holding `ID.safetensors`
files with a tensor `x` of shape (tokens, features). A sample may lack any modality: that is its missing mask."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import LegoError
from .batch import ModalityBatch


class DataError(LegoError, ValueError):
    """A dataset file is missing, malformed, or holds values a model cannot take (NaN, wrong width)."""


@dataclass(frozen=True)
class Table:
    """A tabular modality: one feature row per id."""

    name: str
    path: Path
    columns: tuple[str, ...]
    rows: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Bags:
    """A bag/sequence modality: one `ID.safetensors` file per id, read when a batch needs it."""

    name: str
    path: Path
    files: Mapping[str, Path]


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; a missing or empty file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        rows = [row for row in reader if row]
    return [h.strip() for h in header], rows


def parse_number(path: Path, row: int, column: str, text: str) -> float:
    """A finite float from a CSV cell; anything else is a DataError naming file, row and column."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: row {row}, column {column}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}, column {column}: {text} (missing values must be imputed or the row dropped)")
    return value


def id_rows(path: Path) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """Header and (row number, id, fields) of a CSV keyed by a first column `id`: every row complete, no id twice."""
    header, rows = read_csv_rows(path)
    if header[0] != "id":
        raise DataError(f"{path}: the first column must be 'id', found {header[0]!r}")
    seen: set[str] = set()
    keyed = []
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} has {len(row)} fields, the header has {len(header)}")
        sample = row[0].strip()
        if sample in seen:
            raise DataError(f"{path}: row {number}: id {sample!r} appears twice")
        seen.add(sample)
        keyed.append((number, sample, row))
    return header, keyed


def read_table(name: str, path: Path) -> Table:
    header, rows = id_rows(path)
    if len(header) < 2:
        raise DataError(f"{path}: no feature columns after 'id'")
    features: dict[str, torch.Tensor] = {}
    for number, sample, row in rows:
        features[sample] = torch.tensor(
            [parse_number(path, number, column, cell) for column, cell in zip(header[1:], row[1:])], dtype=torch.float32
        )
    if not features:
        raise DataError(f"{path}: modality {name} has no samples")
    return Table(name, path, tuple(header[1:]), features)


def read_bags(name: str, path: Path) -> Bags:
    files = {f.name[: -len(".safetensors")]: f for f in sorted(path.glob("*.safetensors"))}
    if not files:
        raise DataError(f"{path}: modality {name} has no ID.safetensors files")
    return Bags(name, path, files)


def load_bag(path: Path) -> torch.Tensor:
    """The (tokens, features) tensor `x` of one sample's file, checked for shape and NaN."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from None
    x = tensors.get("x")
    if x is None:
        raise DataError(f"{path}: no tensor named 'x'")
    if x.dim() != 2 or x.shape[0] == 0:
        raise DataError(f"{path}: 'x' must have shape (tokens, features) with at least one token, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: 'x' holds NaN or infinite values")
    return x.float()


def modality_shape(root: str | os.PathLike[str], name: str) -> tuple[int | None, ...]:
    """The per-sample input shape of a modality as stored in a dataset folder: (features,) for NAME.csv,
    (None, features) for NAME/ (read off its first file)."""
    root = Path(root)
    table, folder = root / f"{name}.csv", root / name
    if table.is_file():
        header, _ = read_csv_rows(table)
        return (len(header) - 1,)
    if folder.is_dir():
        first = next(iter(sorted(folder.glob("*.safetensors"))), None)
        if first is None:
            raise DataError(f"{folder}: modality {name} has no ID.safetensors files")
        return (None, int(load_bag(first).shape[1]))
    raise DataError(f"{root}: no modality {name!r} (looked for {name}.csv and {name}/)")


class DatasetFolder:
    """The modalities of a dataset folder, read for the modalities a model takes (vector inputs from CSV, token
    inputs from folders). Ids are the union over modalities, sorted; `batch(ids)` builds padded, masked inputs.
    Bags are read once and kept in memory."""

    def __init__(self, root: str | os.PathLike[str], inputs: Mapping[str, Sequence[int | None]]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such directory")
        self.shapes = {name: tuple(shape) for name, shape in inputs.items()}
        self.modalities: dict[str, Table | Bags] = {}
        self._bags: dict[Path, torch.Tensor] = {}
        for name, shape in self.shapes.items():
            table, folder = self.root / f"{name}.csv", self.root / name
            if len(shape) == 1 and table.is_file():
                self.modalities[name] = self._checked_table(read_table(name, table), shape[0])
            elif len(shape) == 2 and folder.is_dir():
                self.modalities[name] = read_bags(name, folder)
        if not self.modalities:
            wanted = ", ".join(f"{n}.csv" if len(s) == 1 else f"{n}/" for n, s in self.shapes.items())
            raise DataError(f"{self.root}: holds none of the model's modalities (looked for {wanted})")
        ids: set[str] = set()
        for modality in self.modalities.values():
            ids.update(modality.rows if isinstance(modality, Table) else modality.files)
        self.ids = sorted(ids)

    @staticmethod
    def _checked_table(table: Table, width: int | None) -> Table:
        if width is not None and len(table.columns) != width:
            raise DataError(f"{table.path}: {len(table.columns)} feature columns, but the model takes {width}")
        return table

    def _bag_batch(self, bags: Bags, ids: Sequence[str]) -> ModalityBatch:
        width = self.shapes[bags.name][-1]
        loaded = [self._bag(bags.files[i]) if i in bags.files else None for i in ids]
        for sample, x in zip(ids, loaded):
            if x is not None and width is not None and x.shape[1] != width:
                raise DataError(f"{bags.files[sample]}: 'x' has {x.shape[1]} features, the model takes {width}")
        longest = max((x.shape[0] for x in loaded if x is not None), default=1)
        xs = torch.zeros(len(ids), longest, width)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool)
        for row, x in enumerate(loaded):
            if x is not None:
                xs[row, : x.shape[0]] = x
                mask[row, : x.shape[0]] = True
        return ModalityBatch(xs, mask, mask.any(dim=1))

    def _bag(self, path: Path) -> torch.Tensor:
        if path not in self._bags:
            self._bags[path] = load_bag(path)
        return self._bags[path]

    def ids_of(self, name: str) -> set[str]:
        """The samples that have modality `name`."""
        modality = self.modalities.get(name)
        if modality is None:
            return set()
        return set(modality.rows if isinstance(modality, Table) else modality.files)

    def check_known(self, known: set[str], labels: Path) -> None:
        """Every sample of every modality must be in labels.csv; else a DataError naming the file (and row)."""
        for modality in self.modalities.values():
            if isinstance(modality, Table):
                for row, sample in enumerate(modality.rows, start=2):
                    if sample not in known:
                        raise DataError(f"{modality.path}: row {row}, column id: {sample!r} is not in {labels}")
            else:
                for sample, path in modality.files.items():
                    if sample not in known:
                        raise DataError(f"{path}: id {sample!r} is not in {labels}")

    def batch(self, ids: Sequence[str]) -> dict[str, ModalityBatch]:
        """Inputs for these samples; a modality a sample lacks is zeros with `present` False."""
        batches: dict[str, ModalityBatch] = {}
        for name, modality in self.modalities.items():
            if isinstance(modality, Table):
                width = len(modality.columns)
                x = torch.stack([modality.rows.get(i, torch.zeros(width)) for i in ids])
                present = torch.tensor([i in modality.rows for i in ids])
                batches[name] = ModalityBatch(x, None, present)
            else:
                batches[name] = self._bag_batch(modality, ids)
        return batches
