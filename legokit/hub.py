"""Hugging Face Hub references (`hf://org/repo/path/file.st[@revision]`), resolved through huggingface_hub's cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LegoError

SCHEME = "hf://"


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


def parse_ref(text: str) -> HubRef:
    """Read `hf://org/repo/file.st` (or `.../dir/file.st@rev`)."""
    if not is_hub_ref(text):
        raise ConfigError(f"{text!r} is not a Hub reference (hf://org/repo/file.st)")
    body, _, revision = text[len(SCHEME):].partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3 or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{text!r}: a Hub reference needs org/repo/file, e.g. hf://my-lab/pbc-labs-block/labs.st")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


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
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, local_files_only=local_files_only))
    except LocalEntryNotFoundError:  # before EntryNotFoundError, of which it is a kind
        raise HubError(f"{ref}: not in the local cache and the Hub cannot be reached (offline?)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{ref}: repository {ref.repo_id} not found (or private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{ref}: revision {ref.revision} not found") from None
    except EntryNotFoundError:
        raise HubError(f"{ref}: no file {ref.filename} in {ref.repo_id}") from None
    except OSError as exc:
        raise HubError(f"{ref}: download failed ({' '.join(str(exc).split())[:200]})") from None
