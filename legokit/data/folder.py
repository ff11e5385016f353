"""Dataset folders: per modality `NAME.csv` (an `id` column, then features), `NAME/` holding `ID.safetensors` files
of one tensor `x` of the block's per-sample shape ((tokens, features), or (3, 32, 32) for an image; checked from the
header before it is read) or `ID.h5` bags, or a text modality (`NAME.csv` of id and text, or `NAME/ID.txt` files).
A sample may lack any modality: that is its missing mask."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from legokit.contract import NUMBER_RULE, name_problem, number_value
from legokit.data.batch import ModalityBatch
from legokit.data.hdf5 import features_layout, require_h5py
from legokit.data.samples import NARROW, load_bag, sample_layout
from legokit.data.sizes import MAX_BATCH_BYTES, DataError
from legokit.data.stream import Subsample
from legokit.errors import brief, quoted, quoted_list
from legokit.io.inputs import open_input, read_input, refuse_special_input
from legokit.progress import log
from legokit.text.spec import TextEncoder, TextSpec, padded

InputSpec = Sequence[int | None] | TextSpec  # a per-sample shape, or raw text read through a tokenizer


@dataclass(frozen=True)
class Table:
    """A tabular modality: one feature row per id."""

    name: str
    path: Path
    columns: tuple[str, ...]
    rows: Mapping[str, torch.Tensor]
    lines: Mapping[str, int] | None = None  # each sample's row number in the file (for messages)


@dataclass(frozen=True)
class Bags:
    """A bag/sequence modality: one `ID.safetensors` (or `ID.h5`) file per id, read when a batch needs it."""

    name: str
    path: Path
    files: Mapping[str, Path]


@dataclass(frozen=True)
class Texts:
    """A text modality: one string per id, from `NAME.csv` (id, text) or `NAME/ID.txt`."""

    name: str
    path: Path
    texts: Mapping[str, str]


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; a missing, empty or not regular file (a pipe, a device) is a DataError."""
    try:
        # -sig: a BOM (Excel's CSV UTF-8) is no column
        with io.TextIOWrapper(open_input(path, DataError), encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file, expected a header row")
            rows = [row for row in reader if row]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
    return [h.strip() for h in header], rows


MISSING_SPELLINGS = frozenset({"nan", "-nan", "na", "n/a", "null", "none", "inf", "-inf", "infinity", "-infinity"})


def parse_number(path: Path, row: int, column: str, text: str) -> float:
    """A finite float from a CSV cell, spelled by legokit's number grammar (`legokit.contract.NUMBER`); anything else
    is a DataError naming file, row and column. Every number read from a user's CSV goes through here."""
    value = number_value(text)
    if value is None and text.strip().lower() in MISSING_SPELLINGS:
        raise DataError(
            f"{path}: row {row}, column {column}: {text.strip()} (missing values must be imputed or the row dropped)"
        )
    if value is None:
        raise DataError(f"{path}: row {row}, column {column}: {quoted(text, 40)} is not a number ({NUMBER_RULE})")
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}, column {column}: {quoted(text, 40)} is out of range (|x| > 1.8e308)")
    return value


def id_rows(path: Path) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """Header and (row number, id, fields) of a CSV keyed by a first column `id`: every row complete, no id twice."""
    header, rows = read_csv_rows(path)
    if header[0] != "id":
        raise DataError(f"{path}: the first column must be 'id', found {header[0]!r}")
    seen: dict[str, int] = {}
    keyed = []
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} has {len(row)} fields, the header has {len(header)}")
        sample = row[0].strip()
        refuse_repeated_id(path, seen, sample, number)
        keyed.append((number, sample, row))
    return header, keyed


def refuse_repeated_id(path: Path, seen: dict[str, int], sample: str, number: int) -> None:
    """Record that `sample` is on row `number`; an id seen on an earlier row is a DataError naming both rows (the
    later row would silently win otherwise)."""
    if sample in seen:
        raise DataError(f"{path}: id {sample!r} appears twice, on rows {seen[sample]} and {number}")
    seen[sample] = number


def regular_files(files: Sequence[Path]) -> list[Path]:
    """The files of a modality folder, each checked to be a regular file (a pipe named like a sample would block
    its read forever; a directory or a device is no sample)."""
    for file in files:
        refuse_special_input(file, DataError)
    return list(files)


def read_table(name: str, path: Path, names: Sequence[str] | None = None) -> Table:
    """A table modality. With `names` (a trained block's feature names), those columns are read by name, in that
    order: a missing one is a DataError naming it, extra ones are ignored with a warning. A row whose feature cells
    are all empty is a sample without this modality."""
    header, rows = id_rows(path)
    if len(header) < 2:
        raise DataError(f"{path}: no feature columns after 'id'")
    wanted = list(header[1:]) if names is None else list(names)
    read = set(wanted)
    position: dict[str, int] = {}
    for index, column in enumerate(header[1:], start=1):
        if column not in read:
            continue  # an extra column: ignored, whatever its name
        problem = name_problem(column)
        if problem:
            raise DataError(f"{path}: column {index + 1} of the header: {problem}")
        if column in position:
            raise DataError(f"{path}: column {quoted(column)} appears twice in the header")
        position[column] = index
    if names is not None:
        missing = [n for n in names if n not in position]
        if missing:
            raise DataError(
                f"{path}: no column {quoted_list(missing)}; the {name} block was trained on {len(names)} "
                f"features named {quoted_list(names, 5)}"
            )
        extra = [c for c in header[1:] if c not in read]
        if extra:
            log.warning(
                "%s: ignoring %d column(s) the %s block was not trained on: %s",
                path,
                len(extra),
                name,
                quoted_list(extra),
            )
    features: dict[str, torch.Tensor] = {}
    lines: dict[str, int] = {}
    for number, sample, row in rows:
        if not any(row[position[column]].strip() for column in wanted):
            continue  # empty in every feature read: this sample lacks the modality
        lines[sample] = number
        values = torch.tensor(
            [parse_number(path, number, column, row[position[column]]) for column in wanted], dtype=torch.float32
        )
        if not torch.isfinite(values).all():
            column = wanted[int((~torch.isfinite(values)).nonzero()[0])]
            raise DataError(f"{path}: row {number}, column {column}: out of the float32 range (|x| > 3.4e38)")
        features[sample] = values
    if not features:
        raise DataError(f"{path}: modality {name} has no samples")
    return Table(name, path, tuple(wanted), features, lines)


MAX_TEXT_CHARS = 1_000_000  # one sample's text; the tokenizer truncates to the encoder's limit anyway


def read_texts(name: str, root: Path) -> Texts | None:
    """A text modality's strings, from NAME.csv (id and one text column) or NAME/ID.txt; None when neither exists.
    An empty or whitespace-only text is a sample without this modality."""
    table, folder = root / f"{name}.csv", root / name
    texts: dict[str, str] = {}
    if table.exists():
        header, rows = id_rows(table)
        if len(header) != 2:
            raise DataError(f"{table}: a text modality has two columns, id and the text; found {', '.join(header)}")
        texts = {sample: row[1] for _, sample, row in rows if row[1].strip()}
        source = table
    elif folder.is_dir():
        for file in regular_files(sorted(folder.glob("*.txt"))):
            data = read_input(file, DataError, limit=4 * MAX_TEXT_CHARS)
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise DataError(f"{file}: not UTF-8 text") from exc
            if text.strip():  # an empty or blank file is a sample without this modality
                texts[file.stem] = text
        source = folder
    else:
        return None
    if not texts:
        raise DataError(f"{source}: text modality {name} has no samples")
    return Texts(name, source, texts)


KEEP_BYTES = 512 << 20  # bags a folder keeps in memory once read (more are read from disk each time they are used)
BAG_SUFFIXES = (".safetensors", ".h5")  # NAME/ID.h5: an HDF5 bag (legokit.data.hdf5, the hdf5 extra)


def bag_files(name: str, path: Path) -> dict[str, Path]:
    """A bag modality's sample files by id, `ID.safetensors` or `ID.h5` (never both for one id), each regular."""
    found = sorted((f, f.name[: -len(suffix)]) for suffix in BAG_SUFFIXES for f in path.glob(f"*{suffix}"))
    files: dict[str, Path] = {}
    for file, sample in found:
        refuse_special_input(file, DataError)
        if sample in files:
            raise DataError(f"{files[sample]} and {file}: two files for sample {sample!r}; keep one")
        files[sample] = file
    if not files:
        raise DataError(f"{path}: modality {name} has no ID.safetensors or ID.h5 files")
    return files


def read_bags(name: str, path: Path) -> Bags:
    files = bag_files(name, path)
    require_h5py(files.values())  # a folder of .h5 bags without the hdf5 extra: one line, before anything is read
    return Bags(name, path, files)


def modality_shape(root: str | os.PathLike[str], name: str) -> tuple[int | None, ...]:
    """The per-sample input shape of a modality as stored in a dataset folder: (features,) for NAME.csv,
    (None, features) for NAME/ (read off its first file)."""
    root = Path(root)
    table, folder = root / f"{name}.csv", root / name
    if table.exists():
        header, _ = read_csv_rows(table)
        return (len(header) - 1,)
    if folder.is_dir():
        first = next(iter(bag_files(name, folder).values()))
        if first.suffix == ".h5":  # its metadata only: no data read
            return (None, features_layout(first).shape[1])
        try:
            with open_input(first, DataError) as handle:  # the header only: no tensor byte is read
                return (None, sample_layout(first, handle.fileno(), (None, None)).shape[1])
        except OSError as exc:
            raise DataError(f"{first}: cannot read it ({exc.strerror or brief(exc)})") from exc
    raise DataError(f"{root}: no modality {name!r} (looked for {name}.csv and {name}/)")


class DatasetFolder:
    """The modalities of a dataset folder, read for the modalities a model takes (vector inputs from CSV, token
    inputs from folders). Ids are the union over modalities, sorted; `batch(ids)` builds padded, masked inputs.
    Bags are read when a batch needs them, and kept in memory up to KEEP_BYTES (512 MiB) in all."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        inputs: Mapping[str, InputSpec],
        columns: Mapping[str, Sequence[str]] | None = None,
    ):
        self.root = Path(root)
        columns = dict(columns or {})
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such directory")
        self.shapes = {name: spec if isinstance(spec, TextSpec) else tuple(spec) for name, spec in inputs.items()}
        self.modalities: dict[str, Table | Bags | Texts] = {}
        self._bags: dict[Path, torch.Tensor] = {}  # read once and kept, up to KEEP_BYTES in all
        self._kept = 0
        self._tokens: dict[Path, int] = {}
        self._dtypes: dict[Path, torch.dtype] = {}  # each bag's stored dtype, from its header
        self._tokenizers: dict[str, TextEncoder] = {}
        self._ids: dict[str, dict[str, list[int]]] = {}
        self._holding: dict[str, frozenset[str]] = {}
        for name, shape in self.shapes.items():
            table, folder = self.root / f"{name}.csv", self.root / name
            if isinstance(shape, TextSpec):
                texts = read_texts(name, self.root)
                if texts is not None:
                    self.modalities[name] = texts
                    self._tokenizers[name] = TextEncoder(shape)
            elif len(shape) == 1 and table.exists():
                self.modalities[name] = self._checked_table(read_table(name, table, columns.get(name)), shape[0])
            elif len(shape) >= 2 and folder.is_dir():
                self.modalities[name] = read_bags(name, folder)
        if not self.modalities:
            wanted = ", ".join(
                f"{n}.csv or {n}/ID.txt" if isinstance(s, TextSpec) else f"{n}.csv" if len(s) == 1 else f"{n}/"
                for n, s in self.shapes.items()
            )
            raise DataError(f"{self.root}: holds none of the model's modalities (looked for {wanted})")
        ids: set[str] = set()
        for name in self.modalities:
            ids.update(self.ids_of(name))
        self.ids = sorted(ids)

    @staticmethod
    def _checked_table(table: Table, width: int | None) -> Table:
        if width is not None and len(table.columns) != width:
            raise DataError(f"{table.path}: {len(table.columns)} feature columns, but the model takes {width}")
        return table

    def _bag_batch(
        self, bags: Bags, ids: Sequence[str], subsample: Subsample | None = None, narrow: bool = False
    ) -> ModalityBatch:
        shape = self.shapes[bags.name]
        assert isinstance(shape, tuple)  # bags hold tensors; text modalities are read as `Texts`
        if shape[0] is not None:  # fixed-shape samples (an image): stacked, a missing one is zeros
            loaded = [self._bag(bags.files[i], shape) if i in bags.files else None for i in ids]
            fixed = cast("tuple[int, ...]", shape)  # an open dimension past the first is not supported here
            xs = torch.stack([x if x is not None else torch.zeros(fixed) for x in loaded])
            return ModalityBatch(xs, None, torch.tensor([x is not None for x in loaded]))
        # the padded size is known from the files' headers: a batch over the cap is refused before any is read
        lengths = {i: self.tokens(bags.files[i], shape) for i in ids if i in bags.files}
        drawn = {i: subsample.rows(i, n) if subsample is not None else None for i, n in lengths.items()}
        lengths = {i: n if drawn[i] is None else len(cast(torch.Tensor, drawn[i])) for i, n in lengths.items()}
        longest = max(lengths.values(), default=1)
        token = cast("tuple[int, ...]", shape[1:])  # a bag of tokens: only their number may be open here
        padded = len(ids) * longest * math.prod(token) * 4
        if padded > MAX_BATCH_BYTES:
            sample = next(i for i, n in lengths.items() if n == longest)
            raise DataError(
                f"{bags.files[sample]}: {longest:,} tokens; a batch of {len(ids)} padded to it would take "
                f"{padded / 2**30:.1f} GiB (cap {MAX_BATCH_BYTES / 2**30:.0f} GiB): lower --batch-size, or "
                "split the sample"
            )
        stored = {self._dtypes[bags.files[i]] for i in lengths}
        dtype = stored.pop() if narrow and len(stored) == 1 and stored <= set(NARROW) else torch.float32
        xs = torch.zeros(len(ids), longest, *token, dtype=dtype)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool)
        for row, sample in enumerate(ids):
            if sample in lengths:
                x = self._bag(bags.files[sample], shape, drawn[sample], narrow=dtype != torch.float32)
                xs[row, : x.shape[0]] = x
                mask[row, : x.shape[0]] = True
        return ModalityBatch(xs, mask, mask.any(dim=1))

    def tokens(self, path: Path, shape: Sequence[int | None]) -> int:
        """A bag's number of tokens, from its header or metadata alone (remembered with its dtype, per file)."""
        if path not in self._tokens:
            if path.suffix == ".h5":
                layout = features_layout(path, shape)
                self._tokens[path], self._dtypes[path] = layout.shape[0], layout.torch_dtype
            else:
                try:
                    with open_input(path, DataError) as handle:
                        found = sample_layout(path, handle.fileno(), shape)
                        self._tokens[path], self._dtypes[path] = found.shape[0], found.dtype
                except OSError as exc:
                    raise DataError(f"{path}: cannot read it ({exc.strerror or brief(exc)})") from exc
        return self._tokens[path]

    def _token_ids(self, texts: Texts, ids: Sequence[str]) -> list[list[int] | None]:
        """Each sample's token ids (None where it has no text), tokenized once per folder and kept: every epoch
        reads the same texts."""
        known = self._ids.setdefault(texts.name, {})
        new = [i for i in dict.fromkeys(ids) if i not in known and texts.texts.get(i)]
        if new:
            known.update(zip(new, self._tokenizers[texts.name].token_ids([texts.texts[i] for i in new])))
        return [known.get(i) for i in ids]

    def _bag(
        self, path: Path, shape: Sequence[int | None], rows: torch.Tensor | None = None, narrow: bool = False
    ) -> torch.Tensor:
        """A bag (or its sorted `rows`: only those are read, unless the bag is kept), float32 or, when `narrow`, as
        stored if half precision; whole bags are kept in memory (as stored) while KEEP_BYTES allows."""
        x = self._bags.get(path)
        if x is None:
            x = load_bag(path, shape, rows, narrow=True)
            if len(shape) == 2 and shape[1] is not None and x.shape[1] != shape[1]:
                raise DataError(f"{path}: 'x' has {x.shape[1]} features, the model takes {shape[1]}")
            size = x.numel() * x.element_size()
            if rows is None and self._kept + size <= KEEP_BYTES:  # small folders stay in memory; larger ones are
                self._bags[path] = x  # read again each time
                self._kept += size
        elif rows is not None:
            x = x[rows]
        return x if narrow or x.dtype == torch.float32 else x.float()

    def files(self) -> list[Path]:
        """Every file this folder reads (tables, sample files, texts): what no output may replace."""
        found = [self.root / name for name in ("labels.csv", "splits.csv") if (self.root / name).is_file()]
        for modality in self.modalities.values():
            if isinstance(modality, Bags):
                found.extend(modality.files.values())
            elif modality.path.is_dir():
                found.extend(sorted(modality.path.glob("*.txt")))
            else:
                found.append(modality.path)
        return found

    def ids_of(self, name: str) -> frozenset[str]:
        """The samples that have modality `name` (made once per modality: callers test membership per sample)."""
        if name not in self._holding:
            modality = self.modalities.get(name)
            if modality is None:
                return frozenset()
            found = (
                modality.texts
                if isinstance(modality, Texts)
                else modality.rows
                if isinstance(modality, Table)
                else modality.files
            )
            self._holding[name] = frozenset(found)
        return self._holding[name]

    def check_known(self, known: set[str], labels: Path) -> None:
        """Every sample of every modality must be in labels.csv; else a DataError naming the file (and row)."""
        for modality in self.modalities.values():
            if isinstance(modality, Table):
                for sample, row in (modality.lines or {}).items():
                    if sample not in known:
                        raise DataError(f"{modality.path}: row {row}, column id: {sample!r} is not in {labels}")
            else:
                for sample in self.ids_of(modality.name):
                    if sample not in known:
                        raise DataError(f"{modality.path}: id {sample!r} is not in {labels}")

    def _token_bags(self, modalities: Sequence[str] | None) -> list[tuple[Bags, tuple[int | None, ...]]]:
        """The bag modalities of tokens (not fixed-shape samples such as images) among `modalities` (default all),
        with their per-sample shapes."""
        wanted = self.modalities if modalities is None else modalities
        return [
            (modality, shape)
            for name, modality in self.modalities.items()
            if isinstance(modality, Bags)
            and isinstance(shape := self.shapes[name], tuple)
            and shape[0] is None
            and name in wanted
        ]

    def lengths(self, ids: Sequence[str], modalities: Sequence[str] | None = None) -> list[int]:
        """Each sample's longest bag in tokens over its bag modalities (of `modalities`), from the files' headers;
        1 for a sample of tables and texts only."""
        bags = self._token_bags(modalities)
        return [max([self.tokens(m.files[i], shape) for m, shape in bags if i in m.files] + [1]) for i in ids]

    def reads_bags(self, modalities: Sequence[str]) -> bool:
        """Whether any of these modalities is a bag of tokens (sample files of a variable length)."""
        return bool(self._token_bags(modalities))

    def token_budget(self, modalities: Sequence[str] | None = None) -> int:
        """Padded tokens one batch may hold: an eighth of MAX_BATCH_BYTES for the widest bag modality's float32
        tokens (2^15 tokens of 1024 features: a batch's copies on their way through the block stay well within the
        cap); a longer bag is a batch of its own."""
        widths = [math.prod(d or 1 for d in shape[1:]) for _, shape in self._token_bags(modalities)]
        return max(1, MAX_BATCH_BYTES // 8 // (4 * max(widths, default=1)))

    def batch(
        self,
        ids: Sequence[str],
        modalities: Sequence[str] | None = None,
        subsample: Subsample | None = None,
        narrow: bool = False,
    ) -> dict[str, ModalityBatch]:
        """Inputs for these samples (of every modality, or of `modalities`); a modality a sample lacks is zeros with
        `present` False; `subsample` keeps at most so many tokens of each bag (training steps: only those rows are
        read); `narrow` keeps bags stored in half precision half (a loader's batches; `ModalityBatch.widened`)."""
        batches: dict[str, ModalityBatch] = {}
        for name, modality in self.modalities.items():
            if modalities is not None and name not in modalities:
                continue
            if isinstance(modality, Table):
                width = len(modality.columns)
                x = torch.stack([modality.rows.get(i, torch.zeros(width)) for i in ids])
                present = torch.tensor([i in modality.rows for i in ids])
                batches[name] = ModalityBatch(x, None, present)
            elif isinstance(modality, Texts):
                tokens, mask = padded(self._token_ids(modality, ids))
                batches[name] = ModalityBatch(tokens, mask, mask.any(dim=1))
            else:
                batches[name] = self._bag_batch(modality, ids, subsample, narrow)
        return batches
