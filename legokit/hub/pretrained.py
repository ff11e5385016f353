"""The Hub methods every legokit model has, named as huggingface_hub's `ModelHubMixin` names them
(`save_pretrained`, `from_pretrained`, `push_to_hub`): one `.st` file (`legokit.artifacts.files`) and its model card
in a folder or a Hub repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from legokit.artifacts.describe import describe
from legokit.artifacts.files import load, save
from legokit.artifacts.registry import kind_of
from legokit.errors import ArtifactError
from legokit.hub.card import model_card
from legokit.hub.publish import pull, push
from legokit.hub.refs import is_hub_ref, is_repo_id, local_artifact
from legokit.io.atomic import write_atomic

DEFAULT_FILE = "model.st"


def _one_artifact(folder: Path, filename: str | None) -> Path:
    if filename is not None:
        return folder / filename
    found = sorted(folder.glob("*.st"))
    if len(found) != 1:
        raise ArtifactError(f"{folder}: expected one .st artifact, found {len(found) or 'none'}; name it (filename=)")
    return found[0]


class HubMixin:
    """`save_pretrained`, `from_pretrained` and `push_to_hub` for legokit models: a model is one `.st` file (and a
    model card, README.md) in a folder or a Hub repository."""

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, filename: str = DEFAULT_FILE, repo_id: str | None = None
    ) -> Path:
        """Write the model into a folder as `filename` with its model card; returns the artifact's path."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = save(self, folder / filename)
        card = model_card(describe(path, verify=False), repo_id or f"your-org/{folder.name}", path.name)
        write_atomic(folder / "README.md", card.encode(), [path])
        return path

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        device: str | torch.device = "cpu",
    ) -> Any:
        """A model of this class from a `.st` file, a folder holding one, a Hub reference (hf://org/repo/file.st,
        hf://org/repo@rev/file.st) or a Hub repository (org/repo[@rev], its one `.st` file or `filename`)."""
        source = os.fspath(pretrained_model_name_or_path)
        local = Path(source)
        if is_hub_ref(source) or local.is_file():
            path = local_artifact(source)
        elif local.is_dir():
            path = _one_artifact(local, filename)
        elif is_repo_id(source):
            path = pull(f"hf://{source.rstrip('/')}/{filename}" if filename else source)
        else:
            raise ArtifactError(f"{source}: no such file or folder (nor a Hub repository id, org/repo)")
        model = load(path, device)
        kind = kind_of(model)
        if kind.model is None or not issubclass(kind.model, cls):  # `kind_of` gives a kind with a model class
            raise ArtifactError(f"{path}: holds a {kind.name} model, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, *, filename: str = DEFAULT_FILE, private: bool = False) -> str:
        """Upload the model (as `filename`) with its model card to a Hub repository; returns the commit URL."""
        with tempfile.TemporaryDirectory() as folder:
            path = save(self, Path(folder) / filename)
            return push(path, repo_id, private=private)
