"""Dataset folders with labels, the trainer, LegoFuse, and end-to-end runs on real data (PBC and GSE7390)."""

from __future__ import annotations

import filecmp
import io
import json
import logging
from pathlib import Path

import pytest
import torch
from rich.console import Console

from legokit import ConfigError, load, save
from legokit.compose.fuse import fuse
from legokit.compose.merge import merge
from legokit.data import ModalityBatch
from legokit.data.bundled import write_pbc
from legokit.data.folder import DataError
from legokit.data.gse7390 import write_gse7390
from legokit.data.training import SplitData
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.trainer import TrainConfig, evaluate, train_model
from legokit.training.workflows import build_block, evaluate_model, fuse_blocks, train_block

from .conftest import cli_here

SURVIVAL = TaskSpec("survival", 4)
TINY = dict(latent=(8, 16), dim_head=16)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return folder


def _spec(modality: str, encoder: str, **training) -> BlockSpec:
    kwargs = {"hidden": 16} if encoder == "snn" else {"hidden": 16, "attention": 8}
    return BlockSpec(modality, encoder, kwargs, **TINY).override(epochs=6, patience=3, **training)


@pytest.fixture(scope="module")
def pbc_blocks(pbc):
    labs, _ = train_block(pbc, _spec("labs", "snn"), progress=False)
    visits, _ = train_block(pbc, _spec("visits", "abmil"), progress=False)
    return labs, visits


# --- the bundled PBC data: landmark, no leakage -----------------------------------------------------------------


def test_pbc_landmark_keeps_only_patients_alive_at_one_year_and_visits_up_to_it(pbc):
    labels = [line.split(",") for line in (pbc / "labels.csv").read_text().splitlines()[1:]]
    assert len(labels) == 388 and sum(r[2] == "1" for r in labels) == 131
    assert all(float(r[1]) > 0 for r in labels)
    visits = list((pbc / "visits").glob("*.safetensors"))
    assert len(visits) == 290
    from safetensors.torch import load_file

    years_before_landmark = torch.cat([load_file(v)["x"][:, 0] for v in visits])
    assert (years_before_landmark >= 0).all()  # no visit after the landmark
    table = (pbc / "labs.csv").read_text()
    assert "nan" not in table.lower()


# --- labels, splits and bad data ---------------------------------------------------------------------------------


def _tiny_folder(tmp_path: Path, labels: str, table: str = "id,a,b\np1,1,2\np2,3,4\np3,5,6\n") -> Path:
    (tmp_path / "labels.csv").write_text(labels)
    (tmp_path / "tab.csv").write_text(table)
    return tmp_path


@pytest.mark.parametrize(
    "labels, table, message",
    [
        ("id,time,event\np1,5,1\np2,x,0\np3,2,1\n", None, "labels.csv: row 3, column time: 'x' is not a number"),
        (
            "id,time,event\np1,5,2\np2,3,0\np3,2,1\n",
            None,
            "labels.csv: row 2, column event: '2' must be an integer from 0 to 1",
        ),
        ("id,time,event\np1,-5,1\np2,3,0\np3,2,1\n", None, "labels.csv: row 2, column time: '-5' must be positive"),
        ("id,days,event\np1,5,1\n", None, "labels.csv: task survival:4 needs column(s) 'time'"),
        ("id,time,event\np1,5,1\np2,3,0\n", None, "tab.csv: row 4, column id: 'p3' is not in"),
        (
            "id,time,event\np1,5,1\np2,3,0\np3,2,1\n",
            "id,a,b\np1,1,nan\np2,3,4\np3,5,6\n",
            "tab.csv: row 2, column b: nan",
        ),
    ],
)
def test_bad_labelled_data_is_named_by_file_row_and_column(tmp_path, labels, table, message):
    folder = _tiny_folder(tmp_path, labels, table or "id,a,b\np1,1,2\np2,3,4\np3,5,6\n")
    with pytest.raises(DataError) as caught:
        SplitData.load(folder, {"tab": (2,)}, SURVIVAL)
    assert message in str(caught.value)


def test_splits_file_is_used_and_checked(tmp_path):
    folder = _tiny_folder(tmp_path, "id,time,event\np1,5,1\np2,3,0\np3,2,1\n")
    (folder / "splits.csv").write_text("id,split\np1,train\np2,val\np3,test\n")
    data = SplitData.load(folder, {"tab": (2,)}, SURVIVAL)
    assert (data.ids("train"), data.ids("val"), data.ids("test")) == (["p1"], ["p2"], ["p3"])
    (folder / "splits.csv").write_text("id,split\np1,train\np2,valid\np3,test\n")
    with pytest.raises(DataError, match="row 3, column split: 'valid' must be train, val or test"):
        SplitData.load(folder, {"tab": (2,)}, SURVIVAL)


def test_random_split_is_seeded_70_15_15(pbc):
    first = SplitData.load(pbc, {"labs": (17,)}, SURVIVAL, seed=3)
    again = SplitData.load(pbc, {"labs": (17,)}, SURVIVAL, seed=3)
    other = SplitData.load(pbc, {"labs": (17,)}, SURVIVAL, seed=4)
    assert first.splits == again.splits != other.splits
    sizes = [len(first.ids(s)) for s in ("train", "val", "test")]
    assert sizes == [272, 58, 58]


def test_a_modality_with_no_samples_is_named(tmp_path):
    folder = _tiny_folder(tmp_path, "id,time,event\np1,5,1\n", "id,a,b\n")
    with pytest.raises(DataError, match="modality tab has no samples"):
        SplitData.load(folder, {"tab": (2,)}, SURVIVAL)


# --- the trainer -------------------------------------------------------------------------------------------------


def test_training_restores_the_best_validation_epoch_not_the_last(pbc):
    data = SplitData.load(pbc, {"labs": (17,)}, SURVIVAL, seed=0)
    block = build_block(_spec("labs", "snn"), (17,))
    block.set_normalization(*data.normalization("labs", data.ids("train")))
    result = train_model(
        block, data, SURVIVAL, TrainConfig(epochs=12, patience=4, lr=3e-3, seed=0, device="cpu"), progress=False
    )
    chosen = result.history[result.best_epoch - 1]["c_index"]
    assert result.val["c_index"] == pytest.approx(chosen, abs=1e-9)
    assert chosen == max(h["c_index"] for h in result.history)


def test_training_is_reproducible_for_a_seed(pbc):
    spec = _spec("labs", "snn", seed=7)
    first, _ = train_block(pbc, spec, progress=False)
    second, _ = train_block(pbc, spec, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_model_selection_never_looks_at_the_test_split(pbc, tmp_path):
    shuffled = tmp_path / "pbc"
    shuffled.mkdir()
    for item in pbc.iterdir():
        (shuffled / item.name).symlink_to(item)
    data = SplitData.load(pbc, {"labs": (17,)}, SURVIVAL, seed=0)
    test = set(data.ids("test"))
    lines = (pbc / "labels.csv").read_text().splitlines()
    scrambled = [lines[0]] + [f"{r.split(',')[0]},1,1" if r.split(",")[0] in test else r for r in lines[1:]]
    (shuffled / "labels.csv").unlink()
    (shuffled / "labels.csv").write_text("\n".join(scrambled) + "\n")
    spec = _spec("labs", "snn", seed=0)
    a, result_a = train_block(pbc, spec, progress=False)
    b, result_b = train_block(shuffled, spec, progress=False)
    assert result_a.best_epoch == result_b.best_epoch
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_training_provenance_goes_into_the_artifact(pbc_blocks, tmp_path):
    labs, _ = pbc_blocks
    record = load(save(labs, tmp_path / "labs.st")).provenance["trained"]
    assert record["config"]["seed"] == 0 and record["split"] == "random 70/15/15, seed 0"
    assert 0 < record["val"]["c_index"] <= 1 and len(record["survival_bin_edges"]) == 5


def test_bad_training_settings_are_refused():
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="smoothing must be a positive integer"):
        TrainConfig(smoothing=0)
    with pytest.raises(ConfigError, match="survival_loss must be one of nll, cox, nll\\+cox"):
        TrainConfig(survival_loss="hinge")


def test_a_cox_loss_is_refused_for_a_classification_block(tmp_path):
    folder = _tiny_folder(tmp_path, "id,label\np1,0\np2,1\np3,1\n")
    spec = BlockSpec("tab", "snn", {"hidden": 16}, task=TaskSpec("binary", 1), **TINY)
    data = SplitData.load(folder, {"tab": (2,)}, spec.task)
    with pytest.raises(ConfigError, match="survival_loss cox is for survival tasks, not binary"):
        train_model(build_block(spec, (2,)), data, spec.task, TrainConfig(survival_loss="cox"), progress=False)


# --- LegoFuse ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stack", "weave"])
def test_fused_sample_without_a_modality_equals_the_model_run_without_it(pbc_blocks, mode):
    model = fuse(list(pbc_blocks), mode).eval()
    torch.manual_seed(0)
    labs, visits = torch.randn(3, 17), torch.randn(3, 4, 13)
    present = torch.tensor([True, False, True])
    mixed = model({"labs": ModalityBatch(labs), "visits": ModalityBatch(visits, present=present)})
    alone = model({"labs": labs[1:2]})
    assert torch.allclose(mixed[1:2], alone, atol=1e-5)
    full = model({"labs": labs, "visits": visits})
    assert torch.allclose(mixed[[0, 2]], full[[0, 2]], atol=1e-5)


def test_fused_head_starts_as_the_merged_head(pbc_blocks):
    fused, merged = fuse(list(pbc_blocks), "stack"), merge(list(pbc_blocks))
    assert all(torch.equal(a, b) for a, b in zip(fused.head.state_dict().values(), merged.head.state_dict().values()))


def test_weave_refuses_blocks_of_different_depth(pbc):
    labs = build_block(_spec("labs", "snn"), (17,))
    deep = build_block(BlockSpec("visits", "abmil", {"hidden": 16}, depth=3, **TINY), (None, 13))
    with pytest.raises(ConfigError, match="weave interleaves .* need one depth; got labs 2, visits 3"):
        fuse([labs, deep], "weave")
    assert fuse([labs, deep], "stack") is not None


def test_freezing_encoders_trains_everything_else(pbc, pbc_blocks):
    blocks = [load(save(b, Path(pbc).parent / f"{b.modality}-frozen.st")) for b in pbc_blocks]
    before = {m: b.encoder.state_dict() for m, b in zip(("labs", "visits"), blocks)}
    before = {m: {k: v.clone() for k, v in s.items()} for m, s in before.items()}
    latent_before = blocks[0].latent.detach().clone()
    model, _ = fuse_blocks(blocks, pbc, "stack", TrainConfig(epochs=1, encoders="frozen", device="cpu"), progress=False)
    for modality, state in before.items():
        assert all(torch.equal(v, model.blocks[modality].encoder.state_dict()[k]) for k, v in state.items())
    assert not torch.equal(latent_before, model.blocks["labs"].latent.detach())


def test_fused_model_round_trips_with_its_graph(pbc_blocks, tmp_path):
    model = fuse(list(pbc_blocks), "weave").eval()
    again = load(save(model, tmp_path / "fused.st"))
    inputs = {"labs": torch.randn(2, 17), "visits": torch.randn(2, 3, 13)}
    assert torch.equal(again(inputs), model(inputs))
    assert again.graph.type("weave") == "weave" and again.config.order == ("labs", "visits")


# --- real data end to end ------------------------------------------------------------------------------------------


def test_gse7390_blocks_merge_and_fuse_above_chance_on_held_out_data(tmp_path, capsys):
    """GSE7390 (198 patients): clinical table and 76 genes, trained, merged and fused per seed. The fused model's
    test c-index, averaged over seeds, must beat chance; the values are printed for the record."""
    root = write_gse7390(tmp_path / "gse7390")
    fused_scores = []
    for seed in range(3):
        clinical = BlockSpec("clinical", "snn", {"hidden": 32}, latent=(16, 16), dim_head=16).override(
            seed=seed, epochs=15, patience=5
        )
        genes = BlockSpec("genes", "snn", {"hidden": 32}, latent=(16, 16), dim_head=16).override(
            seed=seed, epochs=15, patience=5
        )
        c, _ = train_block(root, clinical, progress=False)
        g, _ = train_block(root, genes, progress=False)
        data = SplitData.load(root, {"clinical": (4,), "genes": (76,)}, SURVIVAL, seed)
        merged = evaluate(merge([c, g]), data, data.ids("test"), SURVIVAL)["c_index"]
        _, result = fuse_blocks([c, g], root, "stack", TrainConfig(epochs=2, seed=seed, device="cpu"), progress=False)
        fused_scores.append(result.test["c_index"])
        with capsys.disabled():
            print(f"\nGSE7390 seed {seed}: merged {merged:.3f}, fused {result.test['c_index']:.3f} (test c-index)")
    assert sum(fused_scores) / len(fused_scores) > 0.5


def test_demo_runs_on_bundled_data_and_writes_its_table_and_artifacts(tmp_path):
    from legokit.demo import MODELS, run_demo

    log = io.StringIO()
    handler, logger = logging.StreamHandler(log), logging.getLogger("legokit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:  # not a terminal: a logged line per step (on standard error from the CLI)
        result = run_demo(tmp_path / "demo", seeds=1, console=Console(file=io.StringIO()))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = log.getvalue().splitlines()
    assert len(lines) == 7 and lines[0].startswith("seed 1/1: labs block done in ")
    assert lines[-1].startswith("seed 1/1: unpaired halves done in ")
    summary = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(summary["models"]) == set(MODELS)
    assert all(0.5 < m["test_with_visits"]["mean"] <= 1 for m in summary["models"].values())
    for name in ("labs", "visits", "merged", "fused"):
        assert load(tmp_path / "demo" / f"{name}.st") is not None
    # the data folder holds the split the artifacts were selected on: eval reproduces the table's seed-0 values
    for name, model in (("labs", "LegoBlock labs"), ("merged", "LegoMerge"), ("fused", "LegoFuse (stack, 2 epochs)")):
        scored = evaluate_model(load(tmp_path / "demo" / f"{name}.st"), tmp_path / "demo" / "data")
        assert scored["split_source"] == "splits.csv" and scored["samples"] == 58
        assert scored["c_index"] == pytest.approx(summary["models"][model]["per_seed_all_test"][0], abs=1e-9)
    assert result.data == {"patients": 388, "events": 131, "with_visits": 290, "visits": 642}


def test_cli_train_fuse_eval_on_a_dataset_folder(pbc, tmp_path):
    spec_flags = ["--latent", "8x16", "--epochs", "3", "--device", "cpu"]
    labs = cli_here(
        "train",
        str(pbc),
        "--modality",
        "labs",
        "--encoder-kwargs",
        '{"hidden": 16}',
        *spec_flags,
        "-o",
        str(tmp_path / "labs.st"),
    )
    assert labs.returncode == 0, labs.stderr
    visits = cli_here(
        "train", str(pbc), "--modality", "visits", "--encoder", "abmil", *spec_flags, "-o", str(tmp_path / "visits.st")
    )
    assert visits.returncode == 0, visits.stderr
    fused = cli_here(
        "fuse",
        str(tmp_path / "labs.st"),
        str(tmp_path / "visits.st"),
        "--data",
        str(pbc),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "fused.st"),
    )
    assert fused.returncode == 0, fused.stderr
    metrics = tmp_path / "metrics.json"
    evaluated = cli_here("eval", str(tmp_path / "fused.st"), str(pbc), "--json", str(metrics))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(metrics.read_text())["samples"] == 58
    bad = cli_here("train", str(pbc), "--modality", "scans", "-o", str(tmp_path / "x.st"))
    assert bad.returncode == 1 and "no modality 'scans'" in bad.stderr and "Traceback" not in bad.stderr


def test_shipped_block_specs_are_the_ones_the_demo_uses():
    root = Path(__file__).parent.parent
    for name in ("labs", "visits"):
        assert filecmp.cmp(root / "blocks" / f"{name}.yaml", root / "legokit" / "specs" / f"{name}.yaml", shallow=False)
        assert BlockSpec.from_yaml(root / "blocks" / f"{name}.yaml").modality == name
