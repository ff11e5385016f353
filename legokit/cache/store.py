"""Where frozen encoders' outputs are kept: in memory within a budget, and on disk as safetensors shards under
`LEGOKIT_CACHE` (by default the user's cache directory, `~/.cache/legokit`, as Hugging Face keeps `HF_HOME`), one
folder per encoder content hash. Shards are written atomically and checked when read: an entry that does not fit
its encoder is ignored (and recomputed), never trusted."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save as safetensors_bytes

from ..artifact import Stored, open_input, read_header, read_input, write_atomic
from ..errors import ArtifactError, ConfigError, LegoError
from ..jsoncap import capped_json
from ..progress import log
from ..version import __version__

CACHE_ENV = "LEGOKIT_CACHE"
MEMORY_ENV = "LEGOKIT_CACHE_MEMORY"
DEFAULT_MEMORY = 4 << 30  # bytes of encoder outputs kept in memory per run
SHARD_BYTES = 256 << 20  # entries written to disk in shards of about this size
FOLDER = "encoder-tokens"
INFO = "encoder.json"
SHARD_TAG = "legokit-encoder-tokens"
MAX_TOKENS = 1 << 20  # tokens one cached sample may hold
_KEY = re.compile(r"^[0-9a-f]{64}$")
_ENTRY = re.compile(r"^([0-9a-f]{32})\.(tokens|mask)$")


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
        return self.tokens.numel() * 4 + self.mask.numel()


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
    stored: dict[str, tuple[Path, Stored, Stored]] | None = None
    handles: dict[Path, int] = field(default_factory=dict)
    computed: int = 0  # samples this run encoded (not found in the cache)

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
        self.computed += 1
        kept = self.budget.take(entry.nbytes)
        if kept:
            self.memory[sample] = entry
        if self.folder is not None:
            self.pending[sample] = entry
            if sum(e.nbytes for e in self.pending.values()) >= SHARD_BYTES:
                self.flush()

    def flush(self) -> None:
        """Write the entries not yet on disk as one shard (temp file + rename)."""
        if self.folder is None or not self.pending:
            return
        tensors: dict[str, torch.Tensor] = {}
        for sample, entry in self.pending.items():
            tensors[f"{sample}.tokens"], tensors[f"{sample}.mask"] = entry.tokens, entry.mask
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        try:
            self._make_folder()
            write_atomic(path, safetensors_bytes(tensors, metadata={"format": SHARD_TAG, "encoder": self.key}))
        except (OSError, LegoError) as exc:
            log.warning("the encoder cache in %s cannot be written (%s); going on without it", self.folder, exc)
            self.folder = None
            return
        index, layout = self._index(), read_header(path).layout
        for sample in self.pending:
            index[sample] = (path, layout[f"{sample}.tokens"], layout[f"{sample}.mask"])
        self.pending = {}

    def close(self) -> None:
        self.flush()
        for handle in self.handles.values():
            os.close(handle)
        self.handles = {}

    def _make_folder(self) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.folder.is_symlink() or not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is not a folder")
        info = self.folder / INFO
        if not info.exists():
            write_atomic(info, json.dumps({**self.info, "created": time.time(), "legokit": __version__}).encode())

    def _index(self) -> dict[str, tuple[Path, Stored, Stored]]:
        """Every entry in the folder's shards, each checked against the encoder's width; a shard that is not one
        legokit wrote for this encoder is skipped with a warning."""
        if self.stored is not None:
            return self.stored
        self.stored = {}
        if self.folder is None or not self.folder.is_dir() or self.folder.is_symlink():
            return self.stored
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                self.stored.update(self._shard(path))
            except (ArtifactError, OSError) as exc:
                log.warning("skipping a cache shard that does not fit its encoder: %s (%s)", path, exc)
        return self.stored

    def _shard(self, path: Path) -> dict[str, tuple[Path, Stored, Stored]]:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise ArtifactError("not a regular file")
        header = read_header(path)
        if header.metadata.get("format") != SHARD_TAG or header.metadata.get("encoder") != self.key:
            raise ArtifactError("written for another encoder")
        parts: dict[str, dict[str, Stored]] = {}
        for name, stored in header.layout.items():
            match = _ENTRY.match(name)
            if match is None:
                raise ArtifactError(f"tensor {name[:80]!r}")
            parts.setdefault(match.group(1), {})[match.group(2)] = stored
        found = {}
        for sample, pair in parts.items():
            tokens, mask = pair.get("tokens"), pair.get("mask")
            if tokens is None or mask is None:
                raise ArtifactError(f"entry {sample} is incomplete")
            fits = (tokens.dtype == "F32" and mask.dtype == "BOOL" and len(tokens.shape) == 2 and len(mask.shape) == 1
                    and tokens.shape == (mask.shape[0], self.out_dim) and mask.shape[0] <= MAX_TOKENS)
            if not fits:
                raise ArtifactError(f"entry {sample} has tokens {tokens.dtype} {tokens.shape}, mask {mask.dtype} "
                                    f"{mask.shape}; the encoder gives ({self.out_dim})-wide float32 tokens")
            found[sample] = (path, tokens, mask)
        return found

    def _read(self, sample: str) -> Entry | None:
        path, tokens, mask = self.stored[sample]  # type: ignore[index]
        try:
            if path not in self.handles:
                with open_input(path) as handle:
                    self.handles[path] = os.dup(handle.fileno())
            fd = self.handles[path]
            values = bytearray(os.pread(fd, tokens.end - tokens.start, tokens.start))
            flags = bytearray(os.pread(fd, mask.end - mask.start, mask.start))
            if len(values) != tokens.end - tokens.start or len(flags) != mask.end - mask.start:
                raise OSError("the shard is shorter than its header says")
        except (OSError, ArtifactError) as exc:
            log.warning("a cache shard cannot be read: %s (%s); recomputing", path, exc)
            del self.stored[sample]  # type: ignore[union-attr]
            return None
        width = tokens.shape[0]
        as_tokens = torch.frombuffer(values, dtype=torch.float32) if values else torch.empty(0)
        as_mask = torch.frombuffer(flags, dtype=torch.bool) if flags else torch.empty(0, dtype=torch.bool)
        return Entry(as_tokens.reshape(width, self.out_dim), as_mask.reshape(width))


class TokenCache:
    """The encoder outputs of one run: `folder(...)` gives each encoder's part; `close()` writes what is pending.
    `root=None` keeps everything in memory (nothing on disk: `--no-cache`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, memory: int | None = None):
        self.root = None if root is None else Path(root)
        self.budget = Budget(memory_budget() if memory is None else memory)
        self.encoders: dict[str, EncoderTokens] = {}

    @classmethod
    def default(cls) -> "TokenCache":
        """On disk under `cache_root()`."""
        return cls(cache_root())

    @classmethod
    def resolve(cls, cache: "TokenCache | bool | None") -> "TokenCache | None":
        """A run's cache from what a caller passes: True (on disk, the default), False (memory only: `--no-cache`),
        None (none at all: every batch runs its encoders), or a cache."""
        if isinstance(cache, TokenCache) or cache is None:
            return cache
        return cls.default() if cache else cls(None)

    def of(self, key: str, out_dim: int, info: Mapping[str, Any]) -> EncoderTokens:
        if not _KEY.match(key):
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


def list_cache(root: str | os.PathLike[str] | None = None) -> list[CachedEncoder]:
    """The encoders with outputs in the cache, most recently used first."""
    base = (cache_root() if root is None else Path(root)) / FOLDER
    found = []
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if not _KEY.match(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        info: dict[str, Any] = {}
        if (folder / INFO).is_file():
            try:
                loaded = capped_json(read_input(folder / INFO, ArtifactError, 1 << 20), lambda r: ArtifactError(r))
                info = loaded if isinstance(loaded, dict) else {}
            except ArtifactError:
                info = {}
        shards = [p for p in folder.glob("*.safetensors") if p.is_file() and not p.is_symlink()]
        samples = 0
        for shard in shards:
            try:
                samples += sum(1 for name in read_header(shard).layout if name.endswith(".mask"))
            except ArtifactError:
                continue
        files = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
        found.append(CachedEncoder(folder.name, folder, str(info.get("modality", "?")), str(info.get("encoder", "?")),
                                   samples, sum(p.stat().st_size for p in files),
                                   max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime)))
    return sorted(found, key=lambda c: -c.modified)


def clear_cache(root: str | os.PathLike[str] | None = None, keys: tuple[str, ...] = ()) -> list[CachedEncoder]:
    """Delete the cached outputs of the encoders whose key starts with one of `keys` (all when none is given);
    returns what was deleted. Only legokit's own folders (named by a hash) are touched."""
    listed = list_cache(root)
    chosen = [c for c in listed if not keys or any(c.key.startswith(k.lower()) for k in keys)]
    unknown = [k for k in keys if not any(c.key.startswith(k.lower()) for c in listed)]
    if unknown:
        raise ConfigError(f"no cached encoder with a key starting {unknown[0][:80]!r} (see legokit cache list)")
    for cached in chosen:
        shutil.rmtree(cached.folder)
    return chosen
