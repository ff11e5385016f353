"""Publishing on the Hugging Face Hub: `push` (an artifact with its model card and a config.json summary) and
`pull` (into the cache); references and downloads are `legokit.hub.refs`'s."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from legokit.artifacts.describe import describe
from legokit.artifacts.format import ArtifactError, read_metadata
from legokit.errors import ConfigError, brief
from legokit.hub.card import model_card
from legokit.hub.refs import HubError, HubRef, network_errors, repo_from, resolve
from legokit.io.atomic import atomic_output


def push(path: str | os.PathLike[str], repo_id: str, private: bool = False) -> str:
    """Upload an artifact, its model card (README.md) and a config.json summary (which the Hub counts downloads
    by) to a Hub model repository, creating it if needed; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    path = Path(path)
    facts = describe(path)
    repo_id, filename, _ = repo_from(repo_id)
    if filename is not None:
        raise ConfigError(f"push takes a repository (org/repo), not a file path: {repo_id}/{filename}")
    if get_token() is None:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before pushing")
    summary = {
        "library_name": "legokit",
        "artifact": path.name,
        "kind": facts["kind"],
        "task": facts["task"],
        "latent": facts["latent"],
        "sha256": facts["sha256"],
    }
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(facts, repo_id, path.name).encode()),
        CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=json.dumps(summary, indent=2).encode()),
    ]
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=f"Upload {path.name} with legokit")
    except network_errors() as exc:
        raise HubError(f"{repo_id}: push failed ({brief(exc, 200)})") from exc
    return str(info.commit_url)


def pull(target: str, output: str | os.PathLike[str] | None = None) -> Path:
    """Download a repository's artifact into the Hugging Face cache (and copy it to `output` if given). The repo
    must hold exactly one `.st` file unless the target names it (hf://org/repo/file.st)."""
    from huggingface_hub import HfApi, constants

    repo_id, filename, revision = repo_from(target)
    if filename is None:
        if constants.HF_HUB_OFFLINE:
            filename = _cached_artifact(repo_id, revision)
        else:
            try:
                files = [f for f in HfApi().list_repo_files(repo_id, revision=revision) if f.endswith(".st")]
            except network_errors() as exc:
                raise _classify(repo_id, exc) from exc
            if len(files) != 1:
                found = ", ".join(files) or "none"
                raise HubError(
                    f"{repo_id}: expected one .st artifact in the repository, found {found}; name it (hf://{repo_id}/FILE.st)"
                )
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
    names = sorted(
        {f.file_name for r in repos for rev in r.revisions for f in rev.files if f.file_name.endswith(".st")}
    )
    if len(names) != 1:
        raise HubError(
            f"{repo_id}: offline (HF_HUB_OFFLINE) and {'no' if not names else 'more than one'} cached .st "
            "artifact; pull it once online, or name the file (hf://org/repo/file.st)"
        )
    return names[0]


def _classify(repo_id: str, exc: BaseException) -> HubError:
    from huggingface_hub import errors

    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"{repo_id}: repository not found (or private: set HF_TOKEN)")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubError(f"{repo_id}: the Hub answered with an error ({brief(exc, 160)})")
    return HubError(f"{repo_id}: cannot reach the Hub ({type(exc).__name__}); set HF_HUB_OFFLINE=1 to use the cache")
