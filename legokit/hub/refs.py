"""Hugging Face Hub references, `hf://org/repo/path/file.st[@revision]` or HfFileSystem's `hf://org/repo@revision/path`,
resolved to local files through huggingface_hub's cache (what persist, describe and adapters need to read)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from legokit.errors import ConfigError, LegoError, brief

SCHEME = "hf://"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FILE_PART = re.compile(r"^[^\x00-\x1f\\]{1,255}$")
_SPECIAL_REF = re.compile(r"^(refs/pr/[0-9]+|refs/convert/parquet)(?:/(.*))?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


class HubError(LegoError):
    """A Hub reference cannot be resolved: no network, no such repository or file, not cached while offline."""


@dataclass(frozen=True)
class HubRef:
    """A file in a Hub model repository, optionally at a revision (branch, tag or commit)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(text: str) -> bool:
    return text.startswith(SCHEME)


def is_repo_id(text: str) -> bool:
    """Whether `text` reads as a Hub repository, `org/repo` or `org/repo@revision` (not a file name)."""
    repo, _, revision = text.partition("@")
    parts = repo.split("/")
    return (
        len(parts) == 2
        and all(_REPO_PART.match(p) for p in parts)
        and not repo.endswith(".st")
        and (not revision or bool(_REVISION.match(revision)))
    )


def _split(body: str) -> tuple[list[str], str | None]:
    """`org/repo[@rev]/path` or `org/repo/path[@rev]` -> the path's parts and the revision."""
    org, _, rest = body.partition("/")
    repo, _, path = rest.partition("/")
    if "@" in org:
        raise ConfigError(f"hf://{body}: a revision goes after the repository, hf://org/repo@REV/file.st")
    if "@" in repo:  # HfFileSystem's form: the revision right after the repository (URL-encoded if it holds "/",
        # except the Hub's own refs/pr/N and refs/convert/parquet)
        repo, _, revision = repo.partition("@")
        special = _SPECIAL_REF.match(f"{revision}/{path}")
        if special:
            revision, path = special.group(1), special.group(2)
        revision = unquote(revision)
        if "@" in path:
            raise ConfigError(f"hf://{body}: two revisions; give one, hf://org/repo@REV/file.st")
    else:
        path, _, revision = path.partition("@")
    if "@" in body and not revision:
        raise ConfigError(f"hf://{body}: an empty revision after '@'")
    return [p for p in [org, repo, *path.split("/")] if p], revision or None


def parse_ref(text: str) -> HubRef:
    """Read `hf://org/repo/file.st`, `hf://org/repo/dir/file.st@rev` or `hf://org/repo@rev/dir/file.st`."""
    if not is_hub_ref(text):
        raise ConfigError(f"{text!r} is not a Hub reference (hf://org/repo/file.st)")
    parts, revision = _split(text[len(SCHEME) :])
    if len(parts) < 3 or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{text!r}: a Hub reference needs org/repo/file, e.g. hf://my-lab/pbc-labs-block/labs.st")
    if not all(_REPO_PART.match(p) for p in parts[:2]) or "--" in "/".join(parts[:2]):
        raise ConfigError(
            f"{text!r}: {'/'.join(parts[:2])!r} is not a Hub repository name (letters, digits, '-', '_', '.')"
        )
    if any(not _FILE_PART.match(p) for p in parts[2:]):
        raise ConfigError(f"{text!r}: the file path holds characters a Hub path cannot")
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise ConfigError(f"{text!r}: {revision!r} is not a revision (a branch, tag or commit)")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), revision)


def cached_path(ref: HubRef) -> Path | None:
    """The file in the local Hugging Face cache, or None when it has not been downloaded yet (no network used)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


def resolve(ref: HubRef, local_files_only: bool = False) -> Path:
    """A local path for a Hub file: from the cache, downloading it first unless `local_files_only`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, local_files_only=local_files_only)
        )
    except LocalEntryNotFoundError as exc:  # before EntryNotFoundError, of which it is a kind
        raise HubError(f"{ref}: not in the local cache and the Hub cannot be reached (offline?)") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{ref}: repository {ref.repo_id} not found (or private: set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{ref}: revision {ref.revision} not found") from exc
    except EntryNotFoundError as exc:
        raise HubError(f"{ref}: no file {ref.filename} in {ref.repo_id}") from exc
    except network_errors() as exc:
        raise HubError(f"{ref}: download failed ({brief(exc, 200)})") from exc


def local_artifact(path: str | os.PathLike[str]) -> Path:
    """A local path for an artifact given as a path or as `hf://org/repo/file.st` (downloaded once, then cached)."""
    text = os.fspath(path)
    return resolve(parse_ref(text)) if is_hub_ref(text) else Path(text)


def network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the Hub cannot be reached or answers with an error."""
    from huggingface_hub import errors

    return (errors.HTTPError, OSError)


def repo_from(target: str) -> tuple[str, str | None, str | None]:
    """`org/repo`, `org/repo@rev` or `hf://org/repo[/file.st][@rev]` (or `hf://org/repo@rev/file.st`) ->
    (repo_id, filename or None, revision)."""
    parts, revision = _split(target[len(SCHEME) :] if is_hub_ref(target) else target)
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{target!r}: expected a Hub repository, org/repo (or hf://org/repo/file.st)")
    if not all(_REPO_PART.match(p) for p in parts[:2]) or "--" in "/".join(parts[:2]):
        raise ConfigError(
            f"{target!r}: {'/'.join(parts[:2])!r} is not a Hub repository name (letters, digits, '-', '_', '.')"
        )
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise ConfigError(f"{target!r}: {revision!r} is not a revision (a branch, tag or commit)")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision
