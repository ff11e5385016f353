"""A new fusion mode in one file: defined, registered with `fusion_mode` (as stack and weave are), two blocks fused
in it and fine-tuned for two epochs by the library's `fuse_blocks`, saved, and loaded with identical outputs; its
file stores the mode by name. The registry refuses a taken name and names the registered modes when asked for an
unknown one, from a call, a flag or a file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch

import legokit
from legokit import ArtifactError, ConfigError, FusedModel
from legokit.artifacts.format import read_artifact
from legokit.cli.commands import build_parser
from legokit.compose import modes
from legokit.compose.fuse import fuse
from legokit.compose.graph import Graph
from legokit.compose.modes import Schedule, fusion_mode, fusion_modes, mode_named
from legokit.data.bundled import write_pbc
from legokit.recipe import operation_keys
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import fuse_blocks, labelled_data, train_block


class Reverse:
    """The blocks stacked from the last to the first: each runs all its steps, the last block's first."""

    summary = "block after block, last first"

    @staticmethod
    def schedule(order: Sequence[str], depths: Mapping[str, int]) -> Schedule:
        return [(m, s) for m in reversed(order) for s in range(depths[m])]


@pytest.fixture(scope="module")
def registered():
    """`reverse` registered for this module's tests only: the registry is as it was afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modes, "_MODES", dict(modes._MODES))
        assert fusion_mode("reverse")(Reverse) is Reverse
        yield Reverse
    assert "reverse" not in fusion_modes()


@pytest.fixture(scope="module")
def pbc(tmp_path_factory, registered):
    root = tmp_path_factory.mktemp("plugin-fusion")
    write_pbc(root / "pbc")
    blocks = [
        train_block(
            root / "pbc",
            BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), depth=d, dim_head=16).override(epochs=1),
            progress=False,
        )[0]
        for m, e, d in (("labs", "snn", 2), ("visits", "abmil", 1))
    ]  # unequal depths: weave could not fuse them
    return {"root": root, "folder": root / "pbc", "blocks": blocks}


def _logits(model, folder) -> torch.Tensor:
    data, _, modalities = labelled_data(model, folder, 0)
    batches, _ = data.batch(data.ids("test", modalities))
    with torch.no_grad():
        return model.eval()(batches)


def test_a_registered_mode_fuses_fine_tunes_saves_and_loads_with_identical_outputs(pbc):
    blocks = pbc["blocks"]
    model, result = fuse_blocks(
        blocks, pbc["folder"], "reverse", TrainConfig(epochs=2, lr=1e-2, device="cpu"), progress=False
    )
    assert model.config.mode == "reverse" and model.graph.nodes_of("reverse") and len(result.history) == 2
    untrained = fuse(blocks, "reverse")
    assert not torch.equal(_logits(untrained, pbc["folder"]), _logits(fuse(blocks, "stack"), pbc["folder"]))

    path = legokit.save(model, pbc["root"] / "reverse.st")
    assert read_artifact(path).config["fuse"] == {"mode": "reverse", "order": ["labs", "visits"]}
    again = legokit.load(path)
    assert isinstance(again, FusedModel) and again.config.mode == "reverse"
    assert torch.equal(_logits(again, pbc["folder"]), _logits(model, pbc["folder"]))


def test_the_mode_runs_its_own_schedule(pbc, monkeypatch):
    ran = []
    model = fuse(pbc["blocks"], "reverse")
    for modality, block in model.blocks.items():
        original = block.step
        monkeypatch.setattr(
            block, "step", lambda i, *a, m=modality, f=original, **k: ran.append((m, i)) or f(i, *a, **k)
        )
    _logits(model, pbc["folder"])
    assert ran == [("visits", 0), ("labs", 0), ("labs", 1)]


def test_a_registered_mode_is_a_choice_of_the_cli_the_graph_and_recipes(registered):
    args = build_parser().parse_args(["fuse", "a.st", "b.st", "--data", "D", "-o", "x.st", "--mode", "reverse"])
    assert args.mode == "reverse"
    assert "reverse" in operation_keys() and Graph.for_operation("reverse", ["a", "b"]).nodes_of("reverse")
    assert mode_named("reverse").summary == "block after block, last first"


def test_a_taken_name_is_refused(registered):
    with pytest.raises(ConfigError, match="fusion mode 'stack' is already registered"):
        fusion_mode("stack")(Reverse)
    with pytest.raises(ConfigError, match="no graph node type"):
        fusion_mode("merge")(Reverse)
    with pytest.raises(ConfigError, match="lacks a static schedule"):
        fusion_mode("nothing")(type("Nothing", (), {}))


def test_an_unknown_mode_is_a_one_line_error_naming_the_registered_ones(pbc, capsys):
    with pytest.raises(ConfigError) as caught:
        fuse(pbc["blocks"], "average")
    assert str(caught.value) == "fuse mode must be one of stack, weave, reverse, got 'average'"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fuse", "a.st", "b.st", "--data", "D", "-o", "x.st", "--mode", "average"])
    assert "(choose from stack, weave, reverse)" in capsys.readouterr().err.replace("'", "")  # quoted before 3.12
    path = legokit.save(fuse(pbc["blocks"], "reverse"), pbc["root"] / "unregistered.st")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modes, "_MODES", {k: v for k, v in modes._MODES.items() if k != "reverse"})
        with pytest.raises(ArtifactError) as caught:
            legokit.load(path)
    assert "fuse mode must be one of stack, weave, got 'reverse'" in str(caught.value)
    assert "\n" not in str(caught.value)
