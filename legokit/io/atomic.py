"""Writing files so that nothing is lost: an output appears whole or not at all (temporary file beside it, fsync,
rename), never replaces one of the command's inputs, and is always a regular file. Failures are `WriteError`s."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import BinaryIO

from legokit.errors import WriteError, quoted
from legokit.io.inputs import file_kind


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _remove_stale(directory: Path, name: str, keep: Iterable[Path] = ()) -> None:
    """Remove temporary files that an earlier write to `name` left when its process was killed (kill -9): ours by
    name (.NAME.PID.XXXXXXXX.tmp, as mkstemp makes them), owned by this user, from a process that no longer runs,
    and none of the command's inputs (`keep`)."""
    ours = re.compile(rf"^\.{re.escape(name)}\.([0-9]{{1,9}})\.[a-z0-9_]{{8}}\.tmp$")
    for temp in directory.glob(f".{glob_escape(name)}.*.tmp"):
        found = ours.match(temp.name)
        try:
            if (
                not found
                or not temp.is_file()
                or temp.is_symlink()
                or temp.stat().st_uid != os.getuid()
                or _alive(int(found.group(1)))
                or any(_same_file(temp, Path(k)) for k in keep)
            ):
                continue
            temp.unlink()
        except OSError:
            continue


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (any doubt counts as alive: its file is then left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


@contextmanager
def atomic_output(
    path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = ()
) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only if the block finishes: written beside it, fsynced, renamed in one
    step. On any error the temporary file is removed and `path` keeps its old content."""
    path = Path(path)
    kept = [Path(p) for p in inputs if p is not None]
    refuse_inputs(path, kept)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise WriteError(f"{path}: directory {directory} does not exist")
    _remove_stale(directory, path.name, kept)
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write there ({exc.strerror or exc})") from exc
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; an output gets the usual mode
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        if os.path.exists(temp):
            os.unlink(temp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"{path}: cannot write there ({exc.strerror or exc})") from exc
        raise


def write_folder_atomic(path: str | os.PathLike[str], files: Iterable[tuple[str, bytes]]) -> int:
    """Write a new folder of files that appears whole or not at all: written into a temporary folder beside `path`,
    renamed in one step (an existing `path` is never replaced: a WriteError; nor is a file written twice: each
    name once, a plain file name). The folder gets the usual mode (0777 less the umask). Returns the number of files."""
    path = Path(path)
    if os.path.lexists(path):
        raise WriteError(f"{path}: already exists; legokit writes a new folder there, never over one")
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise WriteError(f"{path}: cannot write there ({exc.strerror or exc})") from exc
    written: set[str] = set()
    try:
        for name, data in files:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\0" in name:
                raise WriteError(f"{path}: {quoted(str(name))} is not a plain file name")
            if name in written:
                raise WriteError(f"{path}: {quoted(name)} is given twice; each file is written once")
            written.add(name)
            with open(temp / name, "xb") as out:
                out.write(data)
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes 0700; a new folder gets the usual mode
        os.rename(temp, path)  # onto an existing non-empty folder or a file this fails: nothing is replaced
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise WriteError(f"{path}: cannot write there ({exc.strerror or exc})") from exc
        raise
    return len(written)


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(
    path: str | os.PathLike[str], data: bytes, inputs: Iterable[str | os.PathLike[str] | None] = ()
) -> None:
    """Write bytes to `path` atomically (see `atomic_output`); `inputs` are never replaced."""
    with atomic_output(path, inputs) as out:
        out.write(data)


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether `path` (existing or not) lies in `folder` at any depth, links resolved."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def refuse_inputs(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an empty output path, one that exists as anything but a regular file, one of the command's inputs
    (through any link or spelling), or a path inside an input folder (a new file there would be read with it)."""
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise WriteError("an empty output path; name the file to write")
    refuse_special_output(path)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if _same_file(path, source) or (source.is_dir() and inside(path, source) and os.path.lexists(path)):
            raise WriteError(f"{path}: refusing to overwrite an input file; choose another output path")
        if source.is_dir() and inside(path, source):
            raise WriteError(
                f"{path}: inside {source}, a folder this command reads (a file there would be read as its data); "
                "choose another output path"
            )


def refuse_special_output(path: str | os.PathLike[str]) -> None:
    """Refuse an output path that exists (through any link) as anything but a regular file: the atomic rename
    would replace a pipe or a device node (as root, /dev/null itself) with a regular file."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new file (or a dangling link, which the rename replaces)
    except OSError as exc:
        raise WriteError(f"{path}: cannot check the output path ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise WriteError(f"{path}: is a directory; name a file to write")
    if not stat.S_ISREG(mode):
        raise WriteError(f"{path}: is {file_kind(mode)}, not a regular file; legokit writes regular files only")
