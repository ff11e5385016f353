"""Hugging Face Hub references (`hf://org/repo/path/file.st[@revision]`), resolved through huggingface_hub's cache."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LegoError, brief

SCHEME = "hf://"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FILE_PART = re.compile(r"^[^\x00-\x1f\\]{1,255}$")
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


def parse_ref(text: str) -> HubRef:
    """Read `hf://org/repo/file.st` (or `.../dir/file.st@rev`)."""
    if not is_hub_ref(text):
        raise ConfigError(f"{text!r} is not a Hub reference (hf://org/repo/file.st)")
    body, _, revision = text[len(SCHEME):].partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3 or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{text!r}: a Hub reference needs org/repo/file, e.g. hf://my-lab/pbc-labs-block/labs.st")
    if not all(_REPO_PART.match(p) for p in parts[:2]) or "--" in "/".join(parts[:2]):
        raise ConfigError(f"{text!r}: {'/'.join(parts[:2])!r} is not a Hub repository name (letters, digits, '-', '_', '.')")
    if any(not _FILE_PART.match(p) for p in parts[2:]):
        raise ConfigError(f"{text!r}: the file path holds characters a Hub path cannot")
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise ConfigError(f"{text!r}: {revision!r} is not a revision (a branch, tag or commit)")
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
    except LocalEntryNotFoundError as exc:  # before EntryNotFoundError, of which it is a kind
        raise HubError(f"{ref}: not in the local cache and the Hub cannot be reached (offline?)") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{ref}: repository {ref.repo_id} not found (or private: set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{ref}: revision {ref.revision} not found") from exc
    except EntryNotFoundError as exc:
        raise HubError(f"{ref}: no file {ref.filename} in {ref.repo_id}") from exc
    except _network_errors() as exc:
        raise HubError(f"{ref}: download failed ({brief(exc, 200)})") from exc


def local_artifact(path: str | os.PathLike[str]) -> Path:
    """A local path for an artifact given as a path or as `hf://org/repo/file.st` (downloaded once, then cached)."""
    text = os.fspath(path)
    return resolve(parse_ref(text)) if is_hub_ref(text) else Path(text)


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the Hub cannot be reached or answers with an error."""
    from huggingface_hub import errors

    return (errors.HTTPError, OSError)


def repo_from(target: str) -> tuple[str, str | None, str | None]:
    """`org/repo`, `org/repo@rev` or `hf://org/repo[/file.st][@rev]` -> (repo_id, filename or None, revision)."""
    body = target[len(SCHEME):] if is_hub_ref(target) else target
    body, _, revision = body.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{target!r}: expected a Hub repository, org/repo (or hf://org/repo/file.st)")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


def model_card(facts: dict, repo_id: str, filename: str) -> str:
    """The repository's README.md, from an artifact's facts (see `legokit.describe`): YAML front matter with
    `library_name: legokit` and tags, what the block is, how it was trained, and how to use it."""
    from . import __version__

    kind = facts["kind"]
    modalities = [facts["modality"]] if kind == "block" else facts["modalities"]
    task = facts["task"]
    tags = ["legokit", "mm-lego", f"lego-{kind}", "multimodal", task.split(":")[0], *modalities]
    lines = ["---", "library_name: legokit", "tags:", *(f"- {t}" for t in dict.fromkeys(tags)), "---", ""]
    title = f"LegoBlock: {facts['modality']}" if kind == "block" else f"legokit {kind} model: {', '.join(modalities)}"
    lines += [f"# {title}", "",
              f"A [legokit](https://pypi.org/project/legokit/) {kind} artifact (`{filename}`, legokit format "
              f"v{facts['format_version']}): one safetensors file that rebuilds the model without user code or pickle.",
              "", "| | |", "| --- | --- |"]
    rows = [("modalities", ", ".join(modalities)), ("task", task), ("latent", f"{facts['latent']} (channels x dims)")]
    if kind == "block":
        rows += [("input", f"(batch, {facts['input_shape'].replace('x', ', ').replace('?', 'n')})"),
                 ("encoder", facts["encoder"]), ("depth", str(facts["depth"])), ("fft axes", facts["fft_axes"])]
    else:
        rows += [(f"block {m}", f"{b['encoder']}; input (batch, {b['input_shape'].replace('x', ', ').replace('?', 'n')})")
                 for m, b in facts["blocks"].items()]
    rows += [("parameters", f"{facts['params']:,}"), ("sha256", f"`{facts['sha256']}`"),
             ("written by", f"legokit {facts['legokit_version']}")]
    lines += [f"| {k} | {v} |" for k, v in rows]
    trained = facts["provenance"].get("trained") or facts["provenance"].get("fused")
    if trained:
        lines += ["", "## Training", "", f"- data: `{trained.get('data')}` ({trained.get('train_samples')} training "
                  f"samples, split: {trained.get('split')})",
                  f"- best epoch {trained.get('best_epoch')} of at most {trained.get('config', {}).get('epochs')}"]
        for split in ("val", "test"):
            metrics = trained.get(split) or {}
            if metrics:
                lines.append(f"- {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    lines += ["", "## Use", "", "```bash", "pip install legokit", f"legokit pull {repo_id}            # cached; works offline afterwards",
              f"legokit inspect {filename}", "```", "", "```python", "import legokit",
              f'model = legokit.load("hf://{repo_id}/{filename}")', "```", "",
              f"In a recipe: `artifact: hf://{repo_id}/{filename}`. Card generated by legokit {__version__}.", ""]
    return "\n".join(lines)


def push(path: str | os.PathLike[str], repo_id: str, private: bool = False) -> str:
    """Upload an artifact, its model card (README.md) and a config.json summary (which the Hub counts downloads
    by) to a Hub model repository, creating it if needed; returns the commit URL."""
    import json

    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    from .describe import describe

    path = Path(path)
    facts = describe(path)
    repo_id, filename, _ = repo_from(repo_id)
    if filename is not None:
        raise ConfigError(f"push takes a repository (org/repo), not a file path: {repo_id}/{filename}")
    if get_token() is None:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before pushing")
    summary = {"library_name": "legokit", "artifact": path.name, "kind": facts["kind"], "task": facts["task"],
               "latent": facts["latent"], "sha256": facts["sha256"]}
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(facts, repo_id, path.name).encode()),
        CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=json.dumps(summary, indent=2).encode()),
    ]
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=f"Upload {path.name} with legokit")
    except _network_errors() as exc:
        raise HubError(f"{repo_id}: push failed ({brief(exc, 200)})") from exc
    return str(info.commit_url)


def pull(target: str, output: str | os.PathLike[str] | None = None) -> Path:
    """Download a repository's artifact into the Hugging Face cache (and copy it to `output` if given). The repo
    must hold exactly one `.st` file unless the target names it (hf://org/repo/file.st)."""
    import shutil

    from huggingface_hub import HfApi, constants

    from .artifact import ArtifactError, atomic_output, read_metadata

    repo_id, filename, revision = repo_from(target)
    if filename is None:
        if constants.HF_HUB_OFFLINE:
            filename = _cached_artifact(repo_id, revision)
        else:
            try:
                files = [f for f in HfApi().list_repo_files(repo_id, revision=revision) if f.endswith(".st")]
            except _network_errors() as exc:
                raise _classify(repo_id, exc) from exc
            if len(files) != 1:
                found = ", ".join(files) or "none"
                raise HubError(f"{repo_id}: expected one .st artifact in the repository, found {found}; name it (hf://{repo_id}/FILE.st)")
            filename = files[0]
    local = resolve(HubRef(repo_id, filename, revision))
    try:
        read_metadata(local)
    except ArtifactError as exc:
        raise HubError(f"{repo_id}/{filename}: not a legokit artifact") from exc
    if output is None:
        return local
    with atomic_output(output) as out, open(local, "rb") as source:
        shutil.copyfileobj(source, out)
    return Path(output)


def _cached_artifact(repo_id: str, revision: str | None) -> str:
    """The one .st file of a repository in the local cache (offline mode)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = [r for r in scan_cache_dir().repos if r.repo_id == repo_id and r.repo_type == "model"]
    except (CacheNotFound, OSError):  # no cache yet: nothing is cached
        repos = []
    names = sorted({f.file_name for r in repos for rev in r.revisions for f in rev.files if f.file_name.endswith(".st")})
    if len(names) != 1:
        raise HubError(f"{repo_id}: offline (HF_HUB_OFFLINE) and {'no' if not names else 'more than one'} cached .st "
                       "artifact; pull it once online, or name the file (hf://org/repo/file.st)")
    return names[0]


def _classify(repo_id: str, exc: BaseException) -> HubError:
    from huggingface_hub import errors

    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"{repo_id}: repository not found (or private: set HF_TOKEN)")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubError(f"{repo_id}: the Hub answered with an error ({brief(exc, 160)})")
    return HubError(f"{repo_id}: cannot reach the Hub ({type(exc).__name__}); set HF_HUB_OFFLINE=1 to use the cache")
