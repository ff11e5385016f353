"""Where frozen encoders' outputs are kept: in memory within a budget, and on disk as safetensors shards under
`LEGOKIT_CACHE` (by default the user's cache directory, `~/.cache/legokit`, as Hugging Face keeps `HF_HOME`), one
folder per encoder content hash. Shards are written atomically and checked when read: an entry that does not fit
its encoder is ignored (and recomputed), never trusted; nor is a folder or shard of another user (a shared cache
folder: anyone who can write there could otherwise hand this user tokens of their choosing)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from legokit.artifacts.format import Header, Stored, _parse_header, header_of_bytes, stored_tensor
from legokit.errors import ArtifactError, ConfigError, LegoError
from legokit.io.atomic import write_atomic
from legokit.io.inputs import open_input, read_input
from legokit.io.jsoncap import capped_json
from legokit.progress import log
from legokit.version import __version__

CACHE_ENV = "LEGOKIT_CACHE"
MEMORY_ENV = "LEGOKIT_CACHE_MEMORY"
DEFAULT_MEMORY = 4 << 30  # bytes of encoder outputs kept in memory per run
SHARD_BYTES = 256 << 20  # entries written to disk in shards of about this size
OVER_BUDGET = 16 << 20  # but entries that the memory budget does not keep are written once this many bytes wait
SHARD_ENTRIES = 1 << 16  # and of at most this many entries (about 15 MB of safetensors header)
MAX_SHARD_HEADER = 32 << 20  # a shard's header over this is not one legokit wrote: skipped before it is read
MAX_HANDLES = 32  # shard files held open at once: a run reading from many shards must not run out of descriptors
ENTRY_OVERHEAD = 1280  # bytes an entry takes in memory beyond its tensors' data (two tensors, its key; measured)
FOLDER = "encoder-tokens"
INFO = "encoder.json"
SHARD_TAG = "legokit-encoder-tokens"
MAX_TOKENS = 1 << 20  # tokens one cached sample may hold
_KEY = re.compile(r"[0-9a-f]{64}")  # names are matched whole (fullmatch: `$` would let a newline end one)
_ENTRY = re.compile(r"([0-9a-f]{32})\.(tokens|mask)")
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


Signature = tuple[int, int, int, int]


def _signature(info: os.stat_result) -> Signature:
    """What tells one version of a file from another: a shard replaced or truncated after it was indexed differs."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


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
        return self.tokens.numel() * 4 + self.mask.numel() + ENTRY_OVERHEAD


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


@dataclass
class EncoderTokens:
    """The cached outputs of one encoder (by content hash): memory first, then its disk folder (if any)."""

    key: str
    out_dim: int
    folder: Path | None
    budget: Budget
    info: dict[str, Any]
    memory: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, Entry] = field(default_factory=dict)
    pending_bytes: int = 0  # what the pending entries take
    unkept_bytes: int = 0  # of which entries that the memory budget does not keep
    stored: dict[str, tuple[Path, Stored, Stored]] | None = None
    signatures: dict[Path, Signature] = field(default_factory=dict)  # each indexed shard as it was indexed
    handles: dict[Path, int] = field(default_factory=dict)  # open shards, least recently used first

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
        if self.folder is not None and sample not in self.pending:
            self.pending[sample] = entry
            self.pending_bytes += entry.nbytes
            self.unkept_bytes += 0 if kept else entry.nbytes
            if (
                len(self.pending) >= SHARD_ENTRIES
                or self.pending_bytes >= SHARD_BYTES
                or self.unkept_bytes >= OVER_BUDGET
            ):
                self.flush()

    def flush(self) -> None:
        """Write the entries not yet on disk as one shard (temp file + rename)."""
        index = self._index()
        pending, self.pending, self.pending_bytes, self.unkept_bytes = self.pending, {}, 0, 0
        if self.folder is None or not pending:
            return
        tensors: dict[str, torch.Tensor] = {}
        for sample, entry in pending.items():
            tensors[f"{sample}.tokens"], tensors[f"{sample}.mask"] = entry.tokens, entry.mask
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        try:
            data = safetensors_bytes(tensors, metadata={"format": SHARD_TAG, "encoder": self.key})
            layout = header_of_bytes(path, data).layout  # where each entry lies, from what is written: no re-read
            self._make_folder()
            write_atomic(path, data)
            self.signatures[path] = _signature(os.stat(path))
        except (OSError, LegoError) as exc:
            log.warning(
                "the encoder cache in %s cannot be written (%s); going on without it", _line(self.folder), _line(exc)
            )
            self.folder = None
            return
        for sample in pending:
            index[sample] = (path, layout[f"{sample}.tokens"], layout[f"{sample}.mask"])

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

    def _index(self) -> dict[str, tuple[Path, Stored, Stored]]:
        """Every entry in the folder's shards, each checked against the encoder's width; a shard that is not one
        legokit wrote for this encoder is skipped with a warning."""
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
            log.warning("skipping a cache shard that does not fit its encoder: %s%s", _line(skipped[0]), more)
        return self.stored

    def _shard(self, path: Path) -> dict[str, tuple[Path, Stored, Stored]]:
        header, signature = shard_header(path)
        if header.metadata.get("format") != SHARD_TAG or header.metadata.get("encoder") != self.key:
            raise ArtifactError("written for another encoder")
        parts: dict[str, dict[str, Stored]] = {}
        for name, stored in header.layout.items():
            match = _ENTRY.fullmatch(name)
            if match is None:
                raise ArtifactError(f"tensor {name[:80]!r}")
            parts.setdefault(match.group(1), {})[match.group(2)] = stored
        found = {}
        for sample, pair in parts.items():
            tokens, mask = pair.get("tokens"), pair.get("mask")
            if tokens is None or mask is None:
                raise ArtifactError(f"entry {sample} is incomplete")
            fits = (
                tokens.dtype == "F32"
                and mask.dtype == "BOOL"
                and len(tokens.shape) == 2
                and len(mask.shape) == 1
                and tokens.shape == (mask.shape[0], self.out_dim)
                and mask.shape[0] <= MAX_TOKENS
            )
            if not fits:
                raise ArtifactError(
                    f"entry {sample} has tokens {tokens.dtype} {tokens.shape}, mask {mask.dtype} "
                    f"{mask.shape}; the encoder gives ({self.out_dim})-wide float32 tokens"
                )
            found[sample] = (path, tokens, mask)
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
        """Drop a shard that cannot be read: its entries are recomputed, and it is warned about once."""
        stored = self.stored or {}
        for sample in [k for k, v in stored.items() if v[0] == path]:
            del stored[sample]
        fd = self.handles.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _read(self, sample: str) -> Entry | None:
        path, tokens, mask = self.stored[sample]  # type: ignore[index]
        try:
            fd = self._handle(path)
            values = bytearray(os.pread(fd, tokens.end - tokens.start, tokens.start))
            flags = bytearray(os.pread(fd, mask.end - mask.start, mask.start))
            if len(values) != tokens.end - tokens.start or len(flags) != mask.end - mask.start:
                raise OSError("the shard is shorter than its header says")
        except (OSError, ArtifactError) as exc:
            log.warning("a cache shard cannot be read: %s (%s); its entries are recomputed", _line(path), _line(exc))
            self._forget(path)
            return None
        return Entry(stored_tensor(values, tokens), stored_tensor(flags, mask))


class TokenCache:
    """The encoder outputs of one run: `folder(...)` gives each encoder's part; `close()` writes what is pending.
    `root=None` keeps everything in memory (nothing on disk: `--no-cache`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, memory: int | None = None):
        self.root = None if root is None else Path(root)
        self.budget = Budget(memory_budget() if memory is None else memory)
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
            self.encoders[key] = EncoderTokens(key, out_dim, folder, self.budget, dict(info))
        return self.encoders[key]

    def close(self) -> None:
        for encoder in self.encoders.values():
            encoder.close()


@dataclass(frozen=True)
class CachedEncoder:
    """One encoder's folder in the cache, as `legokit cache list` shows it."""

    key: str
    folder: Path
    modality: str
    encoder: str
    samples: int
    bytes: int
    modified: float


def _cached_encoder(folder: Path) -> CachedEncoder:
    """One encoder's folder as listed; OSError when it goes away meanwhile (a concurrent `legokit cache clear`)."""
    info: dict[str, Any] = {}
    try:
        if not stat.S_ISREG(os.lstat(folder / INFO).st_mode):  # a link to a file elsewhere is not shown
            raise ArtifactError("not a regular file")
        loaded = capped_json(read_input(folder / INFO, ArtifactError, 1 << 20), lambda r: ArtifactError(r))
        info = loaded if isinstance(loaded, dict) else {}
    except (ArtifactError, FileNotFoundError):
        pass
    samples, size, modified = 0, 0, os.lstat(folder).st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                found = entry.stat(follow_symlinks=False)
            except OSError:  # a temporary file renamed meanwhile by a run writing its shard
                continue
            if not stat.S_ISREG(found.st_mode):
                continue
            size, modified = size + found.st_size, max(modified, found.st_mtime)
            if entry.name.endswith(".safetensors"):
                try:
                    samples += sum(1 for name in shard_header(Path(entry.path))[0].layout if name.endswith(".mask"))
                except (ArtifactError, OSError):
                    continue
    return CachedEncoder(
        folder.name,
        folder,
        _line(info.get("modality", "?"), 80),
        _line(info.get("encoder", "?"), 200),
        samples,
        size,
        modified,
    )


def list_cache(root: str | os.PathLike[str] | None = None) -> list[CachedEncoder]:
    """The encoders with outputs in the cache, most recently used first: this user's own hash-named folders (what
    a run would read), nothing else there."""
    base = (cache_root() if root is None else Path(root)) / FOLDER
    if base.is_symlink():
        raise ConfigError(
            f"{_line(base)} is a symbolic link; legokit keeps its cache in a real folder (set {CACHE_ENV} "
            "to move the cache)"
        )
    try:
        folders = sorted(base.iterdir()) if base.is_dir() else []
    except OSError as exc:
        raise ConfigError(f"{_line(base)}: cannot list it ({exc.strerror or exc})") from exc
    found = []
    for folder in folders:
        if not _KEY.fullmatch(folder.name) or encoder_folder_trouble(folder) or not folder.is_dir():
            continue
        try:
            found.append(_cached_encoder(folder))
        except OSError:
            continue
    return sorted(found, key=lambda c: -c.modified)


def clear_cache(root: str | os.PathLike[str] | None = None, keys: tuple[str, ...] = ()) -> list[CachedEncoder]:
    """Delete the cached outputs of the encoders whose key starts with one of `keys` (all when none is given);
    returns what was deleted. Only legokit's own folders (this user's, named by a hash) are touched."""
    for key in keys:
        if not _PREFIX.fullmatch(key):
            raise ConfigError(
                f"a cache key is hex digits (the start of one that legokit cache list shows), got {_line(key, 80)!r}"
            )
    listed = list_cache(root)
    chosen = [c for c in listed if not keys or any(c.key.startswith(k.lower()) for k in keys)]
    unknown = [k for k in keys if not any(c.key.startswith(k.lower()) for c in listed)]
    if unknown:
        raise ConfigError(f"no cached encoder with a key starting {unknown[0][:80]!r} (see legokit cache list)")
    removed = []
    for cached in chosen:
        try:
            if encoder_folder_trouble(cached.folder):  # replaced since it was listed
                raise OSError("it changed since it was listed")
            shutil.rmtree(cached.folder)
        except OSError as exc:
            log.warning("cannot clear %s (%s)", _line(cached.folder), _line(exc))
            continue
        removed.append(cached)
    return removed
