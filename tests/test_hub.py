"""Hub sharing, offline: reference parsing, model cards, resolution from a local Hugging Face cache, clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from legokit import ConfigError
from legokit.artifacts.describe import describe
from legokit.artifacts.files import save_block
from legokit.artifacts.merging import merge_files
from legokit.hub.card import model_card
from legokit.hub.refs import HubRef, parse_ref, repo_from
from legokit.wrap import wrap_builtin

from .conftest import SMALL

REPO = "my-lab/pbc-labs-block"


def _block(modality: str = "labs", seed: int = 0):
    torch.manual_seed(seed)
    block = wrap_builtin("snn", None, modality, "survival:4", {"in_features": 6, "hidden": 16}, **SMALL)
    block.provenance = {
        "trained": {
            "data": "pbc",
            "train_samples": 272,
            "split": "random 70/15/15, seed 0",
            "best_epoch": 9,
            "config": {"epochs": 40},
            "val": {"c_index": 0.81},
            "test": {"c_index": 0.79},
        }
    }
    return block


def _populate_cache(hf_home: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Lay files out as huggingface_hub's cache does: blobs by hash, a snapshot of symlinks, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def _offline_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def _run(args: list[str], env: dict[str, str]):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "legokit.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hf://org/repo/labs.st", HubRef("org/repo", "labs.st")),
        ("hf://org/repo/blocks/labs.st@v1", HubRef("org/repo", "blocks/labs.st", "v1")),
    ],
)
def test_hub_references_are_parsed(text, expected):
    assert parse_ref(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["hf://org/repo", "hf://org", "hf://org/../x.st", "org/repo/x.st"])
def test_malformed_hub_references_are_refused(text):
    with pytest.raises(ConfigError):
        parse_ref(text)


def test_repository_targets_are_parsed():
    assert repo_from("my-lab/block") == ("my-lab/block", None, None)
    assert repo_from("hf://my-lab/block/labs.st@main") == ("my-lab/block", "labs.st", "main")
    with pytest.raises(ConfigError, match="expected a Hub repository"):
        repo_from("block")


def test_model_card_is_generated_from_the_artifact(tmp_path):
    path = save_block(_block(), tmp_path / "labs.st")
    card = model_card(describe(path), REPO, "labs.st")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: legokit" in front and "- labs" in front and "- survival" in front
    for needed in (
        "LegoBlock: labs",
        "survival:4",
        "8x16",
        "(batch, 6)",
        "snn(",
        "c_index 0.790",
        f'legokit.load("hf://{REPO}/labs.st")',
        f"legokit pull {REPO}",
        "272 training samples",
    ):
        assert needed in body, needed
    assert 'pip install -e ".[hf]"' in body and "pypi.org" not in body  # legokit installs from its repository


def test_model_card_of_a_merged_model_lists_its_blocks(tmp_path):
    paths = [save_block(_block(m, i), tmp_path / f"{m}.st") for i, m in enumerate(("labs", "genes"))]
    card = model_card(describe(merge_files(paths, tmp_path / "m.st")), REPO, "m.st")
    assert "lego-merged" in card and "block genes" in card and "block labs" in card


def test_a_block_pulled_once_loads_offline_from_the_cache(tmp_path):
    block = _block()
    artifact = save_block(block, tmp_path / "labs.st")
    hf_home = tmp_path / "hf"
    _populate_cache(hf_home, REPO, {"labs.st": artifact.read_bytes(), "README.md": b"card"})
    env = _offline_env(hf_home)
    pulled = _run(["pull", REPO, "-o", str(tmp_path / "copy.st")], env)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "copy.st").read_bytes() == artifact.read_bytes()
    x = torch.randn(3, 6)
    torch.save(x, tmp_path / "x.pt")
    code = f"""
        import sys, torch, legokit
        block = legokit.load_block("hf://{REPO}/labs.st")
        x = torch.load(sys.argv[1])
        torch.save(block(x).detach(), sys.argv[2])
    """
    import subprocess
    import sys
    import textwrap

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), block.eval()(x), atol=1e-6)


def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    env = _offline_env(tmp_path / "hf")
    for args, message in (
        (["pull", "other/repo"], "offline (HF_HUB_OFFLINE)"),
        (["inspect", "hf://other/repo/x.st"], "not in the local cache"),
    ):
        result = _run(args, env)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_cached_file_that_is_not_an_artifact_is_refused(tmp_path):
    hf_home = tmp_path / "hf"
    _populate_cache(hf_home, "someone/model", {"weights.st": b"not a safetensors file at all"})
    result = _run(["pull", "someone/model"], _offline_env(hf_home))
    assert result.returncode == 1 and "not a legokit artifact" in result.stderr


def test_push_without_a_token_says_so(tmp_path):
    path = save_block(_block(), tmp_path / "labs.st")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    result = _run(["push", str(path), REPO], env)
    assert result.returncode == 1 and "no Hugging Face token" in result.stderr


def test_a_recipe_uses_a_cached_hub_block_offline(tmp_path):
    labs = save_block(_block("labs", 0), tmp_path / "labs.st")
    save_block(_block("genes", 1), tmp_path / "genes.st")
    hf_home = tmp_path / "hf"
    _populate_cache(hf_home, REPO, {"labs.st": labs.read_bytes()})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"blocks:\n  labs: {{artifact: 'hf://{REPO}/labs.st'}}\n  genes: {{artifact: genes.st}}\n"
        "operation: {kind: merge}\noutput: merged.st\n"
    )
    env = _offline_env(hf_home)
    dry = _run(["run", str(recipe), "--dry-run"], env)
    assert dry.returncode == 0 and "not cached yet" not in dry.stdout, dry.stderr
    ran = _run(["run", str(recipe)], env)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "merged.st").is_file()
