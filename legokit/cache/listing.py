"""What `legokit cache list` shows and `legokit cache clear` deletes: this user's own hash-named encoder folders
under the cache root, nothing else there (no link followed, no other user's folder listed or touched)."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legokit.cache.store import (
    _KEY,
    _PREFIX,
    CACHE_ENV,
    FOLDER,
    INFO,
    _line,
    cache_root,
    encoder_folder_trouble,
    shard_header,
)
from legokit.errors import ArtifactError, ConfigError
from legokit.io.inputs import read_input
from legokit.io.jsoncap import capped_json
from legokit.progress import log


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
