"""`legokit train --search N` on the bundled PBC cohort: the settings given come first, the rest are distinct seeded
grid points, the kept block is the trial with the best validation metric, its table is in the provenance and the
artifact, and a budget outside the grid is a one-line error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from legokit import load, save
from legokit.data.bundled import write_pbc
from legokit.errors import ConfigError
from legokit.spec import BlockSpec
from legokit.training.search import MOST_TRIALS, SEARCH_SPACE, trial_configs
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import train_block, train_wrapped_block

from .conftest import cli_here

TINY = BlockSpec("labs", "snn", {"hidden": 16}, latent=(8, 16), dim_head=16).override(epochs=4, patience=4)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return folder


def test_trials_start_with_the_given_settings_then_distinct_seeded_grid_points() -> None:
    base = TrainConfig(seed=3)
    configs = trial_configs(base, 6)
    assert configs[0] == base and len(configs) == 6
    points = [tuple(getattr(c, name) for name in SEARCH_SPACE) for c in configs]
    assert len(set(points)) == 6
    assert all(points[i][k] in values for i in range(1, 6) for k, values in enumerate(SEARCH_SPACE.values()))
    assert trial_configs(base, 6) == configs  # the same draw for the same seed
    assert trial_configs(replace(base, seed=4), 6) != configs
    assert all(c.epochs == base.epochs and c.seed == base.seed for c in configs)  # only the searched fields move


@pytest.mark.parametrize("trials", [0, -1, MOST_TRIALS + 1, True])
def test_a_budget_outside_the_grid_is_refused(trials: int) -> None:
    with pytest.raises(ConfigError, match=f"--search takes 1 to {MOST_TRIALS} trials"):
        trial_configs(TrainConfig(), trials)


def test_search_keeps_the_best_validation_trial_and_records_every_trial(pbc: Path, tmp_path: Path) -> None:
    block, result = train_block(pbc, TINY, progress=False, trials=3)
    record = block.provenance["trained"]["search"]
    rows = record["trials"]
    assert len(rows) == 3 and record["space"] == {k: list(v) for k, v in SEARCH_SPACE.items()}
    scores = [row["val"]["c_index"] for row in rows]
    assert record["chosen"] == scores.index(max(scores))  # the first of equal best
    assert result.val == rows[record["chosen"]]["val"]
    assert all("test" not in row for row in rows)  # the test split plays no part in the choice
    chosen = {name: rows[record["chosen"]][name] for name in SEARCH_SPACE}
    assert {name: block.provenance["trained"]["config"][name] for name in SEARCH_SPACE} == chosen
    alone, _ = train_block(pbc, TINY.override(**chosen), progress=False)  # the kept block is that trial's own
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), alone.state_dict().values()))
    save(block, tmp_path / "searched.st")
    assert load(tmp_path / "searched.st").provenance["trained"]["search"] == json.loads(json.dumps(record))


def test_searching_a_loaded_block_trains_copies_and_leaves_it_as_it_was(pbc: Path, tmp_path: Path) -> None:
    trained, _ = train_block(pbc, TINY, progress=False)
    save(trained, tmp_path / "labs.st")
    block = load(tmp_path / "labs.st")
    before = {k: v.clone() for k, v in block.state_dict().items()}
    searched, _ = train_wrapped_block(pbc, block, replace(TINY.training, epochs=2), progress=False, trials=2)
    assert searched is not block and len(searched.provenance["trained"]["search"]["trials"]) == 2
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_cli_search_prints_the_trials_and_refuses_a_bad_budget(pbc: Path, tmp_path: Path) -> None:
    flags = ["--encoder-kwargs", '{"hidden": 16}', "--latent", "8x16", "--epochs", "2", "--device", "cpu"]
    found = cli_here("train", str(pbc), "--modality", "labs", *flags, "--search", "2", "-o", str(tmp_path / "a.st"))
    assert found.returncode == 0, found.stderr
    assert "search: 2 trials on the validation split" in found.stdout
    bad = cli_here("train", str(pbc), "--modality", "labs", *flags, "--search", "0", "-o", str(tmp_path / "b.st"))
    assert bad.returncode != 0 and "--search takes 1 to 28 trials" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.st").exists()
