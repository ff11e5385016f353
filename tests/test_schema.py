"""One schema per configuration (`legokit.schema`): flags, spec keys, recipe keys and stored keys derive from the
config dataclasses' fields; and one flag vocabulary on the command line, the old spellings warning for one release."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace

import pytest
import torch
from safetensors.torch import save_file

from legokit.cli.commands import NOT_FOR, InputPath, _paths, _training, build_parser, main
from legokit.contract import Labelling
from legokit.encoders import build_encoder
from legokit.errors import ConfigError
from legokit.nn.block import Architecture, BlockConfig, EncoderSpec
from legokit.recipe import FUSE_KEYS, Recipe
from legokit.schema import RECIPE, SPEC, add_flags, file_keys, from_dict, given, option, to_dict
from legokit.spec import ARCHITECTURE_KEYS, SPEC_KEYS, TRAINING_KEYS, BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.trainer import ADAPT_TRAINING, FUSE_TRAINING, TrainConfig
from legokit.wrap import wrap_file

REQUIRED = {
    "train": ["DATA", "-o", "x.st"],
    "fuse": ["a.st", "--data", "D", "-o", "x.st"],
    "adapt": ["m.st", "--method", "mora", "--data", "D", "-o", "x.st"],
    "wrap": ["enc.pt", "--modality", "tab"],
}


def _parser_of(command: str) -> argparse.ArgumentParser:
    (group,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return group.choices[command]


def _dests(command: str) -> set[str]:
    return {action.dest for action in _parser_of(command)._actions}


# --- every field has its flag, its spec key and its recipe key ------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "fuse", "adapt"])
def test_every_training_setting_is_a_flag_of_every_training_command(command):
    settings = {item.name for item in fields(TrainConfig)} - set(NOT_FOR.get(command, ()))
    assert settings <= _dests(command)
    assert not set(NOT_FOR.get(command, ())) & _dests(command)  # a setting it has no use for is no flag of it


def test_every_training_setting_is_a_spec_key_and_a_recipe_key():
    names = {item.name for item in fields(TrainConfig)}
    assert set(TRAINING_KEYS) == names == set(file_keys(TrainConfig, RECIPE))
    assert names <= set(FUSE_KEYS)


@pytest.mark.parametrize("command", ["wrap", "train"])
def test_every_architecture_setting_is_a_flag_and_a_spec_key(command):
    names = {item.name for item in fields(Architecture)}
    assert names <= _dests(command)
    assert set(ARCHITECTURE_KEYS) == names


def test_every_spec_key_is_a_field_of_the_spec_or_of_its_labelling():
    assert set(SPEC_KEYS) <= {f.name for f in fields(BlockSpec)} | {f.name for f in fields(Labelling)}
    both = {f.name for f in fields(BlockConfig)} & {f.name for f in fields(BlockSpec)}
    assert {f.name for f in fields(Architecture)} <= both


def test_a_new_field_brings_its_flag_its_keys_and_its_stored_form():
    @dataclass(frozen=True)
    class Wider(TrainConfig):
        warmup: int = option(0, "warm-up epochs (default {default})", type=int, keys=(SPEC, RECIPE))

    parser = add_flags(argparse.ArgumentParser(), Wider, Wider())
    args = parser.parse_args(["--warmup", "3", "--epochs", "7"])
    assert replace(Wider(), **given(args, Wider)) == Wider(epochs=7, warmup=3)
    assert "warmup" in file_keys(Wider, SPEC) and "warmup" in file_keys(Wider, RECIPE)
    assert from_dict(Wider, to_dict(Wider(warmup=2))) == Wider(warmup=2)
    assert "warm-up epochs (default 0)" in parser.format_help()


def test_flags_left_out_give_each_operations_defaults_and_given_ones_replace_them():
    for command, defaults in (("train", TrainConfig()), ("fuse", FUSE_TRAINING), ("adapt", ADAPT_TRAINING)):
        args = build_parser().parse_args([command, *REQUIRED[command]])
        assert _training(args, defaults) == defaults
        changed = build_parser().parse_args([command, *REQUIRED[command], "--patience", "4", "--compile"])
        assert _training(changed, defaults) == replace(defaults, patience=4, compile=True)


def test_block_configs_round_trip_and_files_before_a_setting_read_as_they_were_written():
    config = BlockConfig(
        "tab", EncoderSpec("snn", {"in_features": 4}, 8), (4,), TaskSpec("binary"), (8, 16), 3, dim_head=16
    )
    stored = config.to_dict()
    assert BlockConfig.from_dict(stored) == config and "contract" not in stored and "text" not in stored
    old = {k: v for k, v in stored.items() if k not in ("update", "head_features", "shared_init", "input_dtype")}
    assert BlockConfig.from_dict(old) == replace(config, update="real", head_features="re-im", shared_init=False)
    with pytest.raises(KeyError, match="depth"):
        BlockConfig.from_dict({k: v for k, v in stored.items() if k != "depth"})


# --- recipes and specs take every key, and a typo is one line naming it ----------------------------------------------


def _stack_recipe(tmp_path, operation: str):
    path = tmp_path / "fuse.yaml"
    path.write_text(
        f"blocks:\n  labs: {{artifact: labs.st}}\n  visits: {{artifact: visits.st}}\noperation:\n"
        f"{operation}data: pbc\noutput: fused.st\n"
    )
    return Recipe.from_yaml(path)


def test_a_fuse_recipe_takes_patience_and_compile(tmp_path):
    recipe = _stack_recipe(tmp_path, "  kind: stack\n  patience: 3\n  compile: true\n")
    assert dict(recipe.operation.training) == {"patience": 3, "compile": True}
    assert replace(FUSE_TRAINING, **recipe.operation.training) == replace(FUSE_TRAINING, patience=3, compile=True)


@pytest.mark.parametrize(
    "where, text, message",
    [
        ("recipe", "  kind: stack\n  patiense: 3\n", "operation.patiense: unknown key; did you mean 'patience'?"),
        ("spec", "modality: labs\ntraining: {compil: true}\n", "training.compil: unknown key; did you mean 'compile'?"),
        ("spec", "modality: labs\ndim_heads: 16\n", "dim_heads: unknown key; did you mean 'dim_head'?"),
    ],
)
def test_a_mistyped_key_is_one_line_naming_it_and_its_close_match(tmp_path, where, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        if where == "recipe":
            _stack_recipe(tmp_path, text)
        else:
            (tmp_path / "spec.yaml").write_text(text)
            BlockSpec.from_yaml(tmp_path / "spec.yaml")
    assert "\n" not in str(caught.value)


def test_a_spec_reads_every_architecture_key(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "modality: labs\nlatent: 8x16\nheads: 2\ndim_head: 16\nff_mult: 2\n"
        "dropout: 0.1\nshared_init: false\ntraining: {patience: 4, compile: true}\n"
    )
    spec = BlockSpec.from_yaml(tmp_path / "spec.yaml")
    assert spec == BlockSpec(
        "labs",
        latent=(8, 16),
        heads=2,
        dim_head=16,
        ff_mult=2,
        dropout=0.1,
        shared_init=False,
        training=TrainConfig(patience=4, compile=True),
    )


def test_strict_dicts_name_an_unknown_key():
    with pytest.raises(ConfigError, match="^epoch: unknown key; did you mean 'epochs'\\?$"):
        from_dict(TrainConfig, {"epoch": 3}, strict=True)


# --- one flag vocabulary; old spellings work for one release, with a warning -----------------------------------------


@pytest.mark.parametrize(
    "old, new, dest, value",
    [
        (
            ["wrap", "enc.pt", "--modality", "tab", "--arch", "snn"],
            ["wrap", "enc.pt", "--modality", "tab", "--encoder", "snn"],
            "encoder",
            "snn",
        ),
        (
            ["wrap", "enc.pt", "--modality", "tab", "--arch-kwargs", "{}"],
            ["wrap", "enc.pt", "--modality", "tab", "--encoder-kwargs", "{}"],
            "encoder_kwargs",
            "{}",
        ),
        (
            ["adapt", "m.st", "--adapter", "ssf", "--data", "D", "-o", "x.st"],
            ["adapt", "m.st", "--method", "ssf", "--data", "D", "-o", "x.st"],
            "method",
            "ssf",
        ),
        (["demo", "--out", "here"], ["demo", "-o", "here"], "folder", "here"),
        (
            ["train", "D", "-o", "x.st", "--finetune-encoder"],
            ["train", "D", "-o", "x.st", "--encoders", "finetune"],
            "encoders",
            "finetune",
        ),
        (
            ["fuse", "a.st", "--data", "D", "-o", "x.st", "--freeze-encoders"],
            ["fuse", "a.st", "--data", "D", "-o", "x.st", "--encoders", "frozen"],
            "encoders",
            "frozen",
        ),
    ],
)
def test_old_spellings_set_what_the_new_ones_set_with_a_deprecation_note(old, new, dest, value):
    before, after = build_parser().parse_args(old), build_parser().parse_args(new)
    assert getattr(before, dest) == getattr(after, dest) == value
    assert len(before.deprecated) == 1 and "is deprecated: use --" in before.deprecated[0]
    assert not getattr(after, "deprecated", [])


def test_old_spellings_are_hidden_from_help():
    for command, old in (
        ("wrap", "--arch"),
        ("wrap", "--arch-kwargs"),
        ("adapt", "--adapter"),
        ("demo", "--out"),
        ("train", "--finetune-encoder"),
        ("fuse", "--freeze-encoders"),
    ):
        assert f"{old} " not in _parser_of(command).format_help().replace(f"{old}-", "")


def test_the_deprecation_warning_is_one_line_on_standard_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert "--out is deprecated: use --output" in err and "--seeds must be a positive" in err


def test_every_command_that_writes_a_file_takes_output():
    for command in ("wrap", "merge", "predict", "run", "train", "fuse", "adapt", "demo", "pull"):
        assert {"-o", "--output"} <= {s for a in _parser_of(command)._actions for s in a.option_strings}, command


@pytest.mark.parametrize("command", ["train", "fuse", "adapt", "eval"])
def test_each_seed_says_what_it_draws_in_its_command(command):
    (seed,) = [a for a in _parser_of(command)._actions if a.dest == "seed"]
    assert "split" in seed.help and ("weights" in seed.help or command in ("fuse", "eval"))


# --- the inputs a command must not write over are paths, only paths -------------------------------------------------


@pytest.mark.parametrize(
    "argv, inputs",
    [
        (["train", "D", "--encoder", "mlp", "-o", "x.st"], ["D"]),
        (["train", "D", "--spec", "s.yaml", "--bins-from", "b.st", "-o", "x.st"], ["D", "s.yaml", "b.st"]),
        (["adapt", "m.st", "--method", "mora", "--data", "D", "-o", "x.st"], ["m.st", "D"]),
        (["adapt", "m.st", "--adapter", "mora", "--data", "D", "-o", "x.st"], ["m.st", "D"]),
        (["eval", "m.st", "D", "--adapter", "a.st", "--adapter", "b.st"], ["m.st", "D", "a.st", "b.st"]),
        (["wrap", "enc.pt", "--modality", "tab", "--encoder", "snn", "-o", "x.st"], ["enc.pt"]),
        (["fuse", "a.st", "b.st", "--data", "D", "--mode", "weave", "-o", "x.st"], ["a.st", "b.st", "D"]),
    ],
)
def test_the_input_list_holds_the_paths_a_command_reads_and_nothing_else(argv, inputs):
    args = build_parser().parse_args(argv)
    read, _ = _paths(args)
    assert sorted(read) == sorted(inputs)
    assert all(isinstance(v, InputPath) for v in vars(args).values() if isinstance(v, str) and v in inputs)


# --- wrap_file takes the architecture as one object; the old keywords warn for one release ---------------------------


def test_wrap_file_takes_one_architecture_and_its_old_keywords_give_the_same_block(tmp_path):
    encoder = build_encoder("snn", {"in_features": 5, "hidden": 8})
    path = tmp_path / "snn.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    new = wrap_file(
        path, "tab", "binary", encoder="snn", architecture=Architecture(latent=(8, 16), dim_head=16), device="cpu"
    )
    with pytest.warns(DeprecationWarning, match="arch=...\\) is deprecated: use encoder"):
        old = wrap_file(path, "tab", "binary", arch="snn", latent=(8, 16), dim_head=16, device="cpu")
    assert old.config == new.config and new.config.latent == (8, 16)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.raises(ConfigError, match="depht: unknown key; did you mean 'depth'"):
        wrap_file(path, "tab", "binary", encoder="snn", depht=3)
