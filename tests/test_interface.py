"""One model interface, one registry of artifact kinds, one place per concept: what issue 15 asks of the structure,
pinned down so that it stays (blocks, merged and fused models answer the same calls; kinds dispatch through the
registry; no import runs back up; defaults are defined once; every command speaks --json and --quiet)."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch import nn

import legokit
from legokit import ArtifactError, ConfigError, FusedModel, LegoBlock, MergedModel
from legokit.adapters import MoRA, attach
from legokit.artifacts.describe import describe
from legokit.artifacts.files import load, save
from legokit.artifacts.registry import BLOCK, FUSED, MERGED, Kind, kind_named, kind_of, kinds, register_kind
from legokit.cli.commands import _training, build_parser
from legokit.cli.doc import main as clidoc_main
from legokit.compose.fuse import fuse
from legokit.compose.merge import merge
from legokit.data import ModalityBatch
from legokit.encoders import encoder_class, list_encoders, register_encoder
from legokit.hub.card import model_card
from legokit.hub.refs import HubRef, parse_ref, repo_from
from legokit.spec import BlockSpec
from legokit.training.trainer import ADAPT_TRAINING, FUSE_TRAINING, Selection, TrainConfig, Trainer
from legokit.wrap import wrap_builtin

from .conftest import SMALL, cli_here

PACKAGE = Path(legokit.__file__).parent
MODEL_CLASSES = {"LegoBlock", "MergedModel", "FusedModel", "CompositeModel"}


def _block(modality: str, seed: int) -> LegoBlock:
    torch.manual_seed(seed)
    return wrap_builtin("snn", None, modality, "survival:4", {"in_features": 10, "hidden": 16}, **SMALL).eval()


@pytest.fixture
def models():
    """A block, a merged and a fused model (and the merged one with an adapter), on two modalities."""
    tab, lab = _block("tab", 0), _block("lab", 1)
    merged = merge([tab, lab])
    fused = fuse([_block("tab", 0), _block("lab", 1)]).eval()
    adapted = attach(merge([_block("tab", 0), _block("lab", 1)]), MoRA(["lab", "tab"], rank=2)).eval()
    return {"block": tab, "merged": merged, "fused": fused, "adapted": adapted}


def _inputs(rows: int = 3) -> dict[str, ModalityBatch]:
    torch.manual_seed(9)
    return {"tab": ModalityBatch(torch.randn(rows, 10)), "lab": ModalityBatch(torch.randn(rows, 10))}


# --- one interface ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["block", "merged", "fused", "adapted"])
def test_every_model_answers_the_same_calls(models, name):
    model = models[name]
    inputs = {m: b for m, b in _inputs().items() if m in model.modalities}
    assert set(model.modalities) == set(model.blocks) and str(model.task) == "survival:4"
    assert isinstance(model.head, nn.Module) and model.head(torch.zeros(1, 16)).shape == (1, 4)
    with torch.no_grad():
        logits = model(inputs)
        assert logits.shape == (3, 4)
        if name != "adapted":  # an adapted model encodes through its adapters' bindings: forward only
            assert torch.allclose(model.decode(model.encode(inputs)), logits, atol=1e-6)


def test_a_block_called_with_its_modality_equals_a_block_called_with_a_tensor(models):
    block, x = models["block"], _inputs()["tab"].x
    with torch.no_grad():
        assert torch.equal(block({"tab": x}), block(x)) and torch.equal(block({"tab": ModalityBatch(x)}), block(x))
    with pytest.raises(legokit.ShapeError, match="no input for modality 'tab'"):
        block({"lab": x})


def test_block_prefixes_and_first_blocks_name_real_modules(models):
    for model in (models["block"], models["merged"], models["fused"]):
        names = dict(model.named_modules())
        for prefix in model.block_prefixes.values():
            assert f"{prefix}layers.0" in names
        assert set(model.first_blocks) <= set(model.modalities)
    assert models["fused"].first_blocks == [models["fused"].config.order[0]] and len(models["merged"].first_blocks) == 2


# --- one registry of artifact kinds -----------------------------------------------------------------------------------


def test_every_kind_is_registered_and_models_dispatch_by_class(models):
    assert kinds() == ["adapter", "block", "fused", "merged"]
    assert [kind_of(models[n]).name for n in ("block", "merged", "fused")] == [BLOCK, MERGED, FUSED]
    with pytest.raises(ConfigError, match="cannot save a Adapted"):
        kind_of(models["adapted"])
    with pytest.raises(ArtifactError, match="x.st: unknown artifact kind 'lora'"):
        kind_named("lora", "x.st")
    with pytest.raises(ConfigError, match="already registered"):
        register_kind(replace(kind_named(BLOCK), mergeable=False))


@pytest.mark.parametrize("name", ["block", "merged", "fused"])
def test_save_load_and_describe_go_through_the_kind(models, name, tmp_path):
    path = save(models[name], tmp_path / f"{name}.st")
    again, facts = load(path), describe(path)
    assert type(again) is type(models[name]) and facts["kind"] == kind_of(models[name]).name
    assert facts["modalities"] == sorted(models[name].modalities) and facts["title"]
    with torch.no_grad():
        assert torch.allclose(
            again(_inputs()) if name != "block" else again(_inputs()["tab"].x),
            models[name](_inputs()) if name != "block" else models[name](_inputs()["tab"].x),
        )


def test_a_new_kind_plugs_in_without_touching_the_callers():
    kind = Kind("probe-kind", None, lambda a: None, lambda a: {"kind": "probe-kind"}, lambda f: [("probe", "yes")])
    assert register_kind(kind) is kind and kind_named("probe-kind") is kind and register_kind(kind) is kind


# --- save_pretrained / from_pretrained, as huggingface_hub's mixin names them ---------------------------------------


def test_save_pretrained_writes_the_artifact_and_its_card_and_from_pretrained_reads_it(models, tmp_path):
    path = models["merged"].save_pretrained(tmp_path / "pbc-merged")
    assert path.name == "model.st" and "# legokit merged model: lab, tab" in (path.parent / "README.md").read_text()
    again = MergedModel.from_pretrained(tmp_path / "pbc-merged")
    with torch.no_grad():
        assert torch.equal(again(_inputs()), models["merged"](_inputs()))
    assert isinstance(legokit.LegoBlock.from_pretrained(save(models["block"], tmp_path / "tab.st")), LegoBlock)
    with pytest.raises(ArtifactError, match="holds a merged model, not a LegoBlock"):
        LegoBlock.from_pretrained(tmp_path / "pbc-merged")
    with pytest.raises(ArtifactError, match="holds a block model, not a FusedModel"):
        FusedModel.from_pretrained(tmp_path / "tab.st")
    save(models["block"], tmp_path / "pbc-merged" / "second.st")
    with pytest.raises(ArtifactError, match="expected one .st artifact, found 2"):
        MergedModel.from_pretrained(tmp_path / "pbc-merged")


def test_push_to_hub_uploads_the_saved_file(models, monkeypatch):
    sent = {}

    def fake_push(path, repo_id, private=False):
        sent.update(name=Path(path).name, kind=describe(path)["kind"], repo=repo_id, private=private)
        return "https://huggingface.co/commit/0"

    monkeypatch.setattr("legokit.hub.pretrained.push", fake_push)
    assert models["fused"].push_to_hub("my-lab/fused", private=True) == "https://huggingface.co/commit/0"
    assert sent == {"name": "model.st", "kind": "fused", "repo": "my-lab/fused", "private": True}


# --- Hugging Face references --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hf://org/repo@v1/dir/file.st", HubRef("org/repo", "dir/file.st", "v1")),
        ("hf://org/repo/dir/file.st@v1", HubRef("org/repo", "dir/file.st", "v1")),
        ("hf://org/repo/file.st", HubRef("org/repo", "file.st", None)),
    ],
)
def test_both_revision_forms_of_a_hub_reference_are_read(text, expected):
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["hf://org/repo@v1/file.st@v2", "hf://org/repo@/file.st", "hf://org/repo@../f.st"])
def test_malformed_revisions_are_refused(text):
    with pytest.raises(ConfigError):
        parse_ref(text)


def test_repository_targets_take_the_revision_after_the_repository():
    assert repo_from("org/repo@main") == ("org/repo", None, "main")
    assert repo_from("hf://org/repo@v2/labs.st") == ("org/repo", "labs.st", "v2")


def test_adapters_load_from_hub_references(models, tmp_path, monkeypatch):
    from legokit.adapters.files import load_adapter, save_adapter
    from legokit.training.workflows import prepare_adaptation

    base = load(save(models["merged"], tmp_path / "merged.st"))
    adapted = prepare_adaptation(base, "mora", rank=2)
    path = save_adapter(adapted, adapted.adapters[-1], tmp_path / "mora.st", base.source_sha256)
    asked = []
    monkeypatch.setattr("legokit.hub.refs.resolve", lambda ref, local_files_only=False: asked.append(ref) or path)
    adapter, _, base_sha, _ = load_adapter("hf://my-lab/pbc@v1/mora.st")
    assert asked == [HubRef("my-lab/pbc", "mora.st", "v1")] and base_sha == base.source_sha256
    assert adapter.rank == 2


# --- recipes travel with what they make ---------------------------------------------------------------------------


def test_the_model_card_quotes_the_recipe_verbatim(models, tmp_path):
    text = "name: pbc\n# a comment survives\noperation: {kind: merge}\n"
    model = models["merged"]
    model.provenance = {"recipe": {"path": "recipes/merge.yaml", "name": "pbc", "text": text}}
    card = model_card(describe(save(model, tmp_path / "m.st")), "my-lab/pbc", "m.st")
    assert "## Recipe" in card and f"```yaml\n{text.rstrip()}\n```" in card


# --- the open encoder registry ------------------------------------------------------------------------------------


def test_a_registered_encoder_builds_trains_saves_and_loads_by_name(tmp_path, monkeypatch):
    from legokit.encoders import registry
    from legokit.training.workflows import build_block

    monkeypatch.setattr(registry, "_ENCODERS", dict(registry._ENCODERS))  # registrations end with the test

    @register_encoder("gated")
    class Gated(nn.Module):
        token_input = False

        def __init__(self, in_features: int, hidden: int = 8):
            super().__init__()
            self.value, self.gate = nn.Linear(in_features, hidden), nn.Linear(in_features, hidden)
            self.out_dim = hidden

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value(x) * torch.sigmoid(self.gate(x))

        @staticmethod
        def infer_kwargs(state_dict):
            weight = state_dict.get("value.weight")
            return {} if weight is None else {"in_features": int(weight.shape[1]), "hidden": int(weight.shape[0])}

    assert list_encoders()[-1] == "gated" and encoder_class("gated") is Gated
    block = build_block(BlockSpec("tab", "gated", {"hidden": 8}, latent=(8, 16), dim_head=16), (10,))
    again = load(save(block, tmp_path / "gated.st"))
    x = torch.randn(4, 10)
    with torch.no_grad():
        assert torch.equal(again(x), block.eval()(x))
    monkeypatch.setattr(registry, "_ENCODERS", {k: v for k, v in registry._ENCODERS.items() if k != "gated"})
    with pytest.raises(ArtifactError, match="unknown encoder 'gated'.*register_encoder"):
        load(tmp_path / "gated.st")


@pytest.mark.parametrize(
    "name, cls, message",
    [
        ("export", nn.Linear, "identifier other than 'export'"),
        ("no-dash", nn.Linear, "identifier"),
        ("plain", object, "register an nn.Module class"),
        ("plain", nn.Linear, "needs a static infer_kwargs"),
        ("snn", type("Other", (nn.Module,), {"infer_kwargs": staticmethod(lambda s: {})}), "already registered"),
    ],
)
def test_encoder_registrations_that_cannot_work_are_refused(name, cls, message):
    with pytest.raises(ConfigError, match=message):
        register_encoder(name)(cls)


# --- the trainer's named parts ------------------------------------------------------------------------------------


def test_selection_prefers_the_metric_and_breaks_ties_and_nans_by_loss():
    model = nn.Linear(1, 1)
    selection = Selection()
    selection.update(1, 0.70, 1.0, model)
    selection.update(2, 0.70, 0.9, model)  # a tie: the lower loss wins
    selection.update(3, float("nan"), 0.5, model)  # NaN metric: the lower loss wins
    selection.update(4, 0.60, 0.6, model)  # after a NaN, the loss decides
    assert (selection.epoch, selection.waited) == (3, 1)
    strict = Selection()
    strict.update(1, 0.70, 1.0, model)
    strict.update(2, 0.60, 0.1, model)  # a worse metric loses whatever its loss
    assert (strict.epoch, strict.waited) == (1, 1)


def test_smoothed_selection_prefers_a_stretch_of_good_epochs_to_one_lucky_epoch():
    model = nn.Linear(1, 1)
    metrics = [0.60, 0.90, 0.60, 0.80, 0.80, 0.80, 0.70]  # epoch 2 is a spike, epochs 4-6 a plateau
    plain, smoothed = Selection(), Selection(window=3)
    for epoch, metric in enumerate(metrics, start=1):
        plain.update(epoch, metric, 1.0, model)
        smoothed.update(epoch, metric, 1.0, model)
    assert (plain.epoch, plain.waited) == (2, 5)
    assert (smoothed.epoch, smoothed.waited) == (6, 1)  # the plateau's mean 0.80 beats 0.70 around the spike


def test_a_partial_window_never_beats_a_full_one_and_nobody_waits_before_it():
    model = nn.Linear(1, 1)
    selection = Selection(window=5)
    for epoch, metric in enumerate([0.80, 0.60, 0.70, 0.75, 0.76, 0.77, 0.78, 0.78], start=1):
        selection.update(epoch, metric, 1.0, model)
        if epoch < 5:
            assert selection.waited == 0
    assert selection.epoch == 8  # epoch 1 alone (0.80) was a lucky first epoch, not a stretch of good ones
    short = Selection(window=5)
    for epoch, metric in enumerate([0.70, 0.80, 0.60], start=1):  # training ended before a full window
        short.update(epoch, metric, 1.0, model)
    assert (short.epoch, short.waited) == (2, 0)


def test_a_callback_stops_training_and_the_history_says_where(tmp_path):
    from legokit.data.bundled import write_pbc
    from legokit.data.training import SplitData
    from legokit.training.workflows import build_block

    write_pbc(tmp_path / "pbc")
    spec = BlockSpec("labs", "snn", {"hidden": 8}, latent=(8, 16), dim_head=16)
    data = SplitData.load(tmp_path / "pbc", {"labs": (17,)}, spec.task, 0)
    trainer = Trainer(build_block(spec, (17,)), data, spec.task, TrainConfig(epochs=9, device="cpu"))
    result = trainer.fit([lambda epoch, row, selection: epoch == 2])
    assert [row["epoch"] for row in result.history] == [1, 2] and 1 <= result.best_epoch <= 2
    assert set(result.history[0]) >= {"train_loss", "val_loss", "c_index"}


# --- one definition of each default --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, defaults", [("train", TrainConfig()), ("fuse", FUSE_TRAINING), ("adapt", ADAPT_TRAINING)]
)
def test_training_flags_left_out_give_the_operations_defaults(command, defaults):
    required = {
        "train": ["DATA", "-o", "x.st"],
        "fuse": ["a.st", "--data", "D", "-o", "x.st"],
        "adapt": ["m.st", "--adapter", "mora", "--data", "D", "-o", "x.st"],
    }[command]
    args = build_parser().parse_args([command, *required])
    assert _training(args, defaults) == defaults
    assert _training(build_parser().parse_args([command, *required, "--epochs", "7"]), defaults).epochs == 7


def test_block_specs_take_their_defaults_from_the_block_config(tmp_path):
    spec_file = tmp_path / "labs.yaml"
    spec_file.write_text("modality: labs\n")
    spec = BlockSpec.from_yaml(spec_file)
    assert spec == BlockSpec("labs")
    block = legokit.BlockConfig("labs", legokit.EncoderSpec("snn", {}, 8), (4,), spec.task)
    assert (spec.latent, spec.depth, spec.fft_axes, spec.heads, spec.dim_head, spec.ff_mult, spec.dropout) == (
        block.latent,
        block.depth,
        block.fft_axes,
        block.heads,
        block.dim_head,
        block.ff_mult,
        block.dropout,
    )


# --- the package's shape: no import runs back up, no isinstance on model classes -------------------------------------


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("legokit", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text())
    return found


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module if (node.module or "").startswith("legokit") else None
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_of_legokit_imports_legokit_inside_a_function():
    late = []
    for name, tree in _modules().items():
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("legokit")):
                    late.append(f"{name}.{function.name}: from {'.' * node.level}{node.module or ''}")
    assert late == []


def test_the_module_graph_of_legokit_has_no_cycle():
    graph = nx.DiGraph()
    modules = _modules()
    for name, tree in modules.items():
        is_package = (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file() if name != "legokit" else True
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                target = _target(name, node, is_package)
                if target and target != "legokit":
                    # `from .x import y` where y is a submodule imports legokit.x.y
                    sub = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                    for found in sub or [target]:
                        graph.add_edge(name, found)
    packages = {n for n in modules if (PACKAGE / Path(*n.split(".")[1:]) / "__init__.py").is_file()}
    graph.remove_nodes_from(packages | {"legokit"})  # a package's __init__ only gathers what is below it
    assert list(nx.simple_cycles(graph)) == []


def test_no_isinstance_on_model_classes_outside_the_registry():
    found = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                if MODEL_CLASSES & {getattr(c, "id", getattr(c, "attr", None)) for c in classes}:
                    found.append(f"{name}:{node.lineno}")
    assert found == []


# --- the CLI: --json and --quiet everywhere, the README's table from the parser -------------------------------------


def test_every_command_takes_json_and_quiet():
    parser = build_parser()
    (group,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in group.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert {"--json", "--quiet", "-q", "--verbose"} <= flags, name
        if "--device" in flags:
            assert sub.get_default("device") is None  # auto unless a spec says otherwise, for every command


def test_the_readme_and_docs_cli_tables_are_the_parsers():
    assert clidoc_main(["--check"]) == 0, "run python -m legokit.cli.doc"


def test_json_goes_to_a_file_or_to_standard_output_and_never_over_an_input(models, tmp_path):
    path = save(models["merged"], tmp_path / "merged.st")
    shown = cli_here("inspect", str(path), "--json", "-")
    assert shown.returncode == 0 and json.loads(shown.stdout)["kind"] == "merged"
    written = cli_here(
        "merge",
        str(save(models["block"], tmp_path / "tab.st")),
        str(save(_block("lab", 1), tmp_path / "lab.st")),
        "-o",
        str(tmp_path / "m2.st"),
        "--json",
        str(tmp_path / "m2.json"),
    )
    assert written.returncode == 0 and json.loads((tmp_path / "m2.json").read_text())["modalities"] == ["lab", "tab"]
    before = path.read_bytes()
    refused = cli_here("inspect", str(path), "--json", str(path))
    assert refused.returncode == 1 and "refusing to overwrite an input" in refused.stderr
    assert path.read_bytes() == before
    clash = cli_here(
        "merge",
        str(tmp_path / "tab.st"),
        str(tmp_path / "lab.st"),
        "-o",
        str(tmp_path / "m3.st"),
        "--json",
        str(tmp_path / "m3.st"),
    )
    assert clash.returncode == 1 and not (tmp_path / "m3.st").exists()  # refused before the merge ran


def test_quiet_prints_nothing_but_errors(models, tmp_path):
    path = save(models["block"], tmp_path / "tab.st")
    assert cli_here("inspect", str(path), "-q").stdout == ""
    failed = cli_here("inspect", str(tmp_path / "none.st"), "-q")
    assert failed.returncode == 1 and "no such file" in failed.stderr


# --- figures, history, warnings and progress where people look ----------------------------------------------------


@pytest.fixture(scope="module")
def pbc(tmp_path_factory) -> Path:
    from legokit.data.bundled import write_pbc

    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return folder


def test_train_keeps_its_history_and_eval_and_train_draw_figures(pbc, tmp_path):
    pytest.importorskip("matplotlib")
    block, history = tmp_path / "labs.st", tmp_path / "history.png"
    trained = cli_here(
        "train",
        str(pbc),
        "--modality",
        "labs",
        "--latent",
        "8x16",
        "--epochs",
        "3",
        "--plot",
        str(history),
        "--json",
        str(tmp_path / "train.json"),
        "-o",
        str(block),
    )
    assert trained.returncode == 0, trained.stderr
    report = json.loads((tmp_path / "train.json").read_text())
    assert [row["epoch"] for row in load(block).provenance["trained"]["history"]] == [1, 2, 3]
    assert report["history"] == load(block).provenance["trained"]["history"] and report["output"] == str(block)
    km = tmp_path / "km.png"
    evaluated = cli_here("eval", str(block), str(pbc), "--plot", str(km), "-q")
    assert evaluated.returncode == 0, evaluated.stderr
    assert history.read_bytes()[:4] == km.read_bytes()[:4] == b"\x89PNG"
    refused = cli_here("eval", str(block), str(pbc), "--plot", str(pbc / "labels.csv"))
    assert refused.returncode == 1 and "refusing to overwrite an input" in refused.stderr


def test_a_fuse_recipe_prints_the_warning_that_fuse_prints(pbc, tmp_path):
    import csv
    import shutil

    from legokit.data.labels import random_split

    for modality in ("labs", "visits"):
        made = cli_here(
            "train",
            str(pbc),
            "--modality",
            modality,
            "--encoder",
            "snn" if modality == "labs" else "abmil",
            "--latent",
            "8x16",
            "--epochs",
            "1",
            "-q",
            "-o",
            str(tmp_path / f"{modality}.st"),
        )
        assert made.returncode == 0, made.stderr
    data = tmp_path / "data"
    shutil.copytree(pbc, data)
    with open(pbc / "labels.csv") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    swapped = {"train": "test", "test": "train", "val": "val"}  # the blocks' training samples become the test split
    (data / "splits.csv").write_text(
        "id,split\n" + "".join(f"{i},{swapped[s]}\n" for i, s in random_split(ids, 0).items())
    )
    recipe = tmp_path / "fuse.yaml"
    recipe.write_text(
        "blocks: {labs: {artifact: labs.st}, visits: {artifact: visits.st}}\n"
        "operation: {kind: stack, epochs: 1}\ndata: data\noutput: fused.st\n"
    )
    ran = cli_here("run", str(recipe))
    assert ran.returncode == 0, ran.stderr
    assert "warning: block labs: 272 of the 272 test samples were in its training or validation samples" in ran.stderr
    assert load(tmp_path / "fused.st").provenance["warnings"]


def test_progress_is_logged_when_output_is_not_a_terminal():
    import logging

    from legokit.progress import log, progress_bar

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        with progress_bar("training labs", 20) as advance:
            for epoch in range(20):
                advance(1, f"loss {epoch}")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(seen) == 10 and seen[0].startswith("training labs: 2/20 (loss 1)")
    assert seen[-1].startswith("training labs: 20/20 (loss 19)")


# --- review findings, pinned ---------------------------------------------------------------------------------------


def test_json_and_plot_are_refused_before_the_work_when_they_name_what_the_command_reads(pbc, tmp_path, models):
    from legokit.wrap import default_output

    block = save(models["block"], tmp_path / "tab.st")
    save(_block("lab", 1), tmp_path / "lab.st")
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        "blocks: {tab: {artifact: tab.st}, lab: {artifact: lab.st}}\noperation: {kind: merge}\noutput: merged.st\n"
    )
    before = block.read_bytes()
    for args in (
        ["run", str(recipe), "--json", str(block)],
        ["run", str(recipe), "--json", str(tmp_path / "merged.st")],
        ["train", str(pbc), "--modality", "labs", "-o", str(tmp_path / "t.st"), "--plot", str(pbc / "labs.csv")],
    ):
        refused = cli_here(*args)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert block.read_bytes() == before and not (tmp_path / "merged.st").exists() and not (tmp_path / "t.st").exists()
    state = {"net.0.weight": torch.zeros(16, 10), "net.0.bias": torch.zeros(16)}
    torch.save(state, tmp_path / "snn.pt")
    clash = cli_here(
        "wrap",
        str(tmp_path / "snn.pt"),
        "--arch",
        "snn",
        "--modality",
        "tab",
        "--json",
        str(default_output(tmp_path / "snn.pt")),
    )
    assert clash.returncode == 1 and "name the same file" in clash.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{model}", "{data}", "-o", "{out}", "--batch-size", "0"], "batch size must be a positive integer"),
        (["demo", "--seeds", "0", "--out", "{out}"], "--seeds must be a positive"),
    ],
)
def test_counts_that_cannot_work_are_one_line_errors(models, pbc, tmp_path, args, message):
    values = {"model": str(save(models["block"], tmp_path / "tab.st")), "data": str(pbc), "out": str(tmp_path / "x")}
    failed = cli_here(*(a.format(**values) for a in args))
    assert failed.returncode == 1 and message in failed.stderr and "Traceback" not in failed.stderr


def test_adapting_twice_with_one_seed_gives_one_result(pbc):
    from legokit.training.workflows import adapt, train_block

    blocks = [
        train_block(
            pbc, BlockSpec(m, e, {"hidden": 8}, latent=(8, 16), dim_head=16).override(epochs=1), progress=False
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    runs = []
    for _ in range(2):
        torch.manual_seed(len(runs) * 1000 + 7)  # whatever ran before, the seed decides
        merged = load(save(merge(blocks), Path(pbc).parent / "adapt-base.st"))
        adapted, result, _ = adapt(merged, pbc, "mora", config=TrainConfig(epochs=2, seed=0), progress=False)
        runs.append((result.val, {k: v.clone() for k, v in adapted.adapters[-1].state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_from_pretrained_on_a_missing_local_path_says_so_without_the_network(tmp_path):
    with pytest.raises(ArtifactError, match="no such file or folder"):
        LegoBlock.from_pretrained(tmp_path / "typo.st")


def test_a_recipe_with_backticks_stays_inside_its_fence(models, tmp_path):
    text = "name: x\n# ```\noperation: {kind: merge}\n"
    model = models["merged"]
    model.provenance = {"recipe": {"path": "r.yaml", "name": "x", "text": text}}
    card = model_card(describe(save(model, tmp_path / "m.st")), "my-lab/x", "m.st")
    assert f"````yaml\n{text.rstrip()}\n````" in card


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hf://org/repo@refs/pr/1/f.st", HubRef("org/repo", "f.st", "refs/pr/1")),
        ("hf://org/repo@refs%2Fpr%2F2/d/f.st", HubRef("org/repo", "d/f.st", "refs/pr/2")),
    ],
)
def test_the_hubs_own_refs_in_the_hffilesystem_form_are_read(text, expected):
    assert parse_ref(text) == expected


def test_verbose_adds_debug_lines(models, tmp_path, pbc):
    path = save(models["block"], tmp_path / "tab.st")
    quiet, loud = (
        cli_here("predict", str(path), str(pbc), "-o", str(tmp_path / "p.csv"), "--json", "-"),
        cli_here("predict", str(path), str(pbc), "-o", str(tmp_path / "q.csv"), "-v"),
    )
    assert "debug: read" not in quiet.stderr and "debug: read" in loud.stderr
