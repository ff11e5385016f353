"""The practitioner baselines and paired rows of `benchmarks.merge_vs_blocks` on the bundled PBC cohort: xgboost is
tuned on validation only and scores every id asked, a validation split without an event is refused, and the paired
rows carry the corrected resampled t interval beside the bootstrap, computed from the same per-seed differences."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmarks.gradient_boosting import CHILD_WEIGHTS, DEPTHS, RATES, xgboost_cox_risks
from benchmarks.merge_vs_blocks import DATASETS, SeedRun, Split, comparisons, markdown
from legokit.data.bundled import write_pbc
from legokit.data.folder import DataError, modality_shape
from legokit.data.training import SplitData
from legokit.tasks import TaskSpec
from legokit.training.metrics import concordance_index
from legokit.training.paired import resampled_t

TASK = TaskSpec("survival", 4)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return SplitData.load(folder, {m: modality_shape(folder, m) for m in ("labs", "visits")}, TASK, 0)


def test_xgboost_is_tuned_on_validation_and_scores_every_id(pbc: SplitData) -> None:
    test = pbc.ids("test")
    risks, tuned = xgboost_cox_risks(pbc, ["labs", "visits"], pbc.ids("train"), pbc.ids("val"), test, seed=0)
    assert set(risks) == set(test) and all(math.isfinite(r) for r in risks.values())
    assert len(tuned.scores) == len(DEPTHS) * len(RATES) * len(CHILD_WEIGHTS)
    assert (
        max(score for _, score in tuned.scores)
        == dict(tuned.scores)[
            f"depth {tuned.setting['max_depth']}, eta {tuned.setting['eta']:g}, "
            f"min child {tuned.setting['min_child_weight']:g}"
        ]
    )
    labels = pbc.labels.select(test)
    risk = torch.tensor([risks[i] for i in test], dtype=torch.float64)
    assert concordance_index(risk, labels["time"], labels["event"]) > 0.7


def test_xgboost_refuses_a_validation_split_without_an_event(pbc: SplitData) -> None:
    censored = [i for i in pbc.ids("val") if not bool(pbc.labels.select([i])["event"][0])]
    with pytest.raises(DataError, match="validation samples with labs and an event"):
        xgboost_cox_risks(pbc, ["labs"], pbc.ids("train"), censored, pbc.ids("test"), seed=0)


def _noisy(truth: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    return truth + scale * torch.randn(truth.shape[0], generator=generator, dtype=torch.float64)


def _run(seed: int, shift: float) -> SeedRun:
    """A seed whose models are noisy copies of the truth: `merge` better than the blocks by construction."""
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for name in ("val", "test"):
        n = 80
        time = torch.rand(n, generator=generator, dtype=torch.float64) * 10
        event = torch.rand(n, generator=generator) < 0.6

        def noise(scale: float, truth: torch.Tensor = -time) -> torch.Tensor:
            return _noisy(truth, scale, generator)

        has = {"labs": torch.ones(n, dtype=torch.bool), "visits": torch.arange(n) % 4 != 0}
        risks = {
            "block labs": noise(8.0),
            "block visits": torch.where(has["visits"], noise(8.0), torch.nan),
            "merge": noise(2.0 + shift),
            "fuse stack": noise(2.0),
            "fuse weave": noise(2.0),
            "merge (auto weights)": noise(2.0),
            "mean of blocks' risks": noise(6.0),
        }
        for kind in ("penalized Cox", "xgboost"):
            risks[f"{kind}, labs"] = noise(6.0)
            risks[f"{kind}, visits"] = torch.where(has["visits"], noise(6.0), torch.nan)
            risks[f"{kind}, all modalities"] = noise(4.0)
        splits.append(Split(name, [f"p{i}" for i in range(n)], time, event, has, risks))
    return SeedRun(splits[0], splits[1], test_train_ratio=15 / 70)


def test_paired_rows_give_the_corrected_t_interval_of_the_bootstraps_per_seed_differences(tmp_path: Path) -> None:
    runs = [_run(seed, 0.1 * seed) for seed in range(4)]
    rows = comparisons(runs, DATASETS["pbc"])
    assert set(rows["block labs − penalized Cox, labs"]) == {"all"}
    assert set(rows["block visits − penalized Cox, visits"]) == {"complete"}  # where the visits block scores all
    cell = rows["merge − mean of blocks' risks"]["all"]
    assert cell is not None
    differences = [
        concordance_index(r.test.risks["merge"], r.test.time, r.test.event)
        - concordance_index(r.test.risks["mean of blocks' risks"], r.test.time, r.test.event)
        for r in runs
    ]
    assert cell.bootstrap.per_seed == pytest.approx(differences, abs=1e-9)
    assert cell.t == resampled_t(cell.bootstrap.per_seed, 15 / 70)
    assert cell.t.mean > 0  # merge is the less noisy copy of the truth
    text = markdown("pbc", runs)
    assert "| merge − mean of blocks' risks |" in text and "p=" in text and "best block (validation)" in text
