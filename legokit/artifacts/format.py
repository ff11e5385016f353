"""The `.st` artifact format: a safetensors file whose header names legokit, a format version, a kind and a config.

This module knows the file format only (header keys, versions, checksums; writes go through `legokit.io.atomic`); each
model kind turns itself into a config and tensors and back. Header metadata is str -> str, with JSON nested as strings.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from legokit.artifacts.allowlist import capped_json
from legokit.errors import ArtifactError
from legokit.io.atomic import atomic_output, refuse_inputs, write_atomic
from legokit.io.inputs import file_sha256, open_input
from legokit.version import __version__

FORMAT_TAG = "legokit-artifact"
FORMAT_VERSION = 2  # 2: the checksum also covers kind, config and provenance
KEY_FORMAT = "legokit.format"
KEY_VERSION = "legokit.format_version"
KEY_KIND = "legokit.kind"
KEY_CONFIG = "legokit.config"
KEY_PROVENANCE = "legokit.provenance"
KEY_LIBRARY = "legokit.library_version"
KEY_CHECKSUM = "legokit.tensors_sha256"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


@dataclass(frozen=True)
class Artifact:
    """A read artifact: its kind, config, provenance, tensors (on CPU) and the sha256 of the whole file. A summary
    (`read_artifact_summary`) holds large tensors as meta placeholders; `digests` then gives the sha256 of each
    placeholder byte tensor's stored bytes (an encoder program), hashed from the file."""

    path: Path
    kind: str
    version: int
    config: dict[str, Any]
    provenance: dict[str, Any]
    library_version: str
    tensors: dict[str, torch.Tensor]
    sha256: str
    size: int
    digests: dict[str, str] = field(default_factory=dict)


DTYPES: Mapping[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
TORCH_DTYPES: Mapping[str, torch.dtype] = {name: dtype for dtype, name in DTYPES.items()}
ELEMENT_SIZE: Mapping[str, int] = {name: torch.empty(0, dtype=dtype).element_size() for dtype, name in DTYPES.items()}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a tensor, as safetensors stores them."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def digest_entries(entries: Iterable[tuple[str, str, Sequence[int], str]]) -> str:
    """sha256 over (name, safetensors dtype, shape, sha256 of the bytes) of every tensor, in name order.

    Hashing each tensor's bytes once and composing the results lets a streamed merge check its inputs and seal its
    output without reading any byte twice.
    """
    digest = hashlib.sha256()
    for name, dtype, shape, data_sha in sorted(entries):
        digest.update(f"{name}|{dtype}|{list(shape)}|{data_sha}\n".encode())
    return digest.hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The checksum of a set of in-memory tensors: catches bit rot in an artifact's data at load."""
    return digest_entries(
        (name, DTYPES[t.dtype], tuple(t.shape), hashlib.sha256(tensor_bytes(t)).hexdigest())
        for name, t in tensors.items()
    )


def sealed_checksum(version: int, tensors_sha: str, kind: str, config: str, provenance: str) -> str:
    """The header's checksum: from format 2 on, over the tensors' digest and the kind, config and provenance
    strings, so that an edit to any of them is caught at load; format 1 covered the tensors only."""
    if version < 2:
        return tensors_sha
    digest = hashlib.sha256()
    for part in (tensors_sha, kind, config, provenance):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()


def seal(metadata: Mapping[str, str], tensors_sha: str) -> str:
    """The checksum a header with this metadata must carry for tensors of this digest."""
    version = int(metadata.get(KEY_VERSION, FORMAT_VERSION))
    return sealed_checksum(
        version, tensors_sha, metadata.get(KEY_KIND, ""), metadata.get(KEY_CONFIG, ""), metadata.get(KEY_PROVENANCE, "")
    )


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that share no memory, as safetensors requires."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def _header(
    kind: str, config: Mapping[str, Any], provenance: Mapping[str, Any] | None, checksum: str
) -> dict[str, str]:
    """The header metadata of an artifact (str -> str, JSON nested as strings)."""

    return {
        "format": "pt",
        KEY_FORMAT: FORMAT_TAG,
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_KIND: kind,
        KEY_CONFIG: json.dumps(config, sort_keys=True),
        KEY_PROVENANCE: json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        KEY_LIBRARY: __version__,
        KEY_CHECKSUM: checksum,
    }


def write_artifact(
    path: str | os.PathLike[str],
    kind: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Write an artifact atomically; refuses to replace any of `inputs` (the files it was made from)."""
    path = Path(path)
    inputs = list(inputs)
    refuse_inputs(path, inputs)
    prepared = _prepare(tensors)
    for name, tensor in prepared.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{path}: tensor '{name}' holds NaN or infinite values; refusing to write it")
    metadata = _header(kind, config, provenance, _PLACEHOLDER)
    metadata[KEY_CHECKSUM] = seal(metadata, tensors_digest(prepared))
    write_atomic(path, safetensors_bytes(prepared, metadata=metadata), inputs)
    return path


def _check_container(path: Path) -> None:
    if not path.exists():
        raise ArtifactError(f"{path}: no such file")
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file")
    if not path.is_file():
        raise ArtifactError(f"{path}: not a regular file (a pipe or a device)")


def _json_text(path: Path, text: str | bytes, what: str) -> Any:
    """JSON from a header, with the nesting capped; anything else is a one-line ArtifactError."""
    return capped_json(text, lambda reason: ArtifactError(f"{path}: corrupt header: {what} {reason}"))


@dataclass(frozen=True)
class Header:
    """A safetensors header read from one open file: metadata, each tensor's place, and the file's size."""

    metadata: dict[str, str]
    layout: dict[str, Stored]
    size: int


def _parse_header(path: Path, read: Any, size: int) -> Header:
    """Parse and check a safetensors header with `read(length, offset)`: sizes, offsets inside the file, dtypes and
    byte lengths that match the shapes, str -> str metadata."""
    if size < 8:
        raise ArtifactError(f"{path}: not a safetensors file (only {size} bytes)")
    (header_len,) = struct.unpack("<Q", read(8, 0))
    if header_len > MAX_HEADER or read(1, 8) != b"{":
        raise ArtifactError(f"{path}: not a safetensors file (no JSON header at the start)")
    if 8 + header_len > size:
        raise ArtifactError(f"{path}: truncated file (header of {header_len} bytes, file of {size})")
    header = _json_text(path, read(header_len, 8), "the safetensors header")
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ArtifactError(f"{path}: corrupt safetensors header (metadata must map strings to strings)")
    base, layout, name = 8 + header_len, {}, ""
    try:
        for name, entry in header.items():
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(v) for v in entry["data_offsets"])
            if dtype not in ELEMENT_SIZE or any(d < 0 for d in shape):
                raise ValueError("dtype or shape")
            if not 0 <= start <= end or end - start != math.prod(shape) * ELEMENT_SIZE[dtype]:
                raise ValueError("offsets")
            if base + end > size:
                raise ArtifactError(
                    f"{path}: truncated file (tensor {name!r} ends at byte {base + end:,}, the file has {size:,})"
                )
            layout[name] = Stored(dtype, shape, base + start, base + end)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ArtifactError(f"{path}: corrupt safetensors header (tensor {name!r})") from exc
    return Header(metadata, layout, size)


def header_of_bytes(path: str | os.PathLike[str], data: bytes) -> Header:
    """The header of a safetensors file already read into memory (`path` names it in errors)."""
    return _parse_header(Path(path), lambda n, at: data[at : at + n], len(data))


def read_header(path: str | os.PathLike[str]) -> Header:
    """The header of a safetensors file, read through one file descriptor (no tensor data is read)."""
    path = Path(path)
    _check_container(path)
    with open_input(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        return _parse_header(path, lambda n, at: os.pread(handle.fileno(), n, at), size)


def _legokit_metadata(path: Path, metadata: Mapping[str, str]) -> dict[str, str]:
    """Check the legokit tag and format version of a header's metadata."""
    if metadata.get(KEY_FORMAT) != FORMAT_TAG:
        raise ArtifactError(f"{path}: a safetensors file, but not a legokit artifact (no '{KEY_FORMAT}' tag)")
    try:
        version = int(metadata.get(KEY_VERSION, ""))
    except ValueError as exc:
        raise ArtifactError(f"{path}: corrupt header: format version {metadata.get(KEY_VERSION)!r}") from exc
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: written in legokit format version {version}; this legokit reads up to {FORMAT_VERSION} "
            "(upgrade legokit)"
        )
    if version < 1:
        raise ArtifactError(f"{path}: corrupt header: format version {version}")
    return dict(metadata)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of a legokit artifact, validated (tag, version); tensors are not read."""
    return _legokit_metadata(Path(path), read_header(path).metadata)


def _json_field(path: Path, metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    value = _json_text(path, metadata.get(key, "{}"), key)
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: corrupt header: {key} is not a JSON object")
    return value


def read_artifact(path: str | os.PathLike[str], expect_kind: str | None = None) -> Artifact:
    """Read and verify a whole artifact through one file descriptor, so that a file replaced meanwhile cannot mix
    two versions: header, kind, tensors, their checksum (which covers config and provenance too), and finite
    floating-point values."""
    path = Path(path)
    _check_container(path)
    with open_input(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise ArtifactError(f"{path}: not a safetensors file (only {size} bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            header = _parse_header(path, lambda n, at: view[at : at + n], size)
            metadata = _legokit_metadata(path, header.metadata)
            kind = metadata.get(KEY_KIND, "")
            if expect_kind is not None and kind != expect_kind:
                raise ArtifactError(f"{path}: is a legokit artifact of kind {kind!r}, expected a {expect_kind}")
            config = _json_field(path, metadata, KEY_CONFIG)
            provenance = _json_field(path, metadata, KEY_PROVENANCE)
            tensors = {name: _tensor(view, stored) for name, stored in header.layout.items()}
            whole = hashlib.sha256(view).hexdigest()
    if seal(metadata, tensors_digest(tensors)) != metadata.get(KEY_CHECKSUM):
        raise ArtifactError(
            f"{path}: the file does not match the checksum in its header (tensors, config or "
            "provenance corrupted or edited)"
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{path}: tensor '{name}' holds NaN or infinite values")
    return Artifact(
        path=path,
        kind=kind,
        version=int(metadata[KEY_VERSION]),
        config=config,
        provenance=provenance,
        library_version=metadata.get(KEY_LIBRARY, "unknown"),
        tensors=tensors,
        sha256=whole,
        size=size,
    )


SUMMARY_SMALL = 64 * 1024 * 1024  # byte tensors up to this size are read whole by a summary


def _hash_stored(fd: int, stored: Stored, path: Path) -> str:
    """sha256 of one tensor's stored bytes, read in chunks (memory stays one chunk)."""
    digest = hashlib.sha256()
    position = stored.start
    while position < stored.end:
        chunk = os.pread(fd, min(CHUNK, stored.end - position), position)
        if not chunk:
            raise ArtifactError(f"{path}: file ended early (truncated?)")
        digest.update(chunk)
        position += len(chunk)
    return digest.hexdigest()


def read_artifact_summary(path: str | os.PathLike[str], small: int | None = None) -> Artifact:
    """An artifact's header, with its tensors as shapes only (meta tensors) except byte tensors under `small` bytes
    (encoder programs; default `SUMMARY_SMALL`), and the file's sha256 hashed in chunks: what a summary needs, in
    bounded memory. A larger byte tensor is a meta placeholder whose bytes' sha256 is in `Artifact.digests`. Nothing
    is verified against the checksum: for files this process just wrote."""
    path = Path(path)
    small = SUMMARY_SMALL if small is None else small
    header = read_header(path)
    metadata = _legokit_metadata(path, header.metadata)
    tensors: dict[str, torch.Tensor] = {}
    digests: dict[str, str] = {}
    with open_input(path) as handle:
        for name, stored in header.layout.items():
            if stored.dtype == "U8" and stored.end - stored.start <= small:
                data = bytearray(os.pread(handle.fileno(), stored.end - stored.start, stored.start))
                tensors[name] = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            else:
                tensors[name] = torch.empty(stored.shape, dtype=TORCH_DTYPES[stored.dtype], device="meta")
                if stored.dtype == "U8":
                    digests[name] = _hash_stored(handle.fileno(), stored, path)
    return Artifact(
        path,
        metadata.get(KEY_KIND, ""),
        int(metadata[KEY_VERSION]),
        _json_field(path, metadata, KEY_CONFIG),
        _json_field(path, metadata, KEY_PROVENANCE),
        metadata.get(KEY_LIBRARY, "unknown"),
        tensors,
        file_sha256(path),
        header.size,
        digests,
    )


def _tensor(view: mmap.mmap, stored: Stored) -> torch.Tensor:
    """A tensor copied out of the mapped file (its own memory, nothing shared with the mapping)."""
    return stored_tensor(bytearray(view[stored.start : stored.end]), stored)


def stored_tensor(data: bytearray, stored: Stored) -> torch.Tensor:
    """The tensor a stored entry's bytes (already read, exactly its length) hold, sharing their memory."""
    flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(TORCH_DTYPES[stored.dtype]).reshape(stored.shape)


@dataclass(frozen=True)
class Stored:
    """Where one tensor lies in a safetensors file: dtype, shape and absolute byte range."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_layout(path: str | os.PathLike[str]) -> dict[str, Stored]:
    """Every tensor's dtype, shape and byte range, read from the safetensors header (no tensor data is read)."""
    return read_header(path).layout


@dataclass(frozen=True)
class OpenedArtifact:
    """An input artifact held open for a streamed write: every read of it (header, heads, programs, the copy and
    its hashing) goes through this one file descriptor, so a file replaced meanwhile cannot mix two versions."""

    path: Path
    fd: int
    header: Header
    metadata: dict[str, str]

    def read(self, stored: Stored) -> bytes:
        return os.pread(self.fd, stored.end - stored.start, stored.start)

    def tensor(self, stored: Stored) -> torch.Tensor:
        data = bytearray(self.read(stored))
        flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return flat.view(TORCH_DTYPES[stored.dtype]).reshape(stored.shape)


def open_artifact(path: str | os.PathLike[str], stack: ExitStack) -> OpenedArtifact:
    """Open a legokit artifact for streaming (closed with `stack`): its header parsed and its tag checked."""
    path = Path(path)
    _check_container(path)
    handle = stack.enter_context(open_input(path))
    fd = handle.fileno()
    header = _parse_header(path, lambda n, at: os.pread(fd, n, at), os.fstat(fd).st_size)
    return OpenedArtifact(path, fd, header, _legokit_metadata(path, header.metadata))


@dataclass(frozen=True)
class Source:
    """One tensor of an artifact being streamed out: copied from a byte range of a file, or given in memory."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    origin: OpenedArtifact | None = None
    stored_as: str = ""  # its name in `origin`, to check that file's checksum on the way
    start: int = 0
    end: int = 0
    tensor: torch.Tensor | None = None

    @classmethod
    def of_tensor(cls, name: str, tensor: torch.Tensor) -> Source:
        return cls(name, DTYPES[tensor.dtype], tuple(tensor.shape), tensor=tensor.detach().cpu().contiguous())

    @classmethod
    def of_file(cls, name: str, origin: OpenedArtifact, stored_as: str, stored: Stored) -> Source:
        return cls(name, stored.dtype, stored.shape, origin, stored_as, stored.start, stored.end)

    @property
    def length(self) -> int:
        return len(tensor_bytes(self.tensor)) if self.tensor is not None else self.end - self.start


CHUNK = 4 * 1024 * 1024  # bytes read at a time while hashing: bounds the extra memory of a streamed merge
_PLACEHOLDER = "0" * 64


def _hash_range(origin: OpenedArtifact, start: int, end: int, float32: bool = False) -> str:
    """sha256 of bytes [start, end) of an open input, read in chunks (memory stays one chunk); `float32` bytes must
    also hold finite values only."""
    digest = hashlib.sha256()
    position, pending = start, b""
    while position < end:
        chunk = os.pread(origin.fd, min(CHUNK, end - position), position)
        if not chunk:
            raise ArtifactError(f"{origin.path}: file ended early (truncated?)")
        digest.update(chunk)
        if float32:  # whole float32 values only: a short read's remainder waits for the next chunk
            pending += chunk
            whole = len(pending) - len(pending) % 4
            if not np.isfinite(np.frombuffer(pending[:whole], dtype="<f4")).all():
                raise ArtifactError(f"{origin.path}: a tensor holds NaN or infinite values (near byte {position:,})")
            pending = pending[whole:]
        position += len(chunk)
    return digest.hexdigest()


def _copy_range(source: int, target: int, start: int, end: int, position: int) -> None:
    """Copy bytes [start, end) of one file descriptor to `position` of another: in the kernel with
    copy_file_range where it can, else through a buffer of one chunk."""
    remaining, offset = end - start, start
    try:
        while remaining:
            copied = os.copy_file_range(source, target, min(remaining, 1 << 30), offset, position)
            if copied == 0:
                raise ArtifactError("an input file ended while copying (truncated?)")
            remaining, offset, position = remaining - copied, offset + copied, position + copied
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while remaining:
            chunk = os.pread(source, min(CHUNK, remaining), offset)
            if not chunk:
                raise ArtifactError("an input file ended while copying (truncated?)") from exc
            os.pwrite(target, chunk, position)
            remaining, offset, position = remaining - len(chunk), offset + len(chunk), position + len(chunk)


def write_streaming(
    path: str | os.PathLike[str],
    kind: str,
    config: Mapping[str, Any],
    sources: Sequence[Source],
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Write an artifact whose tensors are streamed from other artifacts in chunks, so peak memory stays near one
    chunk (plus the in-memory tensors), whatever the model's size. Every byte is hashed once: the inputs' own
    checksums are verified on the way (an input whose data does not match fails the write), and the output's
    checksum is sealed into the header at the end. Atomic, and refuses to replace an input."""
    path = Path(path)
    inputs = [Path(p) for p in inputs if p is not None]
    refuse_inputs(path, inputs)
    ordered = sorted(sources, key=lambda s: s.name)
    metadata = _header(kind, config, provenance, _PLACEHOLDER)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for source in ordered:
        header[source.name] = {
            "dtype": source.dtype,
            "shape": list(source.shape),
            "data_offsets": [offset, offset + source.length],
        }
        offset += source.length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    hashes: dict[str, Future[str] | str] = {}
    with atomic_output(path, inputs) as out, ThreadPoolExecutor(max_workers=1) as hasher:
        origins = list({id(s.origin): s.origin for s in ordered if s.origin is not None}.values())
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        out.flush()
        target, position = out.fileno(), 8 + len(encoded)
        for source in ordered:
            if source.tensor is not None:
                data = tensor_bytes(source.tensor)
                os.pwrite(target, data, position)
                hashes[source.name] = hashlib.sha256(data).hexdigest()
            else:
                origin = source.origin
                assert origin is not None  # a Source holds a tensor or a byte range of an opened input
                # the kernel copies while the other thread hashes the same bytes (both release the GIL)
                hashes[source.name] = hasher.submit(
                    _hash_range, origin, source.start, source.end, source.dtype == "F32"
                )
                _copy_range(origin.fd, target, source.start, source.end, position)
            position += source.length
        done = {name: h if isinstance(h, str) else h.result() for name, h in hashes.items()}
        for origin in origins:
            copied = [(s.stored_as, s.dtype, s.shape, done[s.name]) for s in ordered if s.origin is origin]
            _verify_input(origin, copied)
        checksum = seal(metadata, digest_entries((s.name, s.dtype, s.shape, done[s.name]) for s in ordered))
        os.pwrite(
            target,
            encoded.replace(f'"{KEY_CHECKSUM}":"{_PLACEHOLDER}"'.encode(), f'"{KEY_CHECKSUM}":"{checksum}"'.encode()),
            8,
        )
    return path


def _verify_input(origin: OpenedArtifact, copied: list[tuple[str, str, tuple[int, ...], str]]) -> None:
    """Check an input's checksum from the hashes of its copied tensors, hashing (not copying) the rest."""
    done = {name for name, *_ in copied}
    entries = list(copied)
    entries += [
        (n, st.dtype, st.shape, _hash_range(origin, st.start, st.end))
        for n, st in origin.header.layout.items()
        if n not in done
    ]
    if seal(origin.metadata, digest_entries(entries)) != origin.metadata.get(KEY_CHECKSUM):
        raise ArtifactError(f"{origin.path}: tensor data does not match the checksum in its header (corrupted file)")
