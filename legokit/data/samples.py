"""One sample file of a bag modality (`NAME/ID.safetensors` holding `x`, or `NAME/ID.h5`), judged from its header
before any byte of data is read, then read alone through the same descriptor: whole, or only the rows a training
step drew (`rows`, read in spans: `legokit.data.stream.row_spans`). Half-precision bags may stay half (`narrow`)."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from legokit.data.hdf5 import read_features
from legokit.data.sizes import MAX_SAMPLE_BYTES, DataError
from legokit.data.sizes import gib as _gib
from legokit.data.sizes import shown as _shown
from legokit.data.stream import row_spans
from legokit.errors import brief, quoted, quoted_list
from legokit.io.inputs import open_input
from legokit.io.jsoncap import capped_json

# what a sample's `x` may hold (safetensors dtype names): real numbers, read as float32
SAMPLE_DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
MAX_SAMPLE_HEADER = 1 << 20  # a sample file's JSON header: `x` and its metadata take a few hundred bytes


@dataclass(frozen=True)
class SampleLayout:
    """Where a sample file's `x` lies, from its header alone: dtype, shape and absolute byte range."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _sample_header(path: Path, fd: int) -> tuple[dict[str, Any], int, int]:
    """A sample file's safetensors header (length capped, JSON through the capped reader) without its metadata,
    where its data begin, and the file's size (`os.fstat`: what it really holds, however sparse)."""
    size = os.fstat(fd).st_size
    start = os.pread(fd, 8, 0)
    if size < 8 or len(start) != 8:
        raise DataError(f"{path}: not a safetensors file (only {size} bytes)")
    (length,) = struct.unpack("<Q", start)
    if length > MAX_SAMPLE_HEADER:
        raise DataError(f"{path}: not a sample file (a header of {length:,} bytes; cap {MAX_SAMPLE_HEADER:,})")
    text = os.pread(fd, length, 8) if 8 + length <= size else b""
    if len(text) != length:
        raise DataError(f"{path}: truncated (a header of {length:,} bytes in a file of {size:,})")
    header = capped_json(text, lambda reason: DataError(f"{path}: not a readable safetensors file (header {reason})"))
    if not isinstance(header, dict):
        raise DataError(f"{path}: not a readable safetensors file (its header is no JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DataError(f"{path}: not a readable safetensors file (metadata must map strings to strings)")
    return header, 8 + length, size


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def sample_layout(path: Path, fd: int, shape: Sequence[int | None]) -> SampleLayout:
    """Where `x` lies, checked from the header alone: the only tensor, a real dtype, the per-sample `shape` (None: any
    length), within MAX_SAMPLE_BYTES, its range exactly the file's data (`os.fstat`); else a one-line DataError."""
    header, base, size = _sample_header(path, fd)
    entry = header.pop("x", None)
    if entry is None:
        raise DataError(
            f"{path}: no tensor named 'x'" + (f" (it holds {quoted_list(list(header), 3)})" if header else "")
        )
    if header:
        raise DataError(f"{path}: holds {quoted_list(list(header), 3)} beside 'x'; a sample file holds 'x' only")
    dims = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not isinstance(dims, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise DataError(f"{path}: not a readable safetensors file ('x' needs a dtype, a shape and data_offsets)")
    if not all(_natural(d) for d in (*dims, *offsets)):
        raise DataError(f"{path}: not a readable safetensors file ('x' has a shape or offset that is no count)")
    shown = ", ".join("tokens" if d is None else str(d) for d in shape)
    if len(dims) != len(shape) or 0 in dims or any(d is not None and d != n for d, n in zip(shape, dims)):
        raise DataError(f"{path}: 'x' must have shape ({shown}) with at least one token, got {_shown(dims)}")
    dtype = SAMPLE_DTYPES.get(entry["dtype"]) if isinstance(entry.get("dtype"), str) else None
    if dtype is None:
        raise DataError(f"{path}: 'x' has dtype {quoted(str(entry.get('dtype')), 20)}; expected real numbers")
    count = math.prod(dims)
    nbytes, data = count * dtype.itemsize, size - base
    if count * max(dtype.itemsize, 4) > MAX_SAMPLE_BYTES:  # as stored, and as the float32 it is read as
        raise DataError(
            f"{path}: 'x' of shape {_shown(dims)} takes {_gib(count * max(dtype.itemsize, 4))} as stored or read "
            f"(cap {_gib(MAX_SAMPLE_BYTES)}); split the sample"
        )
    begin, end = offsets
    if begin != 0 or end != nbytes or data != nbytes:
        raise DataError(
            f"{path}: the header places 'x' at data bytes {str(begin)[:24]}..{str(end)[:24]}, but its shape and "
            f"dtype take {nbytes:,} bytes and the file holds {data:,}"
        )
    return SampleLayout(dtype, tuple(dims), base, nbytes)


def _read_range(path: Path, fd: int, start: int, nbytes: int) -> torch.Tensor:
    """Exactly `nbytes` bytes from `start`, read into a tensor allocated at that size (no whole-file read, no map)."""
    data = torch.empty(nbytes, dtype=torch.uint8)
    view = data.numpy().data
    done = 0
    os.lseek(fd, start, os.SEEK_SET)
    while done < nbytes:
        got = os.readv(fd, [view[done:]])
        if not got:
            raise DataError(f"{path}: truncated while read ({start + done:,} of {start + nbytes:,} bytes)")
        done += got
    return data


def _read_rows(path: Path, fd: int, layout: SampleLayout, rows: torch.Tensor) -> torch.Tensor:
    """The sorted `rows` of `x` (its first dimension), read span by span (`row_spans`) into a tensor of their size."""
    if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
        raise DataError(f"{path}: the rows to read must be sorted")
    if len(rows) and not 0 <= int(rows[0]) <= int(rows[-1]) < layout.shape[0]:
        raise DataError(f"{path}: rows {int(rows[0])}..{int(rows[-1])} asked of {layout.shape[0]:,} tokens")
    width = math.prod(layout.shape[1:])
    row_bytes = width * layout.dtype.itemsize
    out = torch.empty(len(rows), width, dtype=layout.dtype)
    for first, end, begin, stop in row_spans(rows, row_bytes):
        span = _read_range(path, fd, layout.start + first * row_bytes, (end - first) * row_bytes)
        out[begin:stop] = span.view(layout.dtype).view(end - first, width)[rows[begin:stop] - first]
    return out.view(len(rows), *layout.shape[1:])


NARROW = (torch.float16, torch.bfloat16)  # what `narrow` keeps as stored: half the bytes of float32 in a loader


def load_bag(
    path: Path, shape: Sequence[int | None] = (None, None), rows: torch.Tensor | None = None, narrow: bool = False
) -> torch.Tensor:
    """The tensor `x` of one sample's file (or only its sorted `rows`) as float32, or as stored when `narrow` and it
    is float16 or bfloat16; checked from the header first (`sample_layout`), then read through the same descriptor,
    and checked for NaN and the float32 range. An `ID.h5` bag's `features` is checked and read the same way
    (`legokit.data.hdf5.read_features`)."""
    name = "features" if path.suffix == ".h5" else "x"
    if name == "features":
        x = read_features(path, shape, rows)
    else:
        try:
            with open_input(path, DataError) as handle:
                layout = sample_layout(path, handle.fileno(), shape)
                if rows is not None:
                    x = _read_rows(path, handle.fileno(), layout, rows)
                else:
                    data = _read_range(path, handle.fileno(), layout.start, layout.nbytes)
                    x = data.view(layout.dtype).reshape(layout.shape)
        except OSError as exc:
            raise DataError(f"{path}: cannot read it ({exc.strerror or brief(exc)})") from exc
    wide = x.dtype == torch.float64  # only a float64 can be finite and still out of float32's range
    if (wide or (narrow and x.dtype in NARROW)) and not torch.isfinite(x).all():
        raise DataError(f"{path}: {name!r} holds NaN or infinite values")
    if narrow and x.dtype in NARROW:
        return x
    x = x.float()  # one pass: a narrower float's NaN or infinity stays one in float32, an integer is always finite
    if not torch.isfinite(x).all():
        problem = "values out of the float32 range (|x| > 3.4e38)" if wide else "NaN or infinite values"
        raise DataError(f"{path}: {name!r} holds {problem}")
    return x
