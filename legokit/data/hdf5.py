"""HDF5 bags: `NAME/ID.h5` with a dataset `features` (tokens, width), and optionally `coords`, as CLAM and TRIDENT
write them; read through h5py, an optional extra (`pip install 'legokit[hdf5]'`).

A bag gets the checks a safetensors sample gets (`legokit.data.folder.sample_layout`), from the file's metadata
before any of its data is read: the root holds `features` and optionally `coords` only, each a plain hard link to a
dataset (soft and external links, groups and other objects refused, never followed); `features` is stored in the
file itself (virtual datasets and external storage refused), without filters (a compressed chunk can expand without
bound: compression bombs), every chunk written (no region read as a fill value); its type is real numbers and its
shape the block's per-sample shape, within the same size cap. Only then is `features` read, into an array of exactly
that shape; `coords` and attributes are never read. The file is opened through `open_input`'s descriptor (h5py's
file-object driver), so a name swapped for a pipe cannot block the open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legokit.data.sizes import MAX_SAMPLE_BYTES, DataError, gib
from legokit.data.sizes import shown as shown_dims
from legokit.data.stream import row_spans
from legokit.errors import brief, quoted, quoted_list
from legokit.io.inputs import open_input

SUFFIX = ".h5"
FEATURES, COORDS = "features", "coords"
MISSING_H5PY = "reading HDF5 bags (.h5) needs h5py: pip install 'legokit[hdf5]'"
MAX_CHUNKS = 1 << 20  # chunks of `features`: CLAM writes one row per chunk, so 1M patches; each chunk costs a lookup
FILTER_NAMES = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
# what `features` may hold (HDF5 class, size in bytes, signed) and the numpy dtype it is read as: the safetensors
# sample dtypes that HDF5 has (float16/32/64, int8 to int64, uint8)
DTYPES: dict[tuple[str, int, bool], np.dtype[Any]] = {
    **{("float", size, True): np.dtype(f"f{size}") for size in (2, 4, 8)},
    **{("int", size, True): np.dtype(f"i{size}") for size in (1, 2, 4, 8)},
    ("int", 1, False): np.dtype("u1"),
}


# HDF5 type classes (H5T_class_t), as the refusal names them
TYPE_CLASSES = {0: "int", 1: "float", 2: "a time type", 3: "strings", 4: "a bitfield", 5: "opaque bytes"}
TYPE_CLASSES |= {6: "a compound type", 7: "references", 8: "an enum", 9: "variable-length data", 10: "an array type"}
TYPE_CLASSES |= {11: "complex numbers"}


@dataclass(frozen=True)
class FeaturesLayout:
    """What `features` holds, from the file's metadata alone: the dtype it is read as and its shape."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, self.dtype)).dtype


def h5py_module(path: Path) -> Any:
    """The h5py module; a one-line DataError naming `path` when the extra is not installed."""
    try:
        import h5py
    except ImportError as exc:
        raise DataError(f"{path}: {MISSING_H5PY}") from exc
    return h5py


def require_h5py(files: Iterable[Path]) -> None:
    """Refuse, before anything is read, a modality with `.h5` bags when h5py is missing."""
    first = next((file for file in files if file.suffix == SUFFIX), None)
    if first is not None:
        h5py_module(first)


def _root_dataset(path: Path, h5py: Any, handle: Any) -> Any:
    """The `features` dataset of an open file, after the root's links were checked without following any."""
    names = []
    for name in handle:  # stops at the first name that is neither features nor coords
        if name not in (FEATURES, COORDS):
            raise DataError(
                f"{path}: holds {quoted(name)} beside 'features'; an HDF5 bag holds 'features' and optionally "
                "'coords' only (copy those into a new file, e.g. with h5copy)"
            )
        names.append(name)
    if FEATURES not in names:
        raise DataError(f"{path}: no dataset named 'features'" + (f" (it holds {quoted_list(names)})" if names else ""))
    for name in names:
        link = handle.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{path}: {name!r} is an external link (to another file); legokit never follows one")
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{path}: {name!r} is a soft link (to {quoted(link.path)}); it must be the dataset")
        if not isinstance(link, h5py.HardLink):
            raise DataError(f"{path}: {name!r} is no plain link to an object of the file; legokit follows none")
        kind = handle.get(name, getclass=True)
        if kind is not h5py.Dataset:
            raise DataError(f"{path}: {name!r} is a {getattr(kind, '__name__', 'object')}, not a dataset")
    return handle[FEATURES]


def _storage(path: Path, h5py: Any, dataset: Any) -> None:
    """Refuse `features` unless its data lie in this file, unfiltered (read before its shape: a virtual dataset's
    extent may open the files it names)."""
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise DataError(f"{path}: 'features' is a virtual dataset (it maps other files); legokit reads none")
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise DataError(f"{path}: 'features' has an unknown storage layout ({layout})")
    if plist.get_external_count():
        raise DataError(f"{path}: 'features' keeps its data in external files; legokit never reads them")
    codes = [plist.get_filter(index)[0] for index in range(min(plist.get_nfilters(), 8))]
    if codes:
        shown = ", ".join(FILTER_NAMES.get(code, f"filter {code}") for code in codes)
        raise DataError(
            f"{path}: 'features' is stored through {shown}; legokit reads HDF5 bags stored without filters only "
            "(a compressed chunk can expand without bound): rewrite it with `h5repack -f NONE IN OUT`"
        )


def _layout(path: Path, h5py: Any, dataset: Any, shape: Sequence[int | None]) -> FeaturesLayout:
    """`features`' dtype and shape, checked as a safetensors sample's `x` is, and its storage fully written."""
    kind = dataset.id.get_type()
    cls = TYPE_CLASSES.get(kind.get_class(), "an unknown type")
    signed = cls != "int" or kind.get_sign() != h5py.h5t.SGN_NONE
    dtype = DTYPES.get((cls, kind.get_size(), signed))
    if dtype is None:
        number = {"int": "integers", "float": "floats"}.get(cls)
        held = f"{'' if signed else 'unsigned '}{number} of {kind.get_size()} bytes" if number else cls
        raise DataError(
            f"{path}: 'features' holds {held}; expected real numbers (float16, float32, float64, int8 to int64, uint8)"
        )
    space = dataset.id.get_space()
    dims = space.shape if space.get_simple_extent_type() == h5py.h5s.SIMPLE else ()
    shown = ", ".join("tokens" if d is None else str(d) for d in shape)
    if len(dims) != len(shape) or 0 in dims or any(d is not None and d != n for d, n in zip(shape, dims)):
        raise DataError(f"{path}: 'features' must have shape ({shown}) with at least one token, got {shown_dims(dims)}")
    count = math.prod(dims)
    if count * max(kind.get_size(), 4) > MAX_SAMPLE_BYTES:  # as stored, and as the float32 it is read as
        taken = gib(count * max(kind.get_size(), 4))
        raise DataError(
            f"{path}: 'features' of shape {shown_dims(dims)} takes {taken} as stored or read "
            f"(cap {gib(MAX_SAMPLE_BYTES)}); split the sample"
        )
    _written(path, h5py, dataset, dims, count * kind.get_size())
    return FeaturesLayout(dtype, tuple(dims))


def _written(path: Path, h5py: Any, dataset: Any, dims: Sequence[int], nbytes: int) -> None:
    """Refuse `features` unless all its storage is written: an unwritten region reads as the fill value, not data."""
    chunks = dataset.id.get_create_plist().get_chunk() if dataset.chunks is not None else None
    if chunks is None:
        stored = dataset.id.get_storage_size()
        if stored != nbytes:
            raise DataError(
                f"{path}: 'features' takes {nbytes:,} bytes but {stored:,} are stored (unwritten rows would read as "
                "the fill value)"
            )
        return
    needed = math.prod(-(-n // c) for n, c in zip(dims, chunks))
    if needed > MAX_CHUNKS:
        raise DataError(
            f"{path}: 'features' is stored in {needed:,} chunks (cap {MAX_CHUNKS:,}); rewrite it with larger chunks "
            "or contiguous: `h5repack -l CONTI IN OUT`"
        )
    written = dataset.id.get_num_chunks()
    if written < needed:
        raise DataError(
            f"{path}: 'features' has {written:,} of its {needed:,} chunks written (unwritten rows would read as the "
            "fill value)"
        )


H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, NotImplementedError)  # what h5py raises


@contextmanager
def _features(path: Path, shape: Sequence[int | None]) -> Iterator[tuple[Any, FeaturesLayout]]:
    """The checked `features` dataset of a bag and its layout, open through one regular-file descriptor; any
    error of h5py or HDF5 (a truncated or foreign file) is a one-line DataError naming the file."""
    h5py = h5py_module(path)
    try:
        with open_input(path, DataError) as raw, h5py.File(raw, "r") as handle:
            dataset = _root_dataset(path, h5py, handle)
            _storage(path, h5py, dataset)
            yield dataset, _layout(path, h5py, dataset, shape)
    except DataError:
        raise
    except H5_ERRORS as exc:
        raise DataError(f"{path}: not a readable HDF5 bag ({brief(exc, 200)})") from exc


def features_layout(path: Path, shape: Sequence[int | None] = (None, None)) -> FeaturesLayout:
    """`features`' dtype and shape from the file's metadata alone (no data read): for a modality's shape."""
    with _features(path, shape) as (_, layout):
        return layout


def _read(path: Path, dataset: Any, layout: FeaturesLayout, rows: torch.Tensor | None) -> np.ndarray[Any, Any]:
    """`features` of `path` (or only its sorted `rows`, span by span: `row_spans`) into an array of exactly that
    shape and the checked dtype (HDF5 converts its byte order): the one read of a bag's data."""
    if rows is None:
        out = np.empty(layout.shape, layout.dtype)
        dataset.read_direct(out)
        return out
    out = np.empty((len(rows), *layout.shape[1:]), layout.dtype)
    row_bytes = math.prod(layout.shape[1:]) * layout.dtype.itemsize
    for first, end, begin, stop in row_spans(rows, row_bytes):
        span = np.empty((end - first, *layout.shape[1:]), layout.dtype)
        dataset.read_direct(span, np.s_[first:end])
        out[begin:stop] = span[(rows[begin:stop] - first).numpy()]
    return out


def read_features(
    path: Path, shape: Sequence[int | None] = (None, None), rows: torch.Tensor | None = None
) -> torch.Tensor:
    """`features` of one bag (or only its sorted `rows`), checked first (`_features`), then read alone (`_read`);
    returned in its dtype (one of the safetensors sample dtypes), as `load_bag` takes it."""
    with _features(path, shape) as (dataset, layout):
        if rows is not None and len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
            raise DataError(f"{path}: the rows to read must be sorted")
        if rows is not None and len(rows) and not 0 <= int(rows[0]) <= int(rows[-1]) < layout.shape[0]:
            raise DataError(f"{path}: rows {int(rows[0])}..{int(rows[-1])} asked of {layout.shape[0]:,} tokens")
        return torch.from_numpy(_read(path, dataset, layout, rows))
