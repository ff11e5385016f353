"""Where frozen encoders' outputs are kept: in memory within a budget, and on disk as safetensors shards under
`LEGOKIT_CACHE` (by default the user's cache directory, `~/.cache/legokit`, as Hugging Face keeps `HF_HOME`), one
folder per encoder content hash, within a disk budget (`disk`). Shards are written atomically and checked when
read: an entry that does not fit its encoder, or whose bytes and names do not match its digest, is ignored (and
recomputed), never trusted; nor is a folder or shard of another user (a shared cache folder: anyone who can write
there could otherwise hand this user tokens of their choosing)."""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from legokit.artifacts.format import Header, Stored, _parse_header, header_of_bytes, stored_tensor, tensor_bytes
from legokit.cache.disk import DISK_ENV, DiskBudget, disk_budget, room
from legokit.cache.keys import DIGEST_BYTES, entry_digest
from legokit.errors import ArtifactError, ConfigError, LegoError
from legokit.io.atomic import write_atomic
from legokit.io.inputs import open_input
from legokit.progress import log
from legokit.version import __version__

CACHE_ENV = "LEGOKIT_CACHE"
MEMORY_ENV = "LEGOKIT_CACHE_MEMORY"
DEFAULT_MEMORY = 4 << 30  # bytes of encoder outputs kept in memory per run
SHARD_BYTES = 256 << 20  # entries written to disk in shards of about this size
OVER_BUDGET = 16 << 20  # but entries that the memory budget does not keep are written once this many bytes wait
SHARD_ENTRIES = 1 << 16  # and of at most this many entries (about 23 MB of safetensors header)
MAX_SHARD_HEADER = 32 << 20  # a shard's header over this is not one legokit wrote: skipped before it is read
MAX_HANDLES = 32  # shard files held open at once: a run reading from many shards must not run out of descriptors
ENTRY_OVERHEAD = 1280  # bytes an entry takes in memory beyond its tensors' data (two tensors, its key; measured)
FOLDER = "encoder-tokens"
INFO = "encoder.json"
SHARD_TAG = "legokit-encoder-tokens"
DIGESTS = "sha256-1"  # a shard's `digest` metadata: each entry carries keys.entry_digest (none before it)
ENTRY_HEADER = 320  # bytes of safetensors header an entry adds to its shard (three names and their places)
MAX_TOKENS = 1 << 20  # tokens one cached sample may hold
_KEY = re.compile(r"[0-9a-f]{64}")  # names are matched whole (fullmatch: `$` would let a newline end one)
_ENTRY = re.compile(r"([0-9a-f]{32})\.(tokens|mask|digest)")
_PREFIX = re.compile(r"[0-9a-fA-F]{1,64}")
_UNSHOWN = re.compile(r"[^\x20-\x7e]")


def _line(text: object, limit: int = 300) -> str:
    """Text from a file or a file name as one printable line (a name may hold a newline or a terminal escape)."""
    shown = _UNSHOWN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def folder_trouble(path: Path) -> str | None:
    """Why a folder of the cache cannot be trusted (None: it can, or it does not exist yet): a symbolic link, not a
    folder, another user's, or writable by others (who could then put shards of their own in it)."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # made when the first shard is written (or found then not to be writable)
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if _uid() is not None and info.st_uid != _uid():
        return "belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return None


def encoder_folder_trouble(folder: Path) -> str | None:
    """Why an encoder's folder (`<root>/encoder-tokens/<key>`) cannot be used, as "<path> <reason>", or None."""
    if folder.parent.is_symlink():
        return f"{folder.parent} is a symbolic link"
    trouble = folder_trouble(folder)
    return f"{folder} {trouble}" if trouble else None


Signature = tuple[int, int, int]


def _signature(info: os.stat_result) -> Signature:
    """What tells one file from another: a shard replaced or truncated after it was indexed differs (its mtime is
    not part of it: a run sets it on use, and bytes changed in place fail their entries' digests)."""
    return (info.st_dev, info.st_ino, info.st_size)


def shard_header(path: Path) -> tuple[Header, Signature]:
    """A shard's header, read through one descriptor, refused (ArtifactError) unless the shard is a regular file
    of this user (not a link, a pipe or a device) with a header of at most MAX_SHARD_HEADER bytes."""
    link = os.lstat(path)
    if not stat.S_ISREG(link.st_mode):
        raise ArtifactError("not a regular file")
    with open_input(path) as handle:
        fd = handle.fileno()
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (link.st_dev, link.st_ino):
            raise ArtifactError("replaced while it was read")
        if _uid() is not None and info.st_uid != _uid():
            raise ArtifactError("written by another user")
        if info.st_size >= 8 and int.from_bytes(os.pread(fd, 8, 0), "little") > MAX_SHARD_HEADER:
            raise ArtifactError(f"a header over {MAX_SHARD_HEADER:,} bytes")
        return _parse_header(path, lambda n, at: os.pread(fd, n, at), info.st_size), _signature(info)


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """`LEGOKIT_CACHE`, else `$XDG_CACHE_HOME/legokit`, else `~/.cache/legokit`."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "legokit"


def memory_budget(environ: Mapping[str, str] | None = None) -> int:
    """Bytes of encoder outputs kept in memory: `LEGOKIT_CACHE_MEMORY` (a number of bytes), else 4 GiB."""
    environ = os.environ if environ is None else environ
    text = environ.get(MEMORY_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ConfigError(f"{MEMORY_ENV} must be a number of bytes, got {text[:24]!r}")
    return int(text)


@dataclass(frozen=True)
class Entry:
    """One sample's encoder output: tokens (k, e) float32 and which of them are real (k,) bool."""

    tokens: torch.Tensor
    mask: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Memory it takes: its data, and the objects around it (which outweigh the data of a one-token entry)."""
        return self.data_bytes + ENTRY_OVERHEAD

    @property
    def data_bytes(self) -> int:
        """Bytes of its tokens and mask (what the per-entry cap counts)."""
        return self.tokens.numel() * 4 + self.mask.numel()

    @property
    def stored_bytes(self) -> int:
        """Bytes it adds to a shard: its data, its digest and its part of the header."""
        return self.data_bytes + DIGEST_BYTES + ENTRY_HEADER


@dataclass
class Budget:
    """Memory the entries of one run may hold, shared by its encoders."""

    limit: int
    used: int = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True


def _ignore(key: str, path: Path) -> None:
    """No one to tell of an evicted shard."""


@dataclass
class RunState:
    """What one run's encoders share besides memory: the disk budget, the warnings given (each kind once per run),
    and whom to tell of a shard deleted to make room."""

    disk: DiskBudget
    warned: set[str] = field(default_factory=set)
    evicted: Callable[[str, Path], None] = _ignore

    def warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning(message, *args)


@dataclass(frozen=True)
class Place:
    """Where an entry lies: its shard, and its tokens', mask's and digest's byte ranges there."""

    path: Path
    tokens: Stored
    mask: Stored
    digest: Stored


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


@dataclass
class EncoderTokens:
    """The cached outputs of one encoder (by content hash): memory first, then its disk folder (if any)."""

    key: str
    out_dim: int
    folder: Path | None
    budget: Budget
    info: dict[str, Any]
    run: RunState
    memory: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, Entry] = field(default_factory=dict)
    pending_bytes: int = 0  # what the pending entries take in memory
    pending_stored: int = 0  # and in a shard
    unkept_bytes: int = 0  # of which entries that the memory budget does not keep
    stored: dict[str, Place] | None = None
    signatures: dict[Path, Signature] = field(default_factory=dict)  # each indexed shard as it was indexed
    handles: dict[Path, int] = field(default_factory=dict)  # open shards, least recently used first
    touched: set[Path] = field(default_factory=set)  # shards read from in this run (their mtime set: recently used)

    def __contains__(self, sample: str) -> bool:
        return sample in self.memory or sample in self.pending or sample in self._index()

    def get(self, sample: str) -> Entry | None:
        found = self.memory.get(sample) or self.pending.get(sample)
        if found is None and sample in self._index():
            found = self._read(sample)
            if found is not None and self.budget.take(found.nbytes):
                self.memory[sample] = found
        return found

    def put(self, sample: str, entry: Entry) -> None:
        kept = self.budget.take(entry.nbytes)
        if kept:
            self.memory[sample] = entry
        if self.folder is None or sample in self.pending:
            return
        if entry.data_bytes > self.run.disk.entry_cap:
            self.run.warn_once(
                "cap",
                "encoder outputs of %s per sample are over the cache's cap of %s per entry: they are not written "
                "to disk (a later run computes them again)",
                _size(entry.data_bytes),
                _size(self.run.disk.entry_cap),
            )
            return
        self.pending[sample] = entry
        self.pending_bytes += entry.nbytes
        self.pending_stored += entry.stored_bytes
        self.unkept_bytes += 0 if kept else entry.nbytes
        if (
            len(self.pending) >= SHARD_ENTRIES
            or self.pending_bytes >= SHARD_BYTES
            or self.unkept_bytes >= OVER_BUDGET
            or self.pending_stored >= self.run.disk.shard_bytes
        ):
            self.flush()

    def flush(self) -> None:
        """Write the entries not yet on disk as one shard (temp file + rename), each with its digest, after making
        room for it within the disk budget."""
        index = self._index()
        pending, self.pending, self.pending_bytes, self.unkept_bytes = self.pending, {}, 0, 0
        self.pending_stored = 0
        if self.folder is None or not pending:
            return
        tensors: dict[str, torch.Tensor] = {}
        for sample, entry in pending.items():
            tensors[f"{sample}.tokens"], tensors[f"{sample}.mask"] = entry.tokens, entry.mask
            digest = entry_digest(self.key, sample, tensor_bytes(entry.tokens), tensor_bytes(entry.mask))
            tensors[f"{sample}.digest"] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        now = time.time_ns()  # in the name to the nanosecond: where shards hold one sample, the latest is read
        stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now // 10**9))}-{now % 10**9:09d}"
        path = self.folder / f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        metadata = {"format": SHARD_TAG, "encoder": self.key, "digest": DIGESTS}
        try:
            data = safetensors_bytes(tensors, metadata=metadata)
            layout = header_of_bytes(path, data).layout  # where each entry lies, from what is written: no re-read
            self._make_folder()
            with room(self.folder.parent, len(data), self.run.disk, self.run.evicted) as fits:
                if fits:
                    write_atomic(path, data)
            if not fits:
                self.run.warn_once(
                    "full",
                    "no room in the encoder cache for %s more within %s=%d bytes: these outputs are not written to "
                    "disk (a later run computes them again)",
                    _size(len(data)),
                    DISK_ENV,
                    self.run.disk.limit,
                )
                return
            self.signatures[path] = _signature(os.stat(path))
        except (OSError, LegoError) as exc:
            log.warning(
                "the encoder cache in %s cannot be written (%s); going on without it", _line(self.folder), _line(exc)
            )
            self.folder = None
            return
        for sample in pending:
            index[sample] = Place(
                path, layout[f"{sample}.tokens"], layout[f"{sample}.mask"], layout[f"{sample}.digest"]
            )

    def close(self) -> None:
        self.flush()
        for handle in self.handles.values():
            os.close(handle)
        self.handles = {}

    def _make_folder(self) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        trouble = encoder_folder_trouble(self.folder)
        if trouble:
            raise ConfigError(trouble)
        info = self.folder / INFO
        if not info.exists():
            write_atomic(info, json.dumps({**self.info, "created": time.time(), "legokit": __version__}).encode())

    def _index(self) -> dict[str, Place]:
        """Every entry in the folder's shards, each checked against the encoder's width; a shard that is not one
        legokit wrote for this encoder in this format is skipped with a warning."""
        if self.stored is not None:
            return self.stored
        self.stored = {}
        if self.folder is None:
            return self.stored
        trouble = encoder_folder_trouble(self.folder)
        if trouble:
            log.warning("not using the encoder cache: %s; outputs are kept for this run only", _line(trouble))
            self.folder = None
            return self.stored
        skipped: list[str] = []
        try:
            shards = sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []
        except OSError as exc:
            shards, skipped = [], [f"{self.folder} ({exc.strerror or exc})"]
        for path in shards:
            try:
                self.stored.update(self._shard(path))
            except (ArtifactError, OSError) as exc:
                skipped.append(f"{path} ({exc})")
        if skipped:
            more = f", and {len(skipped) - 1} more there" if len(skipped) > 1 else ""
            log.warning("skipping a cache shard that does not fit its encoder or format: %s%s", _line(skipped[0]), more)
        return self.stored

    def _shard(self, path: Path) -> dict[str, Place]:
        header, signature = shard_header(path)
        if header.metadata.get("format") != SHARD_TAG or header.metadata.get("encoder") != self.key:
            raise ArtifactError("written for another encoder")
        if header.metadata.get("digest") != DIGESTS:  # an earlier legokit's shard: its entries are recomputed
            raise ArtifactError("its entries carry no digest (an earlier format); they are recomputed")
        parts: dict[str, dict[str, Stored]] = {}
        for name, stored in header.layout.items():
            match = _ENTRY.fullmatch(name)
            if match is None:
                raise ArtifactError(f"tensor {name[:80]!r}")
            parts.setdefault(match.group(1), {})[match.group(2)] = stored
        found = {}
        for sample, pair in parts.items():
            tokens, mask, digest = pair.get("tokens"), pair.get("mask"), pair.get("digest")
            if tokens is None or mask is None or digest is None:
                raise ArtifactError(f"entry {sample} is incomplete")
            fits = (
                tokens.dtype == "F32"
                and mask.dtype == "BOOL"
                and len(tokens.shape) == 2
                and len(mask.shape) == 1
                and tokens.shape == (mask.shape[0], self.out_dim)
                and mask.shape[0] <= MAX_TOKENS
                and digest.dtype == "U8"
                and digest.shape == (DIGEST_BYTES,)
            )
            if not fits:
                raise ArtifactError(
                    f"entry {sample} has tokens {tokens.dtype} {tokens.shape}, mask {mask.dtype} {mask.shape}, digest "
                    f"{digest.dtype} {digest.shape}; the encoder gives ({self.out_dim})-wide float32 tokens"
                )
            found[sample] = Place(path, tokens, mask, digest)
        self.signatures[path] = signature
        return found

    def _handle(self, path: Path) -> int:
        """An open descriptor of the shard, the same file that was indexed; at most MAX_HANDLES are kept open."""
        fd = self.handles.pop(path, None)
        if fd is None:
            with open_input(path) as handle:
                if _signature(os.fstat(handle.fileno())) != self.signatures.get(path):
                    raise ArtifactError("it changed since it was indexed")
                fd = os.dup(handle.fileno())
            while len(self.handles) >= MAX_HANDLES:
                os.close(self.handles.pop(next(iter(self.handles))))
        self.handles[path] = fd
        return fd

    def _forget(self, path: Path) -> None:
        """Drop a shard that cannot be read, or was evicted: its entries are recomputed."""
        stored = self.stored or {}
        for sample in [k for k, v in stored.items() if v.path == path]:
            del stored[sample]
        fd = self.handles.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _read(self, sample: str) -> Entry | None:
        """The entry from its shard, if its bytes and names match its digest; else None (it is recomputed, and the
        first such entry of the run is warned about)."""
        place = self.stored[sample]  # type: ignore[index]
        try:
            fd = self._handle(place.path)
            values, flags, digest = (_pread(fd, stored) for stored in (place.tokens, place.mask, place.digest))
        except (OSError, ArtifactError) as exc:
            log.warning(
                "a cache shard cannot be read: %s (%s); its entries are recomputed", _line(place.path), _line(exc)
            )
            self._forget(place.path)
            return None
        if not hmac.compare_digest(entry_digest(self.key, sample, values, flags), bytes(digest)):
            del self.stored[sample]  # type: ignore[union-attr]
            self.run.warn_once(
                "digest",
                "a cache entry does not match its digest (changed on disk, or stored under another name): %s in %s; "
                "it and any other such entry of this run are recomputed",
                sample,
                _line(place.path),
            )
            return None
        if place.path not in self.touched:  # most recently used: the last to be evicted
            self.touched.add(place.path)
            with suppress(OSError):  # a read-only file system: eviction then goes by when shards were written
                os.utime(fd)
        return Entry(stored_tensor(values, place.tokens), stored_tensor(flags, place.mask))


def _pread(fd: int, stored: Stored) -> bytearray:
    """A tensor's bytes, exactly its length (OSError if the file is shorter)."""
    data = bytearray(os.pread(fd, stored.end - stored.start, stored.start))
    if len(data) != stored.end - stored.start:
        raise OSError("the shard is shorter than its header says")
    return data


class TokenCache:
    """The encoder outputs of one run: `of(...)` gives each encoder's part; `close()` writes what is pending.
    `root=None` keeps everything in memory (`--no-cache`); `disk`: bytes on disk (default `LEGOKIT_CACHE_MAX`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, memory: int | None = None, disk: int | None = None):
        self.root = None if root is None else Path(root)
        self.budget = Budget(memory_budget() if memory is None else memory)
        limit = disk if disk is not None else disk_budget() if self.root is not None else 0
        self.run = RunState(DiskBudget(limit), evicted=self._evicted)
        self.encoders: dict[str, EncoderTokens] = {}

    @classmethod
    def default(cls) -> TokenCache:
        """On disk under `cache_root()`."""
        return cls(cache_root())

    @classmethod
    def resolve(cls, cache: TokenCache | bool | None) -> TokenCache | None:
        """A run's cache from what a caller passes: True (on disk, the default), False (memory only: `--no-cache`),
        None (none at all: every batch runs its encoders), or a cache."""
        if isinstance(cache, TokenCache) or cache is None:
            return cache
        return cls.default() if cache else cls(None)

    def of(self, key: str, out_dim: int, info: Mapping[str, Any]) -> EncoderTokens:
        if not _KEY.fullmatch(key):
            raise ConfigError(f"an encoder cache key is 64 hex digits, got {key[:80]!r}")
        if key not in self.encoders:
            folder = None if self.root is None else self.root / FOLDER / key
            self.encoders[key] = EncoderTokens(key, out_dim, folder, self.budget, dict(info), self.run)
        return self.encoders[key]

    def _evicted(self, key: str, path: Path) -> None:
        """A shard deleted to make room: an encoder of this run that indexed it recomputes its entries."""
        if key in self.encoders:
            self.encoders[key]._forget(path)

    def close(self) -> None:
        for encoder in self.encoders.values():
            encoder.close()
