"""`legokit predict` on dataset folders: any subset of modalities per sample, clear errors for bad data."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import save_file

from legokit.artifacts.files import save
from legokit.compose.merge import merge
from legokit.data.folder import DataError
from legokit.predict import predict_folder
from legokit.wrap import wrap_builtin

from .conftest import SMALL, cli_here, run_cli


def _model(task: str = "survival:4"):
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", task, {"in_features": 3, "hidden": 16}, **SMALL)
    seq = wrap_builtin("mlp", None, "seq", task, {"in_features": 2, "hidden": 16}, input_shape=(None, 2), **SMALL)
    return merge([tab, seq]).eval(), tab.eval(), seq.eval()


def _folder(tmp_path, tab_rows=None):
    root = tmp_path / "data"
    (root / "seq").mkdir(parents=True)
    rows = tab_rows or ["id,a,b,c", "p1,0.1,0.2,0.3", "p2,1,2,3", "p3,-1,0,1"]
    (root / "tab.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(1)
    for sample, tokens in (("p2", 3), ("p3", 1), ("p4", 5)):
        save_file({"x": torch.randn(tokens, 2)}, root / "seq" / f"{sample}.safetensors")
    return root


def test_predictions_use_whatever_modalities_each_sample_has(tmp_path):
    model, tab, seq = _model()
    root = _folder(tmp_path)
    predictions = predict_folder(model, root, batch_size=2, device="cpu")
    assert predictions.ids == ["p1", "p2", "p3", "p4"]
    assert list(predictions.columns)[:2] == ["risk", "hazard_1"]
    only_tab = model({"tab": torch.tensor([[0.1, 0.2, 0.3]])})
    hazards = torch.sigmoid(only_tab)[0]
    assert predictions.columns["hazard_1"][0] == pytest.approx(hazards[0].item(), abs=1e-5)
    assert all(v == v for values in predictions.columns.values() for v in values)


@pytest.mark.parametrize(
    "task, columns",
    [("multiclass:3", ["prob_0", "prob_1", "prob_2"]), ("binary", ["prob"]), ("multilabel:2", ["prob_0", "prob_1"])],
)
def test_prediction_columns_follow_the_task(tmp_path, task, columns):
    model, _, _ = _model(task)
    predictions = predict_folder(model, _folder(tmp_path), device="cpu")
    assert list(predictions.columns) == columns
    if task == "multiclass:3":
        sums = [sum(p[i] for p in predictions.columns.values()) for i in range(4)]
        assert sums == pytest.approx([1.0] * 4, abs=1e-5)


def test_nan_in_a_table_names_file_row_and_column(tmp_path):
    model, _, _ = _model()
    root = _folder(tmp_path, ["id,a,b,c", "p1,0.1,nan,0.3"])
    with pytest.raises(DataError, match=r"tab\.csv: row 2, column b: nan"):
        predict_folder(model, root, device="cpu")


def test_text_in_a_table_and_a_wrong_width_are_named(tmp_path):
    model, _, _ = _model()
    with pytest.raises(DataError, match=r"row 3, column c: 'x' is not a number"):
        predict_folder(model, _folder(tmp_path, ["id,a,b,c", "p1,1,2,3", "p2,1,2,x"]), device="cpu")
    with pytest.raises(DataError, match="2 feature columns, but the model takes 3"):
        predict_folder(model, _folder(tmp_path / "w", ["id,a,b", "p1,1,2"]), device="cpu")


def test_a_bag_with_nan_is_named(tmp_path):
    model, _, _ = _model()
    root = _folder(tmp_path)
    save_file({"x": torch.tensor([[float("nan"), 0.0]])}, root / "seq" / "p9.safetensors")
    with pytest.raises(DataError, match=r"p9\.safetensors: 'x' holds NaN"):
        predict_folder(model, root, device="cpu")


def test_a_block_predicts_the_samples_that_have_its_modality(tmp_path):
    _, tab, _ = _model()
    predictions = predict_folder(tab, _folder(tmp_path), device="cpu")
    assert predictions.ids == ["p1", "p2", "p3"]
    expected = torch.sigmoid(tab(torch.tensor([[1.0, 2.0, 3.0]])))[0, 0].item()
    assert predictions.columns["hazard_1"][1] == pytest.approx(expected, abs=1e-5)


def test_cli_predict_writes_a_csv_atomically(tmp_path):
    model, _, _ = _model()
    path = save(model, tmp_path / "model.st")
    out = tmp_path / "predictions.csv"
    result = run_cli("predict", str(path), str(_folder(tmp_path)), "--device", "cpu", "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0][:2] == ["id", "risk"] and [r[0] for r in rows[1:]] == ["p1", "p2", "p3", "p4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model.st", "predictions.csv"]


def test_cli_merge_then_inspect_shows_the_graph(tmp_path):
    _, tab, seq = _model()
    save(tab, tmp_path / "tab.st")
    save(seq, tmp_path / "seq.st")
    result = cli_here(
        "merge",
        str(tmp_path / "tab.st"),
        str(tmp_path / "seq.st"),
        "--weights",
        "0.5,0.5",
        "-o",
        str(tmp_path / "model.st"),
    )
    assert result.returncode == 0, result.stderr
    shown = cli_here("inspect", str(tmp_path / "model.st"))
    assert shown.returncode == 0 and "merge (phase=paper)" in shown.stdout and "input:seq" in shown.stdout
    bad = cli_here("merge", str(tmp_path / "tab.st"), "-o", str(tmp_path / "x.st"))
    assert bad.returncode == 1 and "at least 2 blocks" in bad.stderr
