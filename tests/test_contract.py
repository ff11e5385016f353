"""Contracts of blocks trained apart: a trained block records what its inputs and outputs mean (table feature names,
time unit and survival bin edges, class names), every reader aligns table columns by name, and every join (merge,
merge_files, CLI merge, fuse, recipes, growing a merged model) maps classes by name and refuses bins, units, class
sets or shared initialisation that disagree."""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import legokit
from legokit import ArtifactError, ConfigError, LegoError
from legokit.artifacts.format import read_metadata, write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.merging import contract_of_file
from legokit.artifacts.registry import BLOCK
from legokit.contract import Contract, Labelling, parse_edges
from legokit.data.bundled import write_pbc
from legokit.data.folder import DataError, read_table, read_texts
from legokit.data.labels import random_split, read_labels
from legokit.data.training import SplitData
from legokit.nn.block import BlockConfig
from legokit.recipe import Recipe
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.metrics import survival_bins
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import (
    build_block,
    evaluate_model,
    fuse_blocks,
    labelled_data,
    labelled_for,
    train_block,
    train_wrapped_block,
)

from .conftest import cli_here, legokit_warnings

TINY = dict(latent=(8, 16), depth=1, dim_head=16)
LABS = ("labs", "snn", {"hidden": 16})
VISITS = ("visits", "abmil", {"hidden": 16, "attention": 8})
VITALS = ("vitals", "snn", {"hidden": 16})
DAYS = Labelling("days", (365.0, 730.0, 1460.0))
SPEC_YAML = """modality: {modality}
encoder: {{name: {encoder}, kwargs: {kwargs}}}
latent: 8x16
depth: 1
dim_head: 16
training: {{epochs: 1}}
"""


# --- helpers ---------------------------------------------------------------------------------------------------------


def _train(folder: Path, which: tuple, labelling: Labelling = Labelling(), task: str = "survival:4", **training):
    modality, encoder, kwargs = which
    spec = BlockSpec(modality, encoder, kwargs, task=TaskSpec.parse(task), labelling=labelling, **TINY)
    return train_block(folder, spec.override(epochs=1, **training), progress=False)[0]


def _spec_file(folder: Path, which: tuple) -> Path:
    modality, encoder, kwargs = which
    path = folder / f"{modality}-spec.yaml"
    path.write_text(SPEC_YAML.format(modality=modality, encoder=encoder, kwargs=json.dumps(kwargs)))
    return path


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def _table(source: Path, target: Path, columns: list[str], ids: set[str] | None = None) -> Path:
    """`source`'s rows (of `ids`), with the columns `columns` in that order after id."""
    header, rows = _read(source)
    at = [header.index(c) for c in columns]
    kept = [[row[0], *(row[k] for k in at)] for row in rows if ids is None or row[0] in ids]
    return _write(target, ["id", *columns], kept)


def _shuffled_copy(source: Path, target: Path, seed: int = 5) -> Path:
    """A copy of a dataset folder whose labs.csv has its feature columns in another order."""
    shutil.copytree(source, target)
    header, _ = _read(source / "labs.csv")
    columns = header[1:]
    random.Random(seed).shuffle(columns)
    assert columns != header[1:]
    _table(source / "labs.csv", target / "labs.csv", columns)
    return target


def _predictions(model, folder: Path) -> dict[str, list[float]]:
    found = legokit.predict_folder(model, folder, device="cpu")
    return {name: dict(zip(found.ids, values)) for name, values in found.columns.items()}


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text and "Traceback" not in text


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbc(tmp_path_factory):
    """The PBC folder (plus vitals.csv, a third table) and blocks: labs and visits on one set of bins in days,
    vitals on other bins in days, vitals on bins in years; all saved."""
    root = tmp_path_factory.mktemp("contract")
    data = root / "data"
    write_pbc(data)
    _table(data / "labs.csv", data / "vitals.csv", ["bili", "albumin", "protime", "age"])
    blocks = {
        "labs": _train(data, LABS, DAYS),
        "visits": _train(data, VISITS, DAYS),
        "vitals_bins": _train(data, VITALS, Labelling("days", (500.0, 1000.0, 2000.0))),
        "vitals_years": _train(data, VITALS, Labelling("years", (1.0, 2.0, 4.0))),
    }
    paths = {name: legokit.save_block(block, root / f"{name}.st") for name, block in blocks.items()}
    return {
        "root": root,
        "data": data,
        "blocks": blocks,
        "paths": paths,
        "shuffled": _shuffled_copy(data, root / "shuffled"),
    }


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """The PBC folder with class-name labels (cat/dog/eel, a fixed order: stage), and labs and visits blocks
    trained on it (multiclass:3, classes sorted by name)."""
    root = tmp_path_factory.mktemp("classes")
    data = root / "data"
    write_pbc(data)
    header, rows = _read(data / "labs.csv")
    stage = header.index("stage")
    names = {1.0: "cat", 2.0: "cat", 3.0: "dog", 4.0: "eel"}
    _write(data / "labels.csv", ["id", "label"], [[row[0], names.get(float(row[stage]), "dog")] for row in rows])
    blocks = {which[0]: _train(data, which, task="multiclass:3") for which in (LABS, VISITS)}
    return {"root": root, "data": data, "blocks": blocks}


# --- the recorded contract ------------------------------------------------------------------------------------------


def test_train_with_bins_records_schema_unit_and_edges_and_inspect_shows_them(pbc, tmp_path):
    data = pbc["data"]
    out = tmp_path / "labs.st"
    code = cli_here(
        "train",
        str(data),
        "--spec",
        str(_spec_file(tmp_path, LABS)),
        "--bins",
        "365,730,1460",
        "--time-unit",
        "days",
        "-o",
        str(out),
    )
    assert code.returncode == 0, code.stderr
    header, _ = _read(data / "labs.csv")
    contract = legokit.load_block(out).config.contract
    assert contract == Contract(features=tuple(header[1:]), time_unit="days", edges=(365.0, 730.0, 1460.0))
    stored = json.loads(read_metadata(out)["legokit.config"])["contract"]
    assert stored == {"features": header[1:], "time_unit": "days", "edges": [365.0, 730.0, 1460.0]}
    shown = cli_here("inspect", str(out), "--json", str(tmp_path / "facts.json"))
    assert shown.returncode == 0, shown.stderr
    assert json.loads((tmp_path / "facts.json").read_text())["contract"] == stored
    assert "17 features by name" in shown.stdout and "1460" in shown.stdout and "days" in shown.stdout


def test_the_number_of_bins_is_inferred_from_the_edges_when_no_task_is_given(pbc, tmp_path):
    out = tmp_path / "labs3.st"
    code = cli_here(
        "train",
        str(pbc["data"]),
        "--spec",
        str(_spec_file(tmp_path, LABS)),
        "--bins",
        "400,1200",
        "--time-unit",
        "weeks",
        "-o",
        str(out),
    )
    assert code.returncode == 0, code.stderr
    block = legokit.load_block(out)
    assert str(block.config.task) == "survival:3"
    assert (block.config.contract.time_unit, block.config.contract.edges) == ("weeks", (400.0, 1200.0))


def test_default_bins_are_quantiles_of_all_labelled_training_samples_of_the_split(pbc):
    data = pbc["data"]
    labs, visits = _train(data, LABS, seed=4), _train(data, VISITS, seed=4)
    labels = read_labels(data / "labels.csv", TaskSpec("survival", 4))
    train = [i for i, split in random_split(labels.ids, 4).items() if split == "train"]
    targets = labels.select(train)
    expected = tuple(survival_bins(targets["time"], targets["event"], 4)[1:-1].tolist())
    assert labs.config.contract.edges == pytest.approx(expected)
    # visits has fewer patients than labels.csv: its bins are still the whole split's, so the blocks merge
    assert visits.config.contract.edges == labs.config.contract.edges
    assert labs.config.contract.time_unit is None
    legokit.merge([labs, visits])


# --- tables aligned by name -----------------------------------------------------------------------------------------


def test_predict_and_eval_read_table_columns_by_name_in_any_order(pbc):
    labs, visits = pbc["blocks"]["labs"], pbc["blocks"]["visits"]
    merged = legokit.merge([labs, visits])
    for model in (labs, merged):
        assert _predictions(model, pbc["shuffled"]) == _predictions(model, pbc["data"])
    assert evaluate_model(labs, pbc["shuffled"]) == evaluate_model(labs, pbc["data"])


def test_fuse_and_train_block_read_table_columns_by_name(pbc):
    labs, visits = pbc["blocks"]["labs"], pbc["blocks"]["visits"]
    fused = {}
    for name in ("data", "shuffled"):
        model, result = fuse_blocks(
            [copy.deepcopy(labs), copy.deepcopy(visits)],
            pbc[name],
            config=TrainConfig(epochs=1, device="cpu"),
            progress=False,
        )
        fused[name] = (result.test, _predictions(model, pbc["data"]))
    assert fused["data"] == fused["shuffled"]
    retrained, _ = train_wrapped_block(
        pbc["shuffled"], legokit.load_block(pbc["paths"]["labs"]), TrainConfig(epochs=1, device="cpu"), progress=False
    )
    assert retrained.config.contract.features == labs.config.contract.features
    assert retrained.config.contract.edges == DAYS.bins


def test_a_missing_column_is_refused_by_name_and_extra_columns_are_ignored_with_a_warning(pbc, tmp_path):
    labs = pbc["blocks"]["labs"]
    header, _ = _read(pbc["data"] / "labs.csv")
    folder = tmp_path / "missing"
    _table(pbc["data"] / "labs.csv", folder / "labs.csv", [c for c in header[1:] if c != "bili"])
    shutil.copy(pbc["data"] / "labels.csv", folder / "labels.csv")
    with pytest.raises(
        DataError, match=r"labs\.csv: no column 'bili'; the labs block was trained on 17 features"
    ) as exc:
        legokit.predict_folder(labs, folder, device="cpu")
    _one_line(exc.value)
    with pytest.raises(DataError, match="no column 'bili'"):
        evaluate_model(labs, folder)

    extra = tmp_path / "extra"
    shutil.copytree(pbc["data"], extra)
    original, rows = _read(pbc["data"] / "labs.csv")
    _write(
        extra / "labs.csv",
        [*original[:3], "height", *original[3:]],
        [[*row[:3], str(150 + k), *row[3:]] for k, row in enumerate(rows)],
    )
    with legokit_warnings() as messages:
        found = _predictions(labs, extra)
    assert found == _predictions(labs, pbc["data"])
    assert any("ignoring 1 column(s)" in m and "height" in m for m in messages), messages


def test_a_block_without_feature_names_reads_tables_by_position_with_a_warning(pbc, tmp_path):
    named = pbc["blocks"]["labs"]
    older = copy.deepcopy(named)
    older.config = replace(older.config, contract=Contract())
    path = legokit.save_block(older, tmp_path / "older.st")
    loaded = legokit.load_block(path)
    assert loaded.config.contract == Contract()
    with legokit_warnings() as messages:
        in_order = _predictions(loaded, pbc["data"])
    assert any("records no feature names" in m for m in messages), messages
    assert in_order == _predictions(named, pbc["data"])
    assert _predictions(loaded, pbc["shuffled"]) != in_order  # by position: the shuffled columns change the inputs


# --- survival bins and time units -----------------------------------------------------------------------------------


def test_bins_from_converts_the_labels_times_into_the_source_unit(pbc, tmp_path):
    data, years = pbc["data"], tmp_path / "years"
    shutil.copytree(data, years)
    header, rows = _read(data / "labels.csv")
    _write(years / "labels.csv", header, [[i, repr(float(t) / 365.25), e] for i, t, e in rows])
    labelling = Labelling.from_contract(contract_of_file(pbc["paths"]["labs"]), "years")
    block = build_block(BlockSpec(*VITALS, **TINY), (4,))
    loaded = labelled_for(block, years, labelling, seed=0, splits=None)
    days = read_labels(data / "labels.csv", TaskSpec("survival", 4)).targets["time"]
    assert torch.allclose(loaded.labels.targets["time"], days, rtol=1e-9)
    assert (block.config.contract.time_unit, block.config.contract.edges) == ("days", DAYS.bins)
    scored, _, _ = labelled_data(pbc["blocks"]["labs"], years, seed=0, time_unit="years")  # eval, fuse, adapt
    assert torch.allclose(scored.labels.targets["time"], days, rtol=1e-9)


JOINS = ("merge", "merge_files", "cli merge", "fuse", "recipe", "grow a merged model")


def _join(how: str, pbc, first: str, second: str, tmp_path: Path) -> None:
    """Join block `first` and `second` of the fixture one way; growing merges labs+visits first, then `second`."""
    blocks, paths = pbc["blocks"], pbc["paths"]
    out = tmp_path / f"{how.replace(' ', '-')}.st"
    if how == "merge":
        legokit.merge([blocks[first], blocks[second]])
    elif how == "merge_files":
        legokit.merge_files([paths[first], paths[second]], out)
    elif how == "cli merge":
        result = cli_here("merge", str(paths[first]), str(paths[second]), "-o", str(out))
        assert result.returncode == 1 and not out.exists()
        raise ConfigError(" ".join(result.stderr.split()))
    elif how == "fuse":
        legokit.fuse([blocks[first], blocks[second]])
    elif how == "recipe":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"blocks:\n  {blocks[first].modality}: {{artifact: {paths[first]}}}\n"
            f"  {blocks[second].modality}: {{artifact: {paths[second]}}}\n"
            f"operation: {{kind: merge}}\noutput: {out}\n"
        )
        Recipe.from_yaml(recipe).check()
    else:
        grown = legokit.merge([blocks["labs"], blocks["visits"]])
        legokit.merge([grown, blocks[second]])


@pytest.mark.parametrize("how", JOINS)
def test_every_join_refuses_blocks_with_other_survival_bins(pbc, tmp_path, how):
    with pytest.raises(ConfigError) as exc:
        _join(how, pbc, "labs", "vitals_bins", tmp_path)
    message = str(exc.value)
    assert "survival bins differ" in message and "--bins-from" in message, message
    assert "labs" in message and "vitals" in message, message
    assert "365" in message and "500" in message, message


@pytest.mark.parametrize("how", JOINS)
def test_every_join_refuses_blocks_with_other_time_units(pbc, tmp_path, how):
    with pytest.raises(ConfigError, match="time units differ") as exc:
        _join(how, pbc, "labs", "vitals_years", tmp_path)
    assert "days" in str(exc.value) and "years" in str(exc.value)


def test_blocks_with_one_set_of_bins_join_every_way(pbc, tmp_path):
    merged = legokit.merge_files([pbc["paths"]["labs"], pbc["paths"]["visits"]], tmp_path / "m.st")
    assert contract_of_file(merged) == Contract(time_unit="days", edges=DAYS.bins)
    legokit.fuse([pbc["blocks"]["labs"], pbc["blocks"]["visits"]])
    grown = legokit.merge_files(
        [merged, legokit.save_block(_train(pbc["data"], VITALS, DAYS), tmp_path / "v.st")], tmp_path / "grown.st"
    )
    assert legokit.load(grown).modalities == ["labs", "visits", "vitals"]


# --- classes ----------------------------------------------------------------------------------------------------------


def test_class_names_are_sorted_by_default_fixed_by_classes_and_name_the_prediction_columns(classes, tmp_path):
    data = classes["data"]
    assert classes["blocks"]["labs"].config.contract.classes == ("cat", "dog", "eel")
    out = tmp_path / "ordered.st"
    code = cli_here(
        "train",
        str(data),
        "--spec",
        str(_spec_file(tmp_path, LABS)),
        "--task",
        "multiclass:3",
        "--classes",
        "eel,cat,dog",
        "-o",
        str(out),
    )
    assert code.returncode == 0, code.stderr
    block = legokit.load_block(out)
    assert block.config.contract.classes == ("eel", "cat", "dog")
    predicted = tmp_path / "p.csv"
    assert cli_here("predict", str(out), str(data), "-o", str(predicted)).returncode == 0
    assert _read(predicted)[0] == ["id", "prob_eel", "prob_cat", "prob_dog"]
    assert list(_predictions(classes["blocks"]["labs"], data)) == ["prob_cat", "prob_dog", "prob_eel"]


def test_integer_labels_are_classes_and_binary_names_need_classes(classes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(classes["data"], data)
    header, rows = _read(classes["data"] / "labels.csv")
    _write(data / "labels.csv", header, [[i, str(["cat", "dog", "eel"].index(label))] for i, label in rows])
    assert _train(data, LABS, task="multiclass:3").config.contract.classes == ("0", "1", "2")
    _write(data / "labels.csv", header, [[i, "no" if label == "cat" else "yes"] for i, label in rows])
    spec = str(_spec_file(tmp_path, LABS))
    refused = cli_here("train", str(data), "--spec", spec, "--task", "binary", "-o", str(tmp_path / "b.st"))
    assert refused.returncode == 1 and "binary labels must be 0/1" in refused.stderr and "--classes" in refused.stderr
    named = cli_here(
        "train", str(data), "--spec", spec, "--task", "binary", "--classes", "yes,no", "-o", str(tmp_path / "b.st")
    )
    assert named.returncode == 0, named.stderr
    assert legokit.load_block(tmp_path / "b.st").config.contract.classes == ("yes", "no")
    labels = read_labels(data / "labels.csv", TaskSpec("binary", 1), ("yes", "no"))
    assert labels.targets["label"][[k for k, (_, name) in enumerate(rows) if name == "cat"]].eq(1).all()


def test_multilabel_columns_are_read_by_name_and_named_in_predictions(classes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(classes["data"], data)
    _, rows = _read(classes["data"] / "labels.csv")
    _write(
        data / "labels.csv",
        ["id", "feline", "aquatic"],
        [[i, int(label == "cat"), int(label == "eel")] for i, label in rows],
    )
    block = _train(data, LABS, task="multilabel:2")
    assert block.config.contract.classes == ("feline", "aquatic")
    assert list(_predictions(block, data)) == ["prob_feline", "prob_aquatic"]
    _write(
        data / "labels.csv",
        ["id", "aquatic", "feline"],
        [[i, int(label == "eel"), int(label == "cat")] for i, label in rows],
    )
    swapped = read_labels(data / "labels.csv", TaskSpec("multilabel", 2), block.config.contract.classes)
    cats = [k for k, (_, label) in enumerate(rows) if label == "cat"]
    assert swapped.targets["label"][cats, 0].eq(1).all() and swapped.targets["label"][cats, 1].eq(0).all()


def _relabelled(block, order: list[int], names: tuple[str, ...], negate: bool = False):
    """The same block with its outputs reordered (`order[k]`: the old output of new output k) and named `names`."""
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for tensor in (twin.task_head.linear.weight, twin.task_head.linear.bias):
            tensor.copy_(-tensor[order] if negate else tensor[order])
    twin.config = replace(twin.config, contract=replace(twin.config.contract, classes=names))
    return twin


def test_merging_blocks_with_classes_in_another_order_maps_them_by_name(classes, tmp_path):
    labs, visits = classes["blocks"]["labs"], classes["blocks"]["visits"]
    reference = _predictions(legokit.merge([labs, visits]), classes["data"])
    permuted = _relabelled(visits, [2, 0, 1], ("eel", "cat", "dog"))
    alone = _predictions(visits, classes["data"])["prob_eel"]
    assert list(_predictions(permuted, classes["data"])["prob_eel"].values()) == pytest.approx(list(alone.values()))
    for model in (
        legokit.merge([labs, permuted]),
        legokit.merge([permuted, labs]),
        legokit.load(
            legokit.merge_files(
                [legokit.save_block(labs, tmp_path / "l.st"), legokit.save_block(permuted, tmp_path / "v.st")],
                tmp_path / "m.st",
            )
        ),
    ):
        found = _predictions(model, classes["data"])
        assert list(found) == ["prob_cat", "prob_dog", "prob_eel"]
        for name, values in reference.items():
            assert [found[name][i] for i in values] == pytest.approx(list(values.values()), abs=1e-6)
    # the reference block (the first modality by name) permuted: columns in its order, each class's values kept
    found = _predictions(legokit.merge([_relabelled(labs, [1, 2, 0], ("dog", "eel", "cat")), visits]), classes["data"])
    assert list(found) == ["prob_dog", "prob_eel", "prob_cat"]
    for name, values in reference.items():
        assert [found[name][i] for i in values] == pytest.approx(list(values.values()), abs=1e-6)


def test_a_binary_block_with_reversed_class_names_has_its_logit_negated(classes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(classes["data"], data)
    header, rows = _read(classes["data"] / "labels.csv")
    _write(data / "labels.csv", header, [[i, "yes" if label == "eel" else "no"] for i, label in rows])
    no_yes = Labelling(classes=("no", "yes"))
    labs, visits = (_train(data, which, no_yes, task="binary") for which in (LABS, VISITS))
    assert labs.config.contract.classes == ("no", "yes")
    reversed_visits = _relabelled(visits, [0], ("yes", "no"), negate=True)  # the same model, the other way round
    expected = _predictions(legokit.merge([labs, visits]), data)["prob"]
    found = _predictions(legokit.merge([labs, reversed_visits]), data)["prob"]
    assert list(found.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    unmapped = _relabelled(visits, [0], ("yes", "no"))  # names reversed, weights kept: another model
    assert list(_predictions(legokit.merge([labs, unmapped]), data)["prob"].values()) != pytest.approx(
        list(expected.values()), abs=1e-6
    )


def test_blocks_with_other_class_sets_or_initialisation_are_refused(classes):
    labs, visits = classes["blocks"]["labs"], classes["blocks"]["visits"]
    foxes = _relabelled(visits, [0, 1, 2], ("cat", "dog", "fox"))
    with pytest.raises(ConfigError, match="class names differ: labs has cat, dog, eel, visits has cat, dog, fox"):
        legokit.merge([labs, foxes])
    with pytest.raises(ConfigError, match="class names differ"):
        legokit.fuse([labs, foxes])
    alone = copy.deepcopy(visits)
    alone.config = replace(alone.config, shared_init=False)
    with pytest.raises(ConfigError, match="disagree on shared initialisation"):
        legokit.merge([labs, alone])


# --- missing modalities -----------------------------------------------------------------------------------------------


def test_empty_texts_are_samples_without_the_modality(tmp_path):
    _write(tmp_path / "notes.csv", ["id", "text"], [["p1", "pain"], ["p2", ""], ["p3", "  \t "], ["p4", "ok"]])
    assert set(read_texts("notes", tmp_path).texts) == {"p1", "p4"}
    folder = tmp_path / "letters"
    folder.mkdir()
    for sample, text in (("p1", "dear"), ("p2", ""), ("p3", "\n  \n"), ("p4", "sincerely")):
        (folder / f"{sample}.txt").write_text(text)
    assert set(read_texts("letters", tmp_path).texts) == {"p1", "p4"}


def test_an_all_empty_table_row_is_a_missing_modality_but_a_partly_empty_one_is_an_error(tmp_path):
    path = _write(tmp_path / "tab.csv", ["id", "a", "b"], [["p1", "1", "2"], ["p2", "", " "], ["p3", "3", "4"]])
    table = read_table("tab", path)
    assert set(table.rows) == {"p1", "p3"}
    _write(path, ["id", "a", "b"], [["p1", "1", "2"], ["p2", "", "5"]])
    with pytest.raises(DataError, match=r"row 3, column a: '' is not a number"):
        read_table("tab", path)


def test_a_row_empty_in_every_named_feature_is_missing_even_with_an_ignored_column_filled(tmp_path):
    path = _write(tmp_path / "tab.csv", ["id", "a", "b", "note"], [["p1", "1", "2", "x"], ["p2", "", "", "7"]])
    assert set(read_table("tab", path, names=("a", "b")).rows) == {"p1"}


def test_an_unknown_id_after_an_all_empty_row_is_named_by_its_own_row(tmp_path):
    _write(tmp_path / "labels.csv", ["id", "time", "event"], [["p1", "10", "1"], ["p3", "20", "0"]])
    _write(tmp_path / "tab.csv", ["id", "a", "b"], [["p1", "1", "2"], ["p2", "", ""], ["pX", "3", "4"]])
    with pytest.raises(DataError, match=r"tab\.csv: row 4, column id: 'pX' is not in"):
        SplitData.load(tmp_path, {"tab": (2,)}, TaskSpec("survival", 4))


# --- hostile headers --------------------------------------------------------------------------------------------------


HOSTILE = {
    "edges not increasing": {"time_unit": "days", "edges": [730, 365, 1460]},
    "edges not numbers": {"edges": ["365", "730", "1460"]},
    "edges not the task's bins": {"time_unit": "days", "edges": [365, 730]},
    "too few feature names": {"features": ["age", "bili"]},
    "features not a list": {"features": "age,bili"},
    "class names not strings": {"classes": [1, 2, 3]},
    "unknown key": {"edges": [365, 730, 1460], "colour": "red"},
    "unknown unit": {"time_unit": "fortnights"},
    "contract not a mapping": [1, 2, 3],
    "an edge too large for a float": {"time_unit": "days", "edges": [365, 730, 10**400]},
    "a feature name with a terminal escape": {"features": ["\x1b[2J"] + [f"f{k}" for k in range(16)]},
}


@pytest.mark.parametrize("contract", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_contract_in_a_header_is_a_one_line_error(pbc, tmp_path, contract):
    block = pbc["blocks"]["labs"]
    config = block.config.to_dict()
    config["contract"] = contract
    if isinstance(contract, dict) and "classes" in contract:  # on a classifier, so that only the names' type is wrong
        config["task"] = TaskSpec("multiclass", 3).to_dict()
    with pytest.raises((ConfigError, ArtifactError)) as direct:
        BlockConfig.from_dict(config)
    _one_line(direct.value)
    path = write_artifact(tmp_path / "hostile.st", BLOCK, config, block_tensors(block))
    for action in (
        lambda: legokit.load(path),
        lambda: contract_of_file(path),
        lambda: legokit.merge_files([path, pbc["paths"]["visits"]], tmp_path / "m.st"),
    ):
        with pytest.raises(LegoError) as exc:
            action()
        assert isinstance(exc.value, (ConfigError, ArtifactError))
        _one_line(exc.value)
    result = cli_here("inspect", str(path))
    assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


# --- end to end -------------------------------------------------------------------------------------------------------


def test_blocks_trained_apart_at_two_sites_merge_and_are_scored_on_a_third(tmp_path):
    full = tmp_path / "full"
    write_pbc(full)
    header, rows = _read(full / "labels.csv")
    ids = [row[0] for row in rows]
    random.Random(11).shuffle(ids)
    site_a, site_b, held = set(ids[:150]), set(ids[150:300]), set(ids[300:])
    labs_header, _ = _read(full / "labs.csv")
    spec_labs, spec_visits = str(_spec_file(tmp_path, LABS)), str(_spec_file(tmp_path, VISITS))

    a = tmp_path / "site-a"
    _write(a / "labels.csv", header, [row for row in rows if row[0] in site_a])
    _table(full / "labs.csv", a / "labs.csv", labs_header[1:], site_a)

    def site_b_folder(name: str, unit: float) -> Path:
        folder = tmp_path / name
        _write(folder / "labels.csv", header, [[i, repr(float(t) / unit), e] for i, t, e in rows if i in site_b])
        (folder / "visits").mkdir()
        for sample in site_b:
            if (full / "visits" / f"{sample}.safetensors").exists():
                shutil.copy(full / "visits" / f"{sample}.safetensors", folder / "visits")
        return folder

    b_years, b_days = site_b_folder("site-b", 365.25), site_b_folder("site-b-days", 1.0)

    c = tmp_path / "site-c"
    _write(c / "labels.csv", header, [row for row in rows if row[0] in held])
    _table(full / "labs.csv", c / "labs.csv", list(reversed(labs_header[1:])), held)
    (c / "visits").mkdir()
    for sample in held:
        if (full / "visits" / f"{sample}.safetensors").exists():
            shutil.copy(full / "visits" / f"{sample}.safetensors", c / "visits")
    _write(c / "splits.csv", ["id", "split"], [[i, "test"] for i in sorted(held)])

    def train(*args: str) -> None:
        result = cli_here("train", *args)
        assert result.returncode == 0, result.stderr

    train(str(a), "--spec", spec_labs, "--time-unit", "days", "-o", str(tmp_path / "a.st"))
    train(
        str(b_years),
        "--spec",
        spec_visits,
        "--bins-from",
        str(tmp_path / "a.st"),
        "--time-unit",
        "years",
        "-o",
        str(tmp_path / "b.st"),
    )
    unitless = cli_here(
        "train",
        str(b_years),
        "--spec",
        spec_visits,
        "--bins-from",
        str(tmp_path / "a.st"),
        "-o",
        str(tmp_path / "b-unitless.st"),
    )  # days or years? legokit does not guess
    assert unitless.returncode == 1 and "give --time-unit" in unitless.stderr, unitless.stderr
    contract_a = legokit.load_block(tmp_path / "a.st").config.contract
    contract_b = legokit.load_block(tmp_path / "b.st").config.contract
    assert (contract_b.time_unit, contract_b.edges) == ("days", contract_a.edges) and contract_a.time_unit == "days"

    merged = cli_here("merge", str(tmp_path / "a.st"), str(tmp_path / "b.st"), "-o", str(tmp_path / "ab.st"))
    assert merged.returncode == 0, merged.stderr
    scored = cli_here("eval", str(tmp_path / "ab.st"), str(c), "--json", str(tmp_path / "eval.json"))
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["samples"] == len(held) and 0.0 <= metrics["c_index"] <= 1.0

    # site B on its own bins: refused, whether in its own unit (years) or in days (other quantiles)
    train(str(b_years), "--spec", spec_visits, "--time-unit", "years", "-o", str(tmp_path / "b-own.st"))
    train(str(b_days), "--spec", spec_visits, "--time-unit", "days", "-o", str(tmp_path / "b-own-days.st"))
    for own, message in (("b-own.st", "time units differ"), ("b-own-days.st", "survival bins differ")):
        refused = cli_here("merge", str(tmp_path / "a.st"), str(tmp_path / own), "-o", str(tmp_path / "bad.st"))
        assert refused.returncode == 1 and message in " ".join(refused.stderr.split()), refused.stderr
        assert not (tmp_path / "bad.st").exists()


# --- what an attacker tried (review of this change) -------------------------------------------------------------------


def test_bins_from_the_output_file_is_refused_before_training(pbc, tmp_path):
    target = tmp_path / "o.st"
    shutil.copyfile(pbc["paths"]["labs"], target)
    before = target.read_bytes()
    result = cli_here(
        "train",
        str(pbc["data"]),
        "--modality",
        "labs",
        "--epochs",
        "1",
        "--latent",
        "8x16",
        "--bins-from",
        str(target),
        "--time-unit",
        "days",
        "-o",
        str(target),
    )
    assert result.returncode == 1 and "error:" in result.stderr
    assert target.read_bytes() == before


def test_bins_from_an_edited_file_is_refused_by_its_checksum(pbc, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "edited.st"
    metadata = read_metadata(pbc["paths"]["labs"])
    config = json.loads(metadata["legokit.config"])
    config["contract"]["edges"] = [1.0, 2.0, 3.0]
    save_file(load_file(pbc["paths"]["labs"]), path, {**metadata, "legokit.config": json.dumps(config)})
    with pytest.raises(ArtifactError, match="checksum"):
        contract_of_file(path)


def test_class_names_with_markup_are_printed_as_text(classes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(classes["data"], data)
    header, rows = _read(data / "labels.csv")
    renamed = {"cat": "[red]x[/red]", "dog": "[/oops]", "eel": "c,d"}
    _write(data / "labels.csv", header, [[row[0], renamed[row[1]]] for row in rows])
    spec = _spec_file(tmp_path, LABS)
    assert (
        cli_here(
            "train", str(data), "--spec", str(spec), "--task", "multiclass:3", "-o", str(tmp_path / "m.st")
        ).returncode
        == 0
    )
    result = cli_here("predict", str(tmp_path / "m.st"), str(data), "-o", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    assert "prob_[red]x[/red]" in result.stdout
    assert _read(tmp_path / "p.csv")[0] == ["id", "prob_[/oops]", "prob_[red]x[/red]", "prob_c,d"]


def test_tied_times_train_with_repeated_quantile_edges(pbc, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pbc["data"], data)
    header, rows = _read(data / "labels.csv")
    _write(data / "labels.csv", header, [[r[0], str(1 + int(float(r[1]) // 365.25) * 365), r[2]] for r in rows])
    block = _train(data, LABS, task="survival:8")
    edges = block.config.contract.edges
    assert len(edges) == 7 and len(set(edges)) < 7 and list(edges) == sorted(edges)
    with pytest.raises(ConfigError, match="increase strictly"):
        parse_edges("365,365,730")
    retrained = train_wrapped_block(data, block, TrainConfig(epochs=1), progress=False)[0]  # its own tied bins
    assert retrained.config.contract.edges == edges
    again = _train(data, LABS, Labelling.from_contract(block.config.contract, None), task="survival:8")
    assert again.config.contract.edges == edges


def test_class_names_in_a_message_are_bounded_and_control_characters_refused():
    many = tuple(f"class-{k:05d}-" + "x" * 180 for k in range(4000))
    config = replace(BlockConfig.from_dict(_classifier_config(4000)), contract=Contract(classes=many))
    other = replace(config, modality="other", contract=Contract(classes=many[:-1] + ("another",)))
    with pytest.raises(ConfigError, match="class names differ") as exc:
        legokit.compose.joins.check_joinable([config, other])
    assert len(str(exc.value)) < 3000
    with pytest.raises(ConfigError, match="control character"):
        Contract(classes=("a", "b\x1b[2J"))


def _classifier_config(n: int) -> dict:
    return {
        "modality": "tab",
        "encoder": {"name": "snn", "kwargs": {"in_features": 4, "hidden": 8}, "out_dim": 8},
        "input_shape": [4],
        "task": {"kind": "multiclass", "n": n},
        "latent": [8, 16],
        "depth": 1,
        "fft_axes": "both",
        "heads": 1,
        "dim_head": 16,
        "ff_mult": 4,
        "dropout": 0.0,
    }


def test_labels_and_tables_with_ambiguous_headers_or_cells_are_one_line_errors(tmp_path):
    labels = _write(tmp_path / "labels.csv", ["id", "x", "x"], [["p1", "1", "0"]])
    with pytest.raises(DataError, match="'x' appears twice"):
        read_labels(labels, TaskSpec("multilabel", 2))
    unnamed = _write(tmp_path / "tab.csv", ["id", "a", ""], [["p1", "1", "2"]])
    with pytest.raises(DataError, match="column 3 of the header: a name must be a non-empty string"):
        read_table("tab", unnamed)
    empty = _write(tmp_path / "empty.csv", ["id", "label"], [["p1", "a"], ["p2", " "]])
    with pytest.raises(DataError, match="row 3, column label: empty"):
        read_labels(empty, TaskSpec("multiclass", 2), ("a", "b"))
    years = _write(tmp_path / "years.csv", ["id", "time", "event"], [["p1", "1.7e308", "1"]])
    with pytest.raises(DataError, match="out of range"):
        read_labels(years, TaskSpec("survival", 2), time_scale=365.25)


def test_given_class_names_match_cells_as_numbers_do(tmp_path):
    path = _write(tmp_path / "labels.csv", ["id", "label"], [["p1", "0"], ["p2", "1.0"], ["p3", "2"]])
    labels = read_labels(path, TaskSpec("multiclass", 3), ("2.0", "0.0", "1.0"))
    assert labels.targets["label"].tolist() == [1, 2, 0] and labels.classes == ("2", "0", "1")
    with pytest.raises(DataError, match="name one class"):
        read_labels(path, TaskSpec("multiclass", 4), ("1", "1.0", "0", "2"))
    stages = _write(tmp_path / "stages.csv", ["id", "label"], [["p1", "1_2"], ["p2", "12"]])
    assert read_labels(stages, TaskSpec("multiclass", 2)).classes == ("12", "1_2")


def test_bins_flag_must_be_a_full_list(pbc, tmp_path):
    for bins in ("", "1,,2", "nan", "2,1"):
        result = cli_here("train", str(pbc["data"]), "--modality", "labs", "--bins", bins, "-o", str(tmp_path / "x.st"))
        assert result.returncode == 1 and ("--bins" in result.stderr or "bin edges" in result.stderr), (
            bins,
            result.stderr,
        )
        assert not (tmp_path / "x.st").exists()


def test_real_world_names_are_accepted_and_messages_escape_what_a_file_says(tmp_path):
    path = _write(tmp_path / "tab.csv", ["id", "temp\u00a0max", "soft\u00adhyphen", "\u4e2d"], [["p1", "1", "2", "3"]])
    assert read_table("tab", path).columns == ("temp\u00a0max", "soft\u00adhyphen", "\u4e2d")
    tabbed = _write(tmp_path / "tabbed.csv", ["id", "a\tb"], [["p1", "1"]])
    with pytest.raises(DataError, match="tabbed.csv: column 2 of the header: .*control character"):
        read_table("tab", tabbed)
    noisy = _write(tmp_path / "noisy.csv", ["id", "a", "\x1b[2J" + "Z" * 5000], [["p1", "1", "2"]])
    with legokit_warnings() as warned:
        read_table("tab", noisy, names=("a",))
    assert warned and "\x1b" not in warned[0] and len(warned[0]) < 500
    labels = _write(tmp_path / "labels.csv", ["id", "time", "event", "", ""], [["p1", "1", "1", "", ""]])
    assert read_labels(labels, TaskSpec("survival", 2)).ids == ("p1",)  # unread columns may repeat
