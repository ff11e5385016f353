"""YAML recipes: every shipped recipe runs on small blocks, and every mistake names the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from legokit import ConfigError
from legokit.artifacts.files import load, save_block
from legokit.recipe import Recipe
from legokit.wrap import wrap_builtin

from .conftest import SMALL, cli_here, run_cli

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def _block(modality: str, seed: int, task: str = "survival:4", latent=(8, 16)):
    torch.manual_seed(seed)
    return wrap_builtin("snn", None, modality, task, {"in_features": 7, "hidden": 16}, **{**SMALL, "latent": latent})


def _make_blocks(recipe: Recipe, missing: str = "nope.st", **kwargs) -> None:
    """Write a small block at each local path of the recipe, except paths named `missing`."""
    for seed, ref in enumerate(recipe.blocks):
        if ref.path is not None and ref.path.name != missing:
            ref.path.parent.mkdir(parents=True, exist_ok=True)
            save_block(_block(ref.modality, seed, **kwargs), ref.path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


GOOD = """
name: test
blocks:
  tab: {artifact: tab.st}
  lab: {artifact: blocks/lab.st}
operation: {kind: merge, phase: circular, weights: {tab: 2}}
output: out/model.st
"""


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """The PBC data folder and two small trained blocks, as `legokit demo` would leave them."""
    from legokit.data.bundled import write_pbc
    from legokit.spec import BlockSpec
    from legokit.training.workflows import train_block

    folder = tmp_path_factory.mktemp("demo-data")
    write_pbc(folder)
    blocks = {}
    for modality, encoder in (("labs", "snn"), ("visits", "abmil")):
        spec = BlockSpec(modality, encoder, {"hidden": 16}, latent=(8, 16), dim_head=16).override(epochs=2)
        block, _ = train_block(folder, spec, progress=False)
        blocks[modality] = save_block(block, folder.parent / f"{modality}-{folder.name}.st")
    return folder, blocks


@pytest.mark.parametrize("shipped", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_runs_on_small_data(shipped, tmp_path, demo_like):
    folder, blocks = demo_like
    copy = tmp_path / "recipes" / shipped.name
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    recipe = Recipe.from_yaml(copy)
    for ref in recipe.blocks:
        ref.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(blocks[ref.modality], ref.path)
    if recipe.data is not None:
        shutil.copytree(folder, recipe.data)
    recipe.output.parent.mkdir(parents=True, exist_ok=True)
    model = load(recipe.run(progress=False))
    inputs = {"labs": torch.randn(3, 17), "visits": torch.randn(3, 2, 13)}
    assert torch.isfinite(model({m: inputs[m] for m in model.modalities})).all()
    assert model.provenance["recipe"]["name"] == recipe.name
    assert model.provenance["recipe"]["text"] == recipe.path.read_text()


def test_a_fuse_recipe_needs_data_and_valid_training_settings(tmp_path):
    text = GOOD.replace("{kind: merge, phase: circular, weights: {tab: 2}}", "{kind: stack, epochs: 2}")
    with pytest.raises(ConfigError, match="recipe.yaml: data: missing"):
        Recipe.from_yaml(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="recipe.yaml: operation: epochs must be a positive integer"):
        Recipe.from_yaml(_write(tmp_path, text.replace("epochs: 2", "epochs: 0") + "data: d\n"))
    with pytest.raises(ConfigError, match="operation.phase: unknown key"):
        Recipe.from_yaml(_write(tmp_path, text.replace("epochs: 2", "phase: paper") + "data: d\n"))


def test_recipe_paths_are_relative_to_the_recipe_and_settings_reach_the_model(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, GOOD))
    _make_blocks(recipe)
    (tmp_path / "out").mkdir()
    model = load(recipe.run())
    assert model.config.phase == "circular" and dict(model.config.weights) == {"lab": 1.0, "tab": 2.0}
    assert (tmp_path / "out" / "model.st").is_file()


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace("phase:", "phse:"), "recipe.yaml: operation.phse: unknown key; did you mean 'phase'?"),
        (GOOD.replace("blocks/lab.st", "blocks/nope.st"), "recipe.yaml: blocks.lab.artifact: no such file"),
        (GOOD.replace("kind: merge", "kind: blend"), "recipe.yaml: operation.kind: 'blend'"),
        (GOOD.replace("{tab: 2}", "{tab: -1}"), "recipe.yaml: operation.weights.tab: must be a positive number"),
        (GOOD.replace("{tab: 2}", "{img: 2}"), "recipe.yaml: operation.weights.img: not one of the recipe's blocks"),
        (GOOD.replace("output: out/model.st", ""), "recipe.yaml: output: missing"),
        (GOOD.replace("name: test", "nmae: test"), "recipe.yaml: nmae: unknown key; did you mean 'name'?"),
        (
            GOOD.replace("{artifact: tab.st}", "{artefact: tab.st}"),
            "blocks.tab.artefact: unknown key; did you mean 'artifact'?",
        ),
        (
            GOOD.replace("tab.st}", "hf://just-a-repo}"),
            "blocks.tab.artifact: 'hf://just-a-repo': a Hub reference needs",
        ),
        ("blocks: [a, b\n", "recipe.yaml: not valid YAML at line"),
    ],
)
def test_recipe_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        recipe = Recipe.from_yaml(path)
        _make_blocks(recipe)
        recipe.check()
    assert message in str(caught.value)


def test_a_block_filed_under_the_wrong_modality_is_named(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, GOOD))
    (tmp_path / "blocks").mkdir()
    save_block(_block("tab", 0), tmp_path / "tab.st")
    save_block(_block("visits", 1), tmp_path / "blocks" / "lab.st")
    with pytest.raises(ConfigError, match="blocks.lab.artifact: the artifact's modality is 'visits', not 'lab'"):
        recipe.check()


def test_blocks_that_cannot_merge_are_reported_against_the_blocks_key(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, GOOD))
    (tmp_path / "blocks").mkdir()
    save_block(_block("tab", 0), tmp_path / "tab.st")
    save_block(_block("lab", 1, latent=(4, 16)), tmp_path / "blocks" / "lab.st")
    with pytest.raises(ConfigError, match="recipe.yaml: blocks: latent shapes disagree"):
        recipe.check()


def test_cli_dry_run_prints_the_graph_and_writes_nothing(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, GOOD))
    _make_blocks(recipe)
    result = run_cli("run", str(recipe.path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "merge (phase=circular)" in result.stdout and "block:lab" in result.stdout and "valid" in result.stdout
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_reports_hub_blocks_not_cached_yet(tmp_path, monkeypatch):
    text = GOOD.replace("blocks/lab.st", "hf://my-lab/pbc-labs-block/lab.st")
    recipe = Recipe.from_yaml(_write(tmp_path, text))
    save_block(_block("tab", 0), tmp_path / "tab.st")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("run", str(recipe.path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "warning: not cached yet: hf://my-lab/pbc-labs-block/lab.st" in result.stderr  # the legokit logger


def test_cli_recipe_error_is_one_line_and_exit_1(tmp_path):
    result = run_cli("run", str(_write(tmp_path, GOOD.replace("phase:", "phse:"))))
    assert result.returncode == 1
    assert "operation.phse: unknown key" in result.stderr and "Traceback" not in result.stderr


def test_cli_run_writes_to_output_instead_of_the_recipes_output_and_never_over_an_input(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, GOOD))
    _make_blocks(recipe)
    done = cli_here("run", str(recipe.path), "-o", str(tmp_path / "elsewhere.st"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "elsewhere.st").is_file() and not (tmp_path / "out").exists()
    refused = cli_here("run", str(recipe.path), "-o", str(tmp_path / "tab.st"))
    assert refused.returncode == 1 and "refusing to overwrite an input file" in refused.stderr
