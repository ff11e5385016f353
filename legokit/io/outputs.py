"""Output paths checked before any work: every file a command will write (-o, --json, --plot, a recipe's output) is
refused at the start, in one line, when it could not be written or would harm what is there; and folders that
legokit fills (the demo's) are checked for links before each write."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from legokit.errors import ConfigError, WriteError
from legokit.io.atomic import inside, refuse_inputs
from legokit.io.inputs import file_kind

SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")  # kernel and device files: never an output, whatever the links say
LABELS = "labels.csv"  # what makes a folder a (labelled) dataset folder
TABLE_SUFFIX = ".csv"  # NAME.csv beside labels.csv is read as modality NAME
SAMPLE_SUFFIXES = (".safetensors", ".h5", ".txt")  # NAME/ID.safetensors, .h5 and .txt are read as samples of NAME

PathLike = str | os.PathLike[str]


def _under(path: str, folder: str) -> bool:
    """Whether the absolute `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder + os.sep)


def refuse_system_path(path: PathLike) -> None:
    """Refuse a path under /proc, /sys or /dev, as spelled or as its links resolve (/dev/shm included)."""
    spelled, real = os.path.abspath(path), os.path.realpath(path)
    for folder in SYSTEM_FOLDERS:
        if _under(spelled, folder) or _under(real, folder):
            raise WriteError(f"{path}: under {folder}, a system folder; legokit writes only into ordinary folders")


def refuse_symlink(path: PathLike) -> None:
    """Refuse an output that is a symbolic link (to a file, or dangling): its target is never meant to change."""
    if os.path.islink(path):
        raise WriteError(f"{path}: is a symbolic link; legokit does not write at links: name another path")


def refuse_parent(path: PathLike) -> None:
    """Refuse an output whose folder is missing, is not a folder (`file/child.csv`) or cannot be written."""
    folder = Path(path).parent
    try:
        info = os.stat(folder)
    except FileNotFoundError as exc:
        raise WriteError(f"{path}: directory {folder} does not exist") from exc
    except NotADirectoryError as exc:
        raise WriteError(f"{path}: a part of {folder} is a file, not a folder") from exc
    except OSError as exc:
        raise WriteError(f"{path}: cannot check its folder ({exc.strerror or exc})") from exc
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else file_kind(info.st_mode)
        raise WriteError(f"{path}: {folder} is {kind}, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"{path}: cannot write into {folder} (permission denied)")


def refuse_dataset_folders(path: PathLike, folders: Iterable[PathLike | None] = ()) -> None:
    """Refuse an output inside `folders` (what the command fills or reads as data), or where a dataset folder would
    read it as data: NAME.csv beside a labels.csv, or NAME/ID.safetensors or NAME/ID.txt below one."""
    for folder in folders:
        if folder is not None and inside(path, folder):
            raise WriteError(f"{path}: inside {folder}, a folder this command reads or fills; write it elsewhere")
    real = Path(os.path.realpath(path))
    suffix = real.suffix.lower()
    for folder, reads in ((real.parent, suffix == TABLE_SUFFIX), (real.parent.parent, suffix in SAMPLE_SUFFIXES)):
        if reads and (folder / LABELS).is_file():
            raise WriteError(
                f"{path}: in a dataset folder ({folder} holds {LABELS}), where it would be read as data; write it "
                "elsewhere"
            )


def check_output(path: PathLike, inputs: Sequence[PathLike | None], folders: Sequence[PathLike] = ()) -> None:
    """One output, before any work: not an input nor inside an input folder, a regular file if it exists (never a
    pipe, device or folder), not under /proc, /sys or /dev, not a link, in a writable folder, never read as data."""
    refuse_inputs(path, inputs)
    refuse_system_path(path)
    refuse_symlink(path)
    refuse_parent(path)
    refuse_dataset_folders(path, folders)


def check_outputs(
    inputs: Sequence[PathLike | None], written: Sequence[tuple[str, str]], folders: Sequence[PathLike] = ()
) -> None:
    """Every output (flag, path) of a command, before any work (`check_output`); no two outputs are one file."""
    for number, (flag, value) in enumerate(written):
        for other, earlier in written[:number]:
            if os.path.realpath(value) == os.path.realpath(earlier):
                raise ConfigError(f"{flag} and {other} name the same file ({value}); give each its own")
        check_output(value, inputs, folders)


def refuse_links_below(root: PathLike) -> int:
    """Refuse (WriteError) a symbolic link, pipe, socket or device anywhere below `root`, without following any:
    what a writer then replaces by name is a file of the folder. Returns the number of entries seen."""
    pending, seen = [Path(root)], 0
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                found = [(Path(e.path), e.stat(follow_symlinks=False).st_mode) for e in entries]
        except OSError as exc:
            raise WriteError(f"{folder}: cannot list it ({exc.strerror or exc})") from exc
        for path, mode in found:
            seen += 1
            _refuse_entry(root, path, mode)
            if stat.S_ISDIR(mode):
                pending.append(path)
    return seen


def _refuse_entry(root: PathLike, path: Path, mode: int) -> None:
    """Refuse an entry below `root` that is a link, or neither a folder nor a regular file."""
    if stat.S_ISLNK(mode):
        raise WriteError(f"{path}: a symbolic link inside {root}; legokit never writes through a link: remove it")
    if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        raise WriteError(f"{path}: is {file_kind(mode)} inside {root}; legokit writes regular files only: remove it")


def refuse_links_on_the_way(root: PathLike, path: PathLike) -> None:
    """Refuse `path` (below `root`) when any component from `root` down to it is a link or a special file; checked
    just before a write, so that a folder swapped for a link since the last look is never written through."""
    base, target = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    if not target.is_relative_to(base):
        raise WriteError(f"{path}: outside {root}")
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return  # made fresh from here down
        except OSError as exc:
            raise WriteError(f"{current}: cannot check it ({exc.strerror or exc})") from exc
        _refuse_entry(root, current, mode)
