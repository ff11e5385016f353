"""Calibrated survival probabilities: the curve S(t) is read at any time (log-linear within a bin, non-increasing),
recalibration on a validation split brings mean predicted survival to Kaplan-Meier without changing any risk, it
travels in the artifact, and bad times, bad records and splits without events are one-line errors. On PBC."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import legokit
from legokit.artifacts.format import write_artifact
from legokit.artifacts.registry import kind_of
from legokit.contract import parse_times
from legokit.data.bundled import write_pbc
from legokit.errors import ConfigError
from legokit.interface import model_calibration
from legokit.predict import predict_folder
from legokit.survival.calibration import fit_calibration
from legokit.survival.curves import survival_at
from legokit.survival.estimators import kaplan_meier
from legokit.training.workflows import evaluate_model

from .conftest import cli_here, legokit_warnings

FLAGS = ["--modality", "labs", "--encoder-kwargs", '{"hidden": 16}', "--latent", "8x16", "--epochs", "6"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-6, 6), min_size=4, max_size=4),
    st.lists(st.floats(1, 500), min_size=3, max_size=3),
    st.floats(1, 3000),
    st.lists(st.floats(0, 4000), min_size=1, max_size=20),
)
def test_survival_at_any_time_is_non_increasing_and_meets_the_bin_ends(logits, gaps, extra, times):
    edges = [sum(gaps[: k + 1]) for k in range(3)]
    curve = torch.cumprod(1 - torch.sigmoid(torch.tensor([logits], dtype=torch.float64)), dim=1)
    follow_up = edges[-1] + extra
    at = torch.tensor(sorted(times), dtype=torch.float64)
    values = survival_at(curve, edges, follow_up, at)[0]
    assert bool((values[1:] <= values[:-1] + 1e-12).all())
    assert bool((values <= 1).all()) and bool((values >= 0).all())
    knots = torch.tensor([0.0, *edges, follow_up, follow_up + 99], dtype=torch.float64)
    ends = survival_at(curve, edges, follow_up, knots)[0]
    assert torch.allclose(ends, torch.cat([torch.ones(1, dtype=torch.float64), curve[0], curve[0, -1:]]))


def test_survival_within_a_bin_is_log_linear():
    curve = torch.tensor([[0.8, 0.5]], dtype=torch.float64)
    values = survival_at(curve, [100.0], 300.0, torch.tensor([50.0, 200.0], dtype=torch.float64))[0]
    assert math.isclose(float(values[0]), 0.8**0.5, rel_tol=1e-12)
    assert math.isclose(float(values[1]), 0.8 * (0.5 / 0.8) ** 0.5, rel_tol=1e-12)


def _biased_cohort(n: int = 4000, bias: float = 1.5, seed: int = 0):
    """Exponential times censored uniformly; logits of the true per-bin hazards plus `bias` (a model that
    overstates every hazard, as an under-trained one does)."""
    generator = torch.Generator().manual_seed(seed)
    rate = 0.001 * torch.exp(0.5 * torch.randn(n, generator=generator, dtype=torch.float64))
    event_time = -torch.log(torch.rand(n, generator=generator, dtype=torch.float64)) / rate
    censor = torch.rand(n, generator=generator, dtype=torch.float64) * 3000
    time, event = torch.minimum(event_time, censor), event_time <= censor
    edges = [300.0, 700.0, 1300.0]
    width = torch.tensor([300.0, 400.0, 600.0, 1700.0], dtype=torch.float64)
    hazard = 1 - torch.exp(-rate[:, None] * width[None, :])
    return torch.logit(hazard) + bias, time, event, edges, float(time.max())


def test_recalibration_brings_mean_predicted_survival_to_kaplan_meier_without_changing_risk():
    logits, time, event, edges, follow_up = _biased_cohort()
    val, rest = slice(0, 1000), slice(1000, None)
    calibration = fit_calibration(logits[val], time[val], event[val], edges, follow_up)
    assert calibration.method != "none" and calibration.events == int(event[val].sum())
    at = torch.tensor(edges, dtype=torch.float64)
    observed = kaplan_meier(time[rest], event[rest])(at)

    def error(curve: torch.Tensor) -> float:
        return float((survival_at(curve, edges, follow_up, at).mean(0) - observed).abs().max())

    before = torch.cumprod(1 - torch.sigmoid(logits[rest]), dim=1)
    after = torch.cumprod(1 - torch.sigmoid(calibration.apply(logits[rest])), dim=1)
    assert error(before) > 0.1 and error(after) < 0.02


def test_a_split_without_events_cannot_be_calibrated():
    logits, time, _, edges, follow_up = _biased_cohort(n=50)
    with pytest.raises(ConfigError, match="hold no event"):
        fit_calibration(logits, time, torch.zeros(50, dtype=torch.bool), edges, follow_up)


@pytest.mark.parametrize(
    "text, problem",
    [("", "empty"), ("-5,10", "negative"), ("10,5", "increase strictly"), ("nan", "not a finite number"),
     ("1e999", "not a finite number"), ("10,10", "increase strictly"), ("3,x", "not a finite number")],
)  # fmt: skip
def test_bad_times_are_one_line_errors(text, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_times(text)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    write_pbc(root / "data")
    return root


@pytest.fixture(scope="module")
def trained(pbc) -> tuple[Path, Path]:
    calibrated, plain = pbc / "labs.st", pbc / "plain.st"
    for path, extra in ((calibrated, []), (plain, ["--no-calibrate"])):
        done = cli_here("train", str(pbc / "data"), *FLAGS, "--device", "cpu", *extra, "-o", str(path))
        assert done.returncode == 0, done.stderr
    return calibrated, plain


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_train_calibrates_on_validation_and_inspect_says_so(pbc, trained):
    calibrated, plain = trained
    calibration = model_calibration(legokit.load(calibrated))
    assert calibration is not None and calibration.split == "val" and calibration.samples > 0
    assert model_calibration(legokit.load(plain)) is None
    inspected = cli_here("inspect", str(calibrated))
    assert "calibration" in inspected.stdout and "val samples" in inspected.stdout
    assert "not calibrated" in cli_here("inspect", str(plain)).stdout


def test_calibration_changes_survival_but_never_the_risk_or_the_c_index(pbc, trained):
    calibrated, _ = trained
    model = legokit.load(calibrated)
    fitted = model_calibration(model)
    assert fitted is not None
    shift = replace(fitted, method="scaled", offsets=(0.3, -0.2, 0.1, 0.4), scale=1.3)  # whatever was chosen
    model.provenance = {**model.provenance, "calibration": shift.to_record()}
    stripped = legokit.load(calibrated)
    stripped.provenance = {k: v for k, v in stripped.provenance.items() if k != "calibration"}
    one = predict_folder(model, pbc / "data", device="cpu", cache=False)
    with legokit_warnings() as warned:
        two = predict_folder(stripped, pbc / "data", device="cpu", cache=False)
    assert any("not calibrated" in w for w in warned)  # the stripped model's prediction says so
    assert one.columns["risk"] == two.columns["risk"]
    assert one.columns["survival_1"] != two.columns["survival_1"]
    scored = [evaluate_model(m, pbc / "data", cache=False) for m in (model, stripped)]
    assert scored[0]["c_index"] == scored[1]["c_index"] and scored[0]["uno_c"] == scored[1]["uno_c"]


def test_predict_reads_survival_at_the_users_times_and_warns_past_follow_up(pbc, trained):
    calibrated, plain = trained
    follow_up = model_calibration(legokit.load(calibrated)).follow_up
    out = pbc / "times.csv"
    done = cli_here("predict", str(calibrated), str(pbc / "data"), "--times", f"365,730,{follow_up + 100:g}",
                    "--device", "cpu", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "last follow-up" in done.stderr
    rows = _rows(out)
    columns = [c for c in rows[0] if c.startswith("survival_at_")]
    assert columns == ["survival_at_365", "survival_at_730", f"survival_at_{follow_up + 100:g}"]
    assert all(float(r[columns[0]]) >= float(r[columns[1]]) >= float(r[columns[2]]) for r in rows)
    refused = cli_here("predict", str(plain), str(pbc / "data"), "--times", "99999", "-o", str(pbc / "no.csv"))
    assert refused.returncode != 0 and "no follow-up" in refused.stderr and not (pbc / "no.csv").exists()
    bad = cli_here("predict", str(calibrated), str(pbc / "data"), "--times", "730,365", "-o", str(pbc / "no.csv"))
    assert bad.returncode != 0 and "increase strictly" in bad.stderr


def test_eval_reports_the_survival_metrics_and_plots_calibration(pbc, trained):
    calibrated, _ = trained
    plot = pbc / "calibration.png"
    done = cli_here("eval", str(calibrated), str(pbc / "data"), "--device", "cpu", "--plot", str(plot), "--json", "-")
    assert done.returncode == 0, done.stderr
    assert plot.stat().st_size > 10_000
    for name in ("c_index", "uno_c", "integrated_brier"):
        assert name in done.stdout
    assert "calibration@" in done.stdout and "auc@" in done.stdout and "brier@" in done.stdout


@pytest.fixture(scope="module")
def visits(pbc) -> Path:
    path = pbc / "visits.st"
    flags = ["--encoder", "longitudinal", "--encoder-kwargs", '{"hidden": 16}', "--latent", "8x16", "--epochs", "3"]
    done = cli_here("train", str(pbc / "data"), "--modality", "visits", *flags, "--device", "cpu", "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_merge_calibrates_on_data_and_refuses_a_split_without_events(pbc, trained, visits, tmp_path):
    calibrated, _ = trained
    merged = pbc / "merged.st"
    done = cli_here("merge", str(calibrated), str(visits), "--calibrate-on", str(pbc / "data"), "-o", str(merged))
    assert done.returncode == 0, done.stderr
    assert model_calibration(legokit.load(merged)) is not None
    plain = cli_here("merge", str(calibrated), str(visits), "-o", str(pbc / "plain-merged.st"))
    assert plain.returncode == 0 and model_calibration(legokit.load(pbc / "plain-merged.st")) is None
    quiet = tmp_path / "quiet"
    write_pbc(quiet)
    labels = (quiet / "labels.csv").read_text(encoding="utf-8").splitlines()
    header = labels[0].split(",")
    event = header.index("event")
    rows = [line.split(",") for line in labels[1:]]
    (quiet / "labels.csv").write_text(
        "\n".join([labels[0], *(",".join(r[:event] + ["0"] + r[event + 1 :]) for r in rows)]) + "\n", encoding="utf-8"
    )
    out = tmp_path / "m.st"
    refused = cli_here("merge", str(calibrated), str(visits), "--calibrate-on", str(quiet), "-o", str(out))
    assert refused.returncode != 0 and "no event" in refused.stderr and not out.exists()


def test_an_uncalibrated_reading_gives_the_last_edges_survival_at_that_edge():
    curve = torch.tensor([[0.9, 0.7, 0.5, 0.1]], dtype=torch.float64)
    edges = [100.0, 200.0, 300.0]
    at = torch.tensor([300.0], dtype=torch.float64)
    assert float(survival_at(curve, edges, 300.0, at)[0, 0]) == 0.5  # no follow-up past the edge: S_3, not S_4
    assert float(survival_at(curve, edges, 900.0, at)[0, 0]) == 0.5


def _write_with_record(model, path: Path, record: dict) -> Path:
    """The model's file with this calibration record, written past `save`'s own check (as a hostile tool would)."""
    kind = kind_of(model)
    config, tensors = kind.write(model)
    return write_artifact(path, kind.name, config, tensors, {**model.provenance, "calibration": record})


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"offsets": [0.1, 0.2]}, "does not fit"),
        ({"offsets": [float("nan")] * 4}, "within"),
        ({"offsets": [10**400] * 4}, "within"),
        ({"offsets": [1e300] * 4}, "within"),
        ({"scale": 10**300}, "positive number up to"),
        ({"follow_up": 10**400}, "follow-up"),
        ({"split": "val\x1b[31m"}, "letters and digits"),
        ({"split": "v" * 41}, "short ASCII"),
        ({"events": True}, "count"),
        ({"method": "magic"}, "must be one of"),
        ({"extra": 1}, "holds events"),
        ({"follow_up": -1.0}, "follow-up"),
    ],
)
def test_a_hostile_calibration_record_is_a_one_line_error_at_load_and_inspect(pbc, trained, change, problem):
    calibrated, _ = trained
    model = legokit.load(calibrated)
    record = {**model.provenance["calibration"], **change}
    path = _write_with_record(model, pbc / "hostile.st", record)
    with pytest.raises(ConfigError, match=problem) as caught:
        legokit.load(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    inspected = cli_here("inspect", str(path))
    assert inspected.returncode != 0 and "calibration record is malformed" in inspected.stderr
    assert "Traceback" not in inspected.stderr
    with pytest.raises(ConfigError, match="calibration record is malformed"):
        legokit.save(model, pbc / "refused.st", provenance={"calibration": record})
    assert not (pbc / "refused.st").exists()


def test_an_uncalibrated_one_bin_model_refuses_times_past_zero(pbc):
    path = pbc / "one-bin.st"
    done = cli_here("train", str(pbc / "data"), *FLAGS, "--task", "survival:1", "--no-calibrate", "--device", "cpu",
                    "-o", str(path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused = cli_here("predict", str(path), str(pbc / "data"), "--times", "100", "-o", str(pbc / "one.csv"))
    assert refused.returncode != 0 and "no follow-up" in refused.stderr


def test_times_that_print_alike_get_distinct_columns_and_minus_zero_is_zero(pbc, trained):
    calibrated, _ = trained
    out = pbc / "alike.csv"
    done = cli_here("predict", str(calibrated), str(pbc / "data"), "--times=-0,1000000,1000001", "-o", str(out))
    assert done.returncode == 0, done.stderr
    columns = [c for c in _rows(out)[0] if c.startswith("survival_at_")]
    assert columns == ["survival_at_0.0", "survival_at_1000000.0", "survival_at_1000001.0"]
    assert parse_times("-0,5") == (0.0, 5.0) and str(parse_times("-0")[0]) == "0.0"


def test_merge_refuses_to_calibrate_on_the_blocks_training_samples(pbc, trained, visits, tmp_path):
    calibrated, _ = trained
    data = tmp_path / "resplit"
    write_pbc(data)
    ids = [row["id"] for row in _rows(data / "labels.csv")]
    (data / "splits.csv").write_text(  # a new split: most of its validation samples were the blocks' training ones
        "id,split\n" + "".join(f"{i},{('val', 'train', 'test')[n % 3]}\n" for n, i in enumerate(ids)), encoding="utf-8"
    )
    out = tmp_path / "m.st"
    refused = cli_here("merge", str(calibrated), str(visits), "--calibrate-on", str(data), "-o", str(out))
    assert refused.returncode != 0 and "were training samples" in refused.stderr and not out.exists()


def test_a_split_with_fewer_than_ten_events_cannot_be_calibrated():
    logits, time, event, edges, follow_up = _biased_cohort(n=60, seed=3)
    event = torch.zeros_like(event)
    event[:5] = True
    with pytest.raises(ConfigError, match="even one offset needs 10"):
        fit_calibration(logits, time, event, edges, follow_up)


def test_a_curve_that_reached_zero_reads_zero_not_a_tiny_number():
    curve = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    values = survival_at(curve, [100.0, 200.0, 300.0], 400.0, torch.tensor([150.0, 250.0, 500.0], dtype=torch.float64))
    assert float(values[0, 0]) > 0 and values[0, 1:].tolist() == [0.0, 0.0]
