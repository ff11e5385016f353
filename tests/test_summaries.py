"""What people read: `inspect` and `merge` print a short summary (training history summarised, every fact with -v or
--json), and progress and log lines go to standard error, never among the results on standard output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import legokit.demo
from legokit.artifacts.files import save, save_block
from legokit.cli.commands import main
from legokit.compose.merge import merge
from legokit.data.bundled import write_pbc
from legokit.demo import MODELS, DemoResult, default_spec
from legokit.spec import BlockSpec
from legokit.training.trainer import FUSE_TRAINING
from legokit.training.workflows import fuse_blocks, train_block

MOST_LINES = 25  # a summary fits on one screen


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The demo's two blocks as the demo trains them (its specs, seed 0: tens of epochs of history each), their
    merge and their fusion, saved."""
    root = tmp_path_factory.mktemp("summaries")
    write_pbc(root / "data")
    with pytest.MonkeyPatch.context() as patch:  # a short data path, as `legokit demo` records (legokit-demo/data)
        patch.chdir(root)
        labs, _ = train_block("data", default_spec("labs"), progress=False)
        visits, _ = train_block("data", default_spec("visits"), progress=False)
        fused, _ = fuse_blocks([labs, visits], "data", "stack", FUSE_TRAINING, progress=False)
    return {
        "data": root / "data",
        "labs": save_block(labs, root / "labs.st"),
        "visits": save_block(visits, root / "visits.st"),
        "merged": save(merge([labs, visits]), root / "merged.st"),
        "fused": save(fused, root / "fused.st"),
    }


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output as a log or a narrow terminal shows it: rich wraps at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")


@pytest.mark.parametrize("name", ["labs", "visits", "merged", "fused"])
def test_inspect_prints_a_short_summary_and_everything_with_verbose(trained, capsys, name):
    code, out, _ = _run(capsys, "inspect", str(trained[name]))
    assert code == 0 and len(out.splitlines()) <= MOST_LINES, out
    assert "best epoch" in out and "val/test c_index" in out and "train_loss" not in out
    code, full, _ = _run(capsys, "inspect", str(trained[name]), "-v")
    assert code == 0 and "train_loss" in full and '"history"' in full and len(full.splitlines()) > MOST_LINES


def _facts(capsys: pytest.CaptureFixture[str], path: Path) -> dict:
    code, out, _ = _run(capsys, "inspect", str(path), "--json", "-")
    assert code == 0
    return json.loads(out)


def test_inspect_summarises_the_run_epochs_best_epoch_stop_reason_and_data(trained, capsys):
    facts = _facts(capsys, trained["labs"])
    record = facts["provenance"]["trained"]
    assert len(record["history"]) > 10  # --json keeps the whole history: tens of epochs, screens of raw rows
    _, out, _ = _run(capsys, "inspect", str(trained["labs"]))
    ran = len(record["history"])
    stop = "all epochs" if ran == record["config"]["epochs"] else "early stop"
    assert f"best epoch {record['best_epoch']} of {ran} ({stop})" in out
    assert f"{record['val']['c_index']:.3f}/{record['test']['c_index']:.3f}" in out
    assert f"({record['split']} split, {record['train_samples']} training samples)" in out


def test_merge_prints_a_short_summary_and_everything_with_verbose(trained, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short paths, as `legokit merge legokit-demo/labs.st legokit-demo/visits.st` has
    for name in ("labs", "visits"):
        Path(f"{name}.st").write_bytes(trained[name].read_bytes())
    code, out, _ = _run(capsys, "merge", "labs.st", "visits.st", "-o", "model.st")
    assert code == 0 and len(out.splitlines()) <= MOST_LINES, out
    assert "labs trained" in out and "visits trained" in out and "merged from" in out and "train_loss" not in out
    code, full, _ = _run(capsys, "merge", "labs.st", "visits.st", "-o", "verbose.st", "-v")
    assert code == 0 and "train_loss" in full and "provenance.merged_from" in full


def _fake_seed(trained: dict[str, Path]) -> Callable[..., None]:
    """A stand-in for one demo seed: the same seven steps, a c-index for every model, the trained files as its
    artifacts (the demo's real work takes a minute and is tested in test_training.py)."""

    def run_seed(
        folder: Path,
        seed: int,
        out: Path,
        labs: BlockSpec,
        visits: BlockSpec,
        result: DemoResult,
        step: Callable[[str], None],
    ) -> None:
        for name in ("labs block", "visits block", "merge", "fuse", "late fusion", "Cox", "unpaired halves"):
            step(name)
        for model in MODELS:
            result.add(model, 0.75, 0.8)
        (out / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
        for name in ("labs", "visits", "merged", "fused"):
            (out / f"seed-{seed}" / f"{name}.st").write_bytes(trained[name].read_bytes())

    return run_seed


def test_the_demos_progress_goes_to_standard_error_and_its_table_to_standard_output(
    trained, capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(legokit.demo, "run_seed", _fake_seed(trained))
    code, out, err = _run(capsys, "demo", "--seeds", "1", "-o", str(tmp_path / "demo"))
    assert code == 0, err
    assert "seed 1/1: labs block done in" in err and "seed 1/1: unpaired halves done in" in err
    assert "CPU threads" in err and "legokit demo: Mayo PBC" in err
    assert "done in" not in out and "CPU threads" not in out
    assert "c-index on the test split" in out and "results.json" in out
    code, quiet, err = _run(capsys, "demo", "--seeds", "1", "-o", str(tmp_path / "demo"), "-q")
    assert code == 0 and quiet == "" and "done in" not in err


def test_json_to_standard_output_holds_only_the_json(trained, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(legokit.demo, "run_seed", _fake_seed(trained))
    code, out, err = _run(capsys, "demo", "--seeds", "1", "-o", str(tmp_path / "demo"), "--json", "-")
    assert code == 0 and set(json.loads(out)["models"]) == set(MODELS) and "done in" in err
