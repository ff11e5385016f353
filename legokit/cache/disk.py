"""The encoder cache's disk budget: at most `LEGOKIT_CACHE_MAX` bytes in all encoders' folders together, no entry
over a per-entry cap, and room made before a shard is written by deleting the least recently used shards (by their
modification time, which a run sets on each shard it reads from). Folders are reached through descriptors opened
without following links, and only legokit's own shard files in this user's hash-named folders are ever deleted."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from legokit.errors import env_count
from legokit.progress import log

DISK_ENV = "LEGOKIT_CACHE_MAX"
DEFAULT_DISK = 10 << 30  # bytes of encoder outputs kept on disk, all encoders together
MAX_ENTRY_BYTES = 64 << 20  # one sample's outputs over this are never written (kept in memory for the run only)
ENTRY_SHARE = 16  # nor over this fraction of the budget
SHARD_SHARE = 4  # and a shard is written before it holds more than this fraction of the budget
LOCK_SECONDS = 30.0  # how long a writer waits for another one's eviction and write before going on without it
KEY = re.compile(r"[0-9a-f]{64}")
SHARD_NAME = re.compile(r"[0-9]{8}-[0-9]{6}(-[0-9]{9})?-[0-9]{1,10}-[0-9a-f]{8}\.safetensors")  # what `flush` names
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def disk_budget(environ: Mapping[str, str] | None = None) -> int:
    """`LEGOKIT_CACHE_MAX`, a positive number of bytes (`10e9` reads as 10 GB), else 10 GiB."""
    return env_count(DISK_ENV, DEFAULT_DISK, environ, " of bytes (as 10e9)")


@dataclass(frozen=True)
class DiskBudget:
    """What the cache may hold on disk: `limit` bytes in all, no entry over `entry_cap`, shards of `shard_bytes`."""

    limit: int

    @property
    def entry_cap(self) -> int:
        return min(MAX_ENTRY_BYTES, self.limit // ENTRY_SHARE)

    @property
    def shard_bytes(self) -> int:
        return max(1, self.limit // SHARD_SHARE)


@dataclass(frozen=True)
class Shard:
    """A shard file that eviction may delete: its encoder folder, name, size, last use (mtime) and inode."""

    folder: str
    name: str
    size: int
    used: int
    inode: int


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _open_folder(base: int, key: str) -> int | None:
    """A descriptor of an encoder's folder inside `base`, or None unless it is a real folder (not a link), this
    user's and writable by no one else: the folders that a run reads."""
    try:
        if not stat.S_ISDIR(os.stat(key, dir_fd=base, follow_symlinks=False).st_mode):
            return None
        fd = os.open(key, _DIRECTORY, dir_fd=base)
    except OSError:
        return None
    info = os.fstat(fd)
    if (_uid() is not None and info.st_uid != _uid()) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        return None
    return fd


def usage(base: int) -> tuple[int, list[Shard]]:
    """Bytes of the regular files in the encoders' folders under `base` (a descriptor), and their shards."""
    with os.scandir(base) as found:
        keys = [entry.name for entry in found if KEY.fullmatch(entry.name)]
    total, shards = 0, []
    for key in keys:
        folder = _open_folder(base, key)
        if folder is None:
            continue
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:  # gone meanwhile (a writer's temporary file renamed)
                        continue
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    total += info.st_size
                    if SHARD_NAME.fullmatch(entry.name):
                        shards.append(Shard(key, entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
        finally:
            os.close(folder)
    return total, shards


def _remove(base: int, shard: Shard) -> bool:
    """Delete one shard, only if its folder is still this user's and its name still the regular file seen."""
    folder = _open_folder(base, shard.folder)
    if folder is None:
        return False
    try:
        info = os.stat(shard.name, dir_fd=folder, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_ino != shard.inode:
            return False
        os.unlink(shard.name, dir_fd=folder)
        return True
    except OSError:
        return False
    finally:
        os.close(folder)


def evict(base: int, path: Path, needed: int, limit: int, evicted: Callable[[str, Path], None]) -> bool:
    """Whether `needed` more bytes fit within `limit` under `base` (`path`'s descriptor) once the least recently
    used shards are deleted (none if they would not fit even so); `evicted(key, path)` hears of each deleted."""
    total, shards = usage(base)
    if total - sum(shard.size for shard in shards) + needed > limit:
        return False  # held by files that are not legokit's shards: deleting these would not make room
    for shard in sorted(shards, key=lambda s: (s.used, s.name)):
        if total + needed <= limit:
            break
        if _remove(base, shard):
            total -= shard.size
            evicted(shard.folder, path / shard.folder / shard.name)
    return total + needed <= limit


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    """An exclusive lock on the folder (one writer evicts and writes at a time), waited for at most LOCK_SECONDS:
    a process that holds it for longer delays this one's write, never stops it."""
    deadline, held = time.monotonic() + LOCK_SECONDS, False
    while not held:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            if time.monotonic() > deadline:
                log.debug("the encoder cache's lock is held for over %.0f s; writing without it", LOCK_SECONDS)
                break
            time.sleep(0.05)
        except OSError:  # a file system without locks
            break
    try:
        yield
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def room(path: Path, needed: int, budget: DiskBudget, evicted: Callable[[str, Path], None]) -> Iterator[bool]:
    """Hold the lock of the cache's encoder folders (`path`: `<root>/encoder-tokens`, not a link) and make room for
    `needed` bytes within the budget; yields whether they fit (the caller writes them inside, still locked)."""
    fd = os.open(path, _DIRECTORY)
    try:
        with _locked(fd):
            yield needed <= budget.limit and evict(fd, path, needed, budget.limit, evicted)
    finally:
        os.close(fd)
