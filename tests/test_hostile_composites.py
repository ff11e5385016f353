"""Crafted merged and fused files, recipe values of the wrong type, and flags spelled twice: each is one line of
error naming the problem, never a traceback (found by the review of the restructure)."""

from __future__ import annotations

import pytest
import torch

import legokit
from legokit import ArtifactError, ConfigError
from legokit.artifacts.describe import describe
from legokit.cli.commands import main
from legokit.compose.fuse import fuse
from legokit.compose.merge import merge
from legokit.recipe import Recipe
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig
from legokit.wrap import wrap_builtin

from .conftest import SMALL
from .hostile import resealed


def _block(modality: str, seed: int) -> legokit.LegoBlock:
    torch.manual_seed(seed)
    return wrap_builtin("snn", None, modality, "survival:4", {"in_features": 10, "hidden": 16}, **SMALL).eval()


@pytest.fixture(scope="module")
def composites(tmp_path_factory):
    folder = tmp_path_factory.mktemp("composites")
    merged = legokit.save(merge([_block("tab", 0), _block("lab", 1)]), folder / "merged.st")
    fused = legokit.save(fuse([_block("tab", 0), _block("lab", 1)]), folder / "fused.st")
    return {"merged": merged, "fused": fused, "folder": folder}


def _order(value):
    def change(config):
        config["fuse"]["order"] = value

    return change


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("fused", _order("tab"), "fuse order must be a list of modality names"),
        ("fused", _order(["tab", "zzz"]), "must name each block once"),
        ("fused", _order(["tab", 3]), "fuse order must be a list of modality names"),
        ("merged", lambda config: config.update(blocks={}), "it holds no blocks"),
        ("fused", lambda config: config.update(blocks={}), "it holds no blocks"),
    ],
)
def test_a_crafted_composite_header_is_refused_by_load_and_inspect(composites, name, change, message):
    hostile = resealed(composites[name], composites["folder"] / f"hostile-{name}.st", change)
    with pytest.raises(ArtifactError, match=message):
        legokit.load(hostile)
    if "no blocks" in message:  # inspect reads the blocks' configs; an order is only checked when the model is built
        with pytest.raises(ArtifactError, match=message):
            describe(hostile)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"compile": "no"}, "compile must be true or false"),
        ({"seed": "abc"}, "seed must be a 64-bit integer"),
        ({"seed": 1.5}, "seed must be a 64-bit integer"),
        ({"seed": True}, "seed must be a 64-bit integer"),
        ({"device": 3}, "device must be a string"),
    ],
)
def test_training_settings_of_the_wrong_type_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("compile: 'no'", "compile must be true or false"),
        ("seed: abc", "seed must be a 64-bit integer"),
        ("time_unit: [days]", "operation.time_unit"),
    ],
)
def test_a_fuse_recipe_with_a_value_of_the_wrong_type_is_one_line(composites, tmp_path, line, message):
    recipe = tmp_path / "fuse.yaml"
    recipe.write_text(
        f"blocks: {{tab: {{artifact: {composites['merged']}}}}}\n"
        f"operation: {{kind: stack, {line}}}\ndata: {tmp_path}\noutput: out.st\n"
    )
    with pytest.raises(ConfigError, match=message):
        Recipe.from_yaml(recipe).run(progress=False)


@pytest.mark.parametrize(
    "args",
    [
        ["wrap", "x.pt", "--modality", "t", "--encoder", "snn", "--arch", "mlp"],
        ["wrap", "x.pt", "--modality", "t", "--arch", "mlp", "--encoder", "snn"],
        ["demo", "-o", "b", "--out", "a"],
        ["train", "data", "--encoders", "frozen", "--finetune-encoder", "-o", "x.st"],
    ],
)
def test_an_old_and_a_new_spelling_that_disagree_are_refused(args, capsys):
    assert main(args) == 1
    assert "an old and a new spelling of one flag disagree" in capsys.readouterr().err


def test_an_old_and_a_new_spelling_that_agree_only_warn(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "-o", str(tmp_path / "x"), "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "disagree" not in err


def test_a_block_config_without_a_size_its_encoder_needs_names_the_missing_key(tmp_path):
    path = legokit.save_block(_block("tab", 0), tmp_path / "tab.st")
    hostile = resealed(path, tmp_path / "hostile.st", lambda config: config["encoder"]["kwargs"].pop("in_features"))
    with pytest.raises(ArtifactError, match="the config's encoder lacks in_features; its weights in the file have 10"):
        legokit.load_block(hostile)


def test_a_spec_error_names_its_file_once(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("modality: labs\nencoder:\n  name: snn\n  kwargs: [1]\n")
    with pytest.raises(ConfigError) as caught:
        BlockSpec.from_yaml(spec)
    assert str(caught.value) == f"{spec}: encoder.kwargs: must be a mapping, got list"
