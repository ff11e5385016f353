"""legokit.training.plots: Kaplan-Meier, log-rank and ROC numbers checked against hand computation, lifelines and
sklearn; the plot functions write readable PNGs atomically, never over an input, and refuse bad input in one line."""

from __future__ import annotations

import csv
import math
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from legokit.errors import ConfigError, ShapeError, WriteError
from legokit.training import plots
from legokit.training.plots import (
    chi2_sf,
    kaplan_meier,
    logrank,
    plot_history,
    plot_roc,
    plot_survival,
    risk_groups,
    roc_curve,
)

PNG = b"\x89PNG\r\n\x1a\n"


def pbc() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bundled Mayo PBC table: days of follow-up, death (status 2; transplant and alive are censored), bilirubin."""
    with resources.files("legokit.data").joinpath("pbc", "pbc.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    time = torch.tensor([float(r["time"]) for r in rows], dtype=torch.float64)
    event = torch.tensor([r["status"] == "2" for r in rows])
    bili = torch.tensor([float(r["bili"]) for r in rows], dtype=torch.float64)
    return time, event, bili


def tied_survival(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer times from 1 to 25 (many ties, events and censorings at the same time), about 60% events."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.randint(1, 26, (n,), generator=generator).double()
    event = (torch.rand(n, generator=generator) < 0.6).long()
    return time, event


def survival_data(n: int = 120, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Risk scores and survival where a higher risk shortens the time, with ties in time."""
    generator = torch.Generator().manual_seed(seed)
    risk = torch.randn(n, generator=generator)
    time = torch.ceil(10 * torch.distributions.Exponential(torch.exp(risk)).sample() + 0.5)
    event = (torch.rand(n, generator=generator) < 0.7).long()
    return risk, time, event


def read_png(path: Path):
    """The decoded image (height, width, channels): fails unless the file is a complete PNG."""
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes().startswith(PNG)
    return image.imread(path)


def labels_drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Record (title, legend texts) of every figure the plots render."""
    seen: list[tuple[str, list[str]]] = []
    render = plots._render

    def recording(fig):
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert len(legends) <= 1
        seen.append((fig.axes[0].get_title(), [t.get_text() for t in legends[0].get_texts()] if legends else []))
        return render(fig)

    monkeypatch.setattr(plots, "_render", recording)
    return seen


# --- Kaplan-Meier ---------------------------------------------------------------------------------------------------


def test_kaplan_meier_matches_a_hand_computed_example():
    # t=1: 5 at risk, 1 death -> 4/5 = 0.8
    # t=2: 4 at risk (the censoring at 2 still counts: events before censorings), 1 death -> 0.8 * 3/4 = 0.6
    # t=3: 2 at risk, 1 death -> 0.6 * 1/2 = 0.3
    # t=4: 1 at risk, censored -> stays 0.3
    times, survival = kaplan_meier(torch.tensor([1.0, 2, 2, 3, 4]), torch.tensor([1, 1, 0, 1, 0]))
    assert times.tolist() == [1.0, 2.0, 3.0, 4.0]
    torch.testing.assert_close(survival, torch.tensor([0.8, 0.6, 0.3, 0.3], dtype=torch.float64))


def test_kaplan_meier_counts_a_censoring_tied_with_deaths_as_at_risk():
    # t=1: 4 at risk (the censoring included), 2 deaths -> 1/2; were it removed first, 3 at risk -> 1/3
    _, survival = kaplan_meier(torch.tensor([1.0, 1, 1, 2]), torch.tensor([0, 1, 1, 1]))
    torch.testing.assert_close(survival, torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_kaplan_meier_accepts_unsorted_input_and_bool_events():
    order = torch.tensor([3, 0, 4, 2, 1])
    times, survival = kaplan_meier(torch.tensor([1.0, 2, 2, 3, 4])[order], torch.tensor([1, 1, 0, 1, 0]).bool()[order])
    assert times.tolist() == [1.0, 2.0, 3.0, 4.0]
    torch.testing.assert_close(survival, torch.tensor([0.8, 0.6, 0.3, 0.3], dtype=torch.float64))


@pytest.mark.parametrize("dataset", ["pbc", "tied"])
def test_kaplan_meier_matches_lifelines(dataset):
    lifelines = pytest.importorskip("lifelines")
    time, event = pbc()[:2] if dataset == "pbc" else tied_survival()
    times, survival = kaplan_meier(time, event)
    fitted = lifelines.KaplanMeierFitter().fit(time.numpy(), event.numpy()).survival_function_.iloc[:, 0]
    reference = fitted.loc[times.numpy()].to_numpy()
    assert times.tolist() == sorted(set(time.tolist()))
    torch.testing.assert_close(survival, torch.from_numpy(reference), rtol=0, atol=1e-12)


# --- log-rank -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["pbc", "tied"])
def test_logrank_two_groups_matches_lifelines(dataset):
    statistics = pytest.importorskip("lifelines.statistics")
    if dataset == "pbc":
        time, event, bili = pbc()
        group = risk_groups(bili)
    else:
        time, event = tied_survival(seed=3)
        group = torch.arange(len(time)) % 2
    a, b = group == 0, group == 1
    reference = statistics.logrank_test(time[a].numpy(), time[b].numpy(), event[a].numpy(), event[b].numpy())
    statistic, p_value, df = logrank(time, event, group)
    assert df == 1
    assert statistic == pytest.approx(reference.test_statistic, rel=1e-9)
    assert abs(p_value - reference.p_value) < 1e-6
    if dataset == "pbc":
        assert p_value < 1e-10  # bilirubin separates survival in PBC: the test has power on real data


@pytest.mark.parametrize("dataset", ["pbc", "tied"])
def test_logrank_three_groups_matches_lifelines_multivariate(dataset):
    statistics = pytest.importorskip("lifelines.statistics")
    if dataset == "pbc":
        time, event, bili = pbc()
        group = risk_groups(bili, 3)
    else:
        time, event = tied_survival(seed=4)
        group = torch.randint(0, 3, (len(time),), generator=torch.Generator().manual_seed(5))
    reference = statistics.multivariate_logrank_test(time.numpy(), group.numpy(), event.numpy())
    statistic, p_value, df = logrank(time, event, group)
    assert df == 2
    assert statistic == pytest.approx(reference.test_statistic, rel=1e-9)
    assert abs(p_value - reference.p_value) < 1e-6


def test_logrank_ignores_how_groups_are_labelled():
    time, event = tied_survival(seed=6)
    group = torch.arange(len(time)) % 3
    assert logrank(time, event, group)[:2] == pytest.approx(logrank(time, event, 10.0 * group - 7)[:2], rel=1e-12)


def test_logrank_of_identical_groups_is_not_significant():
    time, event = tied_survival(n=50)
    both = torch.cat([time, time]), torch.cat([event, event]), torch.cat([torch.zeros(50), torch.ones(50)])
    statistic, p_value, _ = logrank(*both)
    assert statistic == pytest.approx(0.0, abs=1e-12)
    assert p_value == pytest.approx(1.0)


def test_logrank_needs_two_groups():
    time, event = tied_survival(n=20)
    with pytest.raises(ShapeError, match="two groups"):
        logrank(time, event, torch.zeros(20))


@pytest.mark.parametrize("df", [1, 2, 3, 5])
@pytest.mark.parametrize("statistic", [0.0, 0.3, 3.84, 12.0, 60.0])
def test_chi2_sf_matches_scipy(df, statistic):
    stats = pytest.importorskip("scipy.stats")
    assert chi2_sf(statistic, df) == pytest.approx(float(stats.chi2.sf(statistic, df)), rel=1e-9, abs=1e-300)


def test_chi2_sf_gives_the_textbook_critical_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-9)


# --- risk groups ----------------------------------------------------------------------------------------------------


def test_risk_groups_split_at_the_median_with_low_risk_first():
    risk = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    assert risk_groups(risk).tolist() == [1, 0, 1, 0, 1, 0]


def test_risk_groups_keep_tied_risks_together():
    risk = torch.tensor([1.0, 2, 2, 2, 3, 4])  # median 2: every 2 goes low, none is split off
    assert risk_groups(risk).tolist() == [0, 0, 0, 0, 1, 1]


def test_risk_groups_by_tertiles():
    risk = torch.arange(9.0).flip(0)
    assert risk_groups(risk, 3).tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert risk_groups(risk.unsqueeze(1), 3).tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_risk_groups_refuse_a_non_positive_count():
    with pytest.raises(ConfigError, match="groups"):
        risk_groups(torch.arange(4.0), 0)


# --- ROC ------------------------------------------------------------------------------------------------------------


def test_roc_auc_matches_sklearn_on_tied_scores():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(7)
    labels = torch.rand(300, generator=generator) < 0.4
    scores = torch.round(labels.double() + torch.randn(300, generator=generator)) / 4  # about 10 distinct values
    fpr, tpr, auc = roc_curve(scores, labels)
    assert auc == pytest.approx(metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    reference_fpr, reference_tpr, _ = metrics.roc_curve(labels.numpy(), scores.numpy(), drop_intermediate=False)
    torch.testing.assert_close(fpr, torch.from_numpy(reference_fpr))
    torch.testing.assert_close(tpr, torch.from_numpy(reference_tpr))


def test_roc_curve_moves_both_rates_at_once_for_tied_scores():
    # all four scores tied: the only honest curve is the diagonal, AUC 1/2 (a step curve would give 0 or 1)
    fpr, tpr, auc = roc_curve(torch.full((4,), 0.5), torch.tensor([1, 0, 1, 0]))
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
    assert auc == 0.5


def test_roc_curve_of_a_perfect_ranking_has_area_one():
    fpr, tpr, auc = roc_curve(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 1, 0, 0]))
    assert auc == 1.0
    assert (fpr.tolist(), tpr.tolist()) == ([0.0, 0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0])


def test_roc_auc_matches_sklearn_one_vs_rest_multiclass():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(8)
    labels = torch.randint(0, 4, (250,), generator=generator)
    logits = torch.round(2 * torch.nn.functional.one_hot(labels, 4) + torch.randn(250, 4, generator=generator))
    probabilities = torch.softmax(logits.double(), 1)  # rounded logits: many tied probabilities per class
    per_class = [roc_curve(probabilities[:, k], labels == k)[2] for k in range(4)]
    for k, auc in enumerate(per_class):
        assert auc == pytest.approx(
            metrics.roc_auc_score((labels == k).numpy(), probabilities[:, k].numpy()), abs=1e-12
        )
    macro = metrics.roc_auc_score(labels.numpy(), probabilities.numpy(), multi_class="ovr", average="macro")
    assert sum(per_class) / 4 == pytest.approx(macro, abs=1e-12)


def test_roc_curve_needs_both_classes():
    with pytest.raises(ShapeError, match="positive and negative"):
        roc_curve(torch.rand(5), torch.ones(5))


# --- the plots ------------------------------------------------------------------------------------------------------


def test_plot_survival_writes_a_png_with_risk_groups_and_the_logrank_p(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    risk, time, event = survival_data()
    path = plot_survival(risk, time, event, tmp_path / "km.png", title="test split")
    assert path == tmp_path / "km.png"
    assert read_png(path).shape[:2] == (576, 768)  # 6.4 x 4.8 inches at 120 dpi
    title, legend = drawn[0]
    p_value = logrank(time, event, risk_groups(risk))[1]
    assert title.startswith("test split\nlog-rank p = ") and f"{p_value:.3g}" in title
    n_low = int((risk_groups(risk) == 0).sum())
    assert legend == [f"low risk (n={n_low})", f"high risk (n={len(risk) - n_low})"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["km.png"]  # no temporary file left behind


def test_plot_survival_names_groups_when_there_are_more_than_two(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    risk, time, event = survival_data()
    plot_survival(risk, time, event, tmp_path / "km3.png", groups=3)
    title, legend = drawn[0]
    assert "df = 2" in title
    assert [text.split(" (n=")[0] for text in legend] == ["risk group 0", "risk group 1", "risk group 2"]
    assert read_png(tmp_path / "km3.png").ndim == 3


def test_plot_survival_on_the_bundled_pbc_data(tmp_path):
    pytest.importorskip("matplotlib")
    time, event, bili = pbc()
    read_png(plot_survival(bili, time, event, tmp_path / "pbc.png"))


def test_plot_survival_replaces_an_existing_output(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "km.png"
    target.write_bytes(b"old")
    plot_survival(*survival_data(), target)
    assert target.read_bytes().startswith(PNG)


def test_plot_roc_writes_binary_and_multiclass_pngs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    generator = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 2, (80,), generator=generator)
    binary = torch.sigmoid(2 * labels + torch.randn(80, generator=generator))
    read_png(plot_roc(binary.unsqueeze(1), labels, tmp_path / "binary.png", title="binary"))
    auc = roc_curve(binary, labels)[2]
    assert drawn[0][1] == ["chance (AUC = 0.5)", f"positive class (AUC = {auc:.3f})"]

    classes = torch.randint(0, 3, (90,), generator=generator)
    probabilities = torch.softmax(torch.nn.functional.one_hot(classes, 3) + torch.randn(90, 3, generator=generator), 1)
    read_png(plot_roc(probabilities, classes, tmp_path / "multi.png"))
    assert [text.split(" (")[0] for text in drawn[1][1][1:]] == ["class 0", "class 1", "class 2"]
    assert drawn[1][0].startswith("macro AUC = ")


def test_plot_roc_skips_a_class_without_positives_with_a_note(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    classes = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])  # class 2 never occurs
    probabilities = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(10)), 1)
    read_png(plot_roc(probabilities, classes, tmp_path / "roc.png"))
    legend = drawn[0][1]
    assert "class 2: skipped (no positives)" in legend
    assert sum(text.startswith("class") and "AUC" in text for text in legend) == 2


def test_plot_history_writes_a_png_with_losses_metric_and_best_epoch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e + 0.01 * e,
            "c_index": math.nan if e == 1 else 0.6 + 0.01 * e,
        }
        for e in range(1, 9)
    ]
    read_png(plot_history(history, tmp_path / "history.png", title="training", best_epoch=5))
    assert drawn[0] == ("training", ["train_loss", "val_loss", "c_index", "best epoch 5"])


def test_plot_history_picks_the_first_metric_that_is_not_a_loss(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    history = [{"epoch": e, "train_loss": 0.5, "val_loss": math.nan, "auc": 0.7, "accuracy": 0.6} for e in (1, 2)]
    plot_history(history, tmp_path / "history.png")
    assert drawn[0][1] == ["train_loss", "val_loss", "auc"]


def test_plot_history_notes_a_best_epoch_outside_the_history(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = labels_drawn(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "c_index": math.nan} for e in (1, 2, 3)]
    read_png(plot_history(history, tmp_path / "history.png", best_epoch=0))  # the trainer's 0: never improved
    assert drawn[0][1][-1] == "best epoch 0: not in the history"


def test_plots_leave_no_figure_open(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = set(plt.get_fignums())
    plot_survival(*survival_data(), tmp_path / "a.png")
    plot_roc(torch.rand(10), torch.arange(10) % 2, tmp_path / "b.png")
    plot_history([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0}], tmp_path / "c.png")
    assert set(plt.get_fignums()) == before


def _draw(kind: str, path: Path, inputs):
    if kind == "survival":
        return plot_survival(*survival_data(), path, inputs=inputs)
    if kind == "roc":
        return plot_roc(torch.rand(10), torch.arange(10) % 2, path, inputs=inputs)
    return plot_history([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0}], path, inputs=inputs)


@pytest.mark.parametrize("kind", ["survival", "roc", "history"])
def test_plots_refuse_to_overwrite_an_input(tmp_path, kind):
    pytest.importorskip("matplotlib")
    source = tmp_path / "predictions.csv"
    source.write_text("id,risk\n1,0.5\n")
    with pytest.raises(WriteError, match="refusing to overwrite an input"):
        _draw(kind, source, inputs=[str(source)])
    link = tmp_path / "latest.csv"
    link.symlink_to(source.name)
    with pytest.raises(WriteError, match="refusing to overwrite an input"):
        _draw(kind, link, inputs=iter([source]))  # the same file through a link, inputs as a one-pass iterable
    assert source.read_text() == "id,risk\n1,0.5\n"
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.csv", "predictions.csv"]


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kaplan_meier(torch.tensor([1.0, 2]), torch.tensor([1, 0, 1])), "mismatched lengths"),
        (lambda: kaplan_meier(torch.tensor([]), torch.tensor([])), "empty"),
        (lambda: kaplan_meier(torch.tensor([1.0, 2]), torch.tensor([1, 2])), "0 or 1"),
        (lambda: kaplan_meier(torch.tensor([1.0, math.nan]), torch.tensor([1, 0])), "NaN"),
        (lambda: kaplan_meier(torch.ones(2, 2), torch.ones(2, 2)), "shape"),
        (lambda: risk_groups(torch.tensor([0.1, math.nan, 0.3])), "NaN"),
        (lambda: logrank(torch.ones(3), torch.ones(3), torch.tensor([0, 1])), "mismatched lengths"),
        (lambda: roc_curve(torch.rand(4), torch.tensor([0, 1, 0.5, 1])), "0 or 1"),
        (lambda: plot_survival(torch.tensor([0.1, math.nan]), torch.ones(2), torch.ones(2), "x.png"), "NaN"),
        (lambda: plot_survival(torch.rand(3), torch.ones(2), torch.ones(2), "x.png"), "mismatched lengths"),
        (lambda: plot_survival(torch.rand(2), torch.ones(2), torch.tensor([0, 3]), "x.png"), "0 or 1"),
        (lambda: plot_survival(torch.tensor([]), torch.tensor([]), torch.tensor([]), "x.png"), "empty"),
        (lambda: plot_roc(torch.rand(4, 2, 2), torch.zeros(4), "x.png"), "shape"),
        (lambda: plot_roc(torch.rand(5), torch.zeros(4), "x.png"), "mismatched lengths"),
        (lambda: plot_roc(torch.rand(4, 3), torch.tensor([0, 1, 3, 2]), "x.png"), "class indices"),
        (lambda: plot_roc(torch.tensor([[0.5, math.nan]]), torch.tensor([0]), "x.png"), "NaN"),
        (lambda: plot_roc(torch.empty(0, 3), torch.empty(0), "x.png"), "empty"),
        (lambda: plot_history([], "x.png"), "non-empty"),
        (lambda: plot_history([{"train_loss": 1.0}], "x.png"), "'epoch'"),
        (lambda: plot_history([{"epoch": 1, "train_loss": "low"}], "x.png"), "not a number"),
    ],
)
def test_bad_input_is_a_one_line_shape_error(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShapeError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "x.png").exists()


def test_plot_survival_needs_at_least_two_groups(tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        plot_survival(*survival_data(), tmp_path / "km.png", groups=1)


@pytest.mark.parametrize("kind", ["survival", "roc", "history"])
def test_missing_matplotlib_names_the_plot_extra(tmp_path, monkeypatch, kind):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'legokit\[plot\]'"):
        _draw(kind, tmp_path / "plot.png", inputs=())
    assert list(tmp_path.iterdir()) == []
