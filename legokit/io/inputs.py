"""Reading a user's files: each is refused unless it is a regular file (a pipe, a device or a directory never
reaches an open that could block), and sizes are checked before anything is read."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from legokit.errors import ArtifactError, LegoError

SPECIAL_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a file of this `st_mode` is, in words (for refusals)."""
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "a special file")


READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def refuse_special_input(path: str | os.PathLike[str], error: type[LegoError] = ArtifactError) -> None:
    """Refuse an input that is missing or is not a regular file, without opening it (a pipe's open would block)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise error(f"{path}: no such file") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {file_kind(mode)}, not a regular file; legokit reads regular files only")


def open_input(path: str | os.PathLike[str], error: type[LegoError] = ArtifactError) -> BinaryIO:
    """An input file opened for binary reading, refused (as `error`) unless it is a regular file: checked before the
    open, opened non-blocking (a pipe swapped in meanwhile cannot hang the open) and checked again on the descriptor.
    Every file legokit reads from a user's folder goes through here."""
    path = Path(path)
    refuse_special_input(path, error)
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {file_kind(mode)}, not a regular file; legokit reads regular files only")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike[str], error: type[LegoError] = ArtifactError, limit: int | None = None) -> bytes:
    """The bytes of a regular input file (see `open_input`); over `limit` bytes is refused before reading."""
    with open_input(path, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise error(f"{path}: {size:,} bytes (cap {limit:,})")
        return handle.read()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks: the artifact's content hash that adapters record."""
    digest = hashlib.sha256()
    with open_input(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
