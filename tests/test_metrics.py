"""Losses and metrics, checked against scikit-survival and scikit-learn, and the Cox baseline."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from legokit.data.bundled import write_pbc
from legokit.tasks import TaskSpec
from legokit.training.baselines import cox_fit
from legokit.training.metrics import (
    binary_auc,
    concordance_index,
    cox_partial_nll,
    macro_f1,
    risk_from_logits,
    survival_bins,
    survival_nll,
    task_loss,
    task_metrics,
    to_bins,
)


@pytest.mark.parametrize("seed", range(4))
def test_c_index_equals_scikit_survival_with_tied_times_and_risks(seed):
    generator = torch.Generator().manual_seed(seed)
    times = torch.randint(1, 25, (150,), generator=generator).double()
    events = torch.rand(150, generator=generator) < 0.6
    risk = torch.randn(150, generator=generator).round(decimals=1)
    expected = concordance_index_censored(events.numpy(), times.numpy(), risk.numpy())[0]
    assert concordance_index(risk, times, events) == pytest.approx(expected, abs=1e-12)


def test_c_index_on_real_pbc_bilirubin_equals_scikit_survival(tmp_path):
    write_pbc(tmp_path)
    rows = [line.split(",") for line in (tmp_path / "labs.csv").read_text().splitlines()[1:]]
    labels = {r[0]: r for r in (line.split(",") for line in (tmp_path / "labels.csv").read_text().splitlines()[1:])}
    bili = torch.tensor([float(r[8]) for r in rows])
    times = torch.tensor([float(labels[r[0]][1]) for r in rows])
    events = torch.tensor([labels[r[0]][2] == "1" for r in rows])
    ours = concordance_index(bili, times, events)
    assert ours == pytest.approx(concordance_index_censored(events.numpy(), times.numpy(), bili.numpy())[0], abs=1e-12)
    assert ours > 0.7  # log bilirubin is the classic PBC risk factor


def test_auc_comes_from_scores_not_from_thresholded_labels():
    labels = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])  # all below 0.5, yet ranked perfectly
    assert binary_auc(scores, labels) == 1.0
    assert roc_auc_score(labels.numpy(), scores.numpy()) == 1.0


def test_multiclass_macro_auc_and_multilabel_scores_equal_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 3, generator=generator)
    labels = torch.randint(0, 3, (60,), generator=generator)
    ours = task_metrics(TaskSpec("multiclass", 3), logits, {"label": labels})["auc"]
    expected = roc_auc_score(labels.numpy(), torch.softmax(logits, 1).numpy(), multi_class="ovr", average="macro")
    assert ours == pytest.approx(expected, abs=1e-12)
    multi = torch.randint(0, 2, (60, 4), generator=generator).float()
    ml_logits = torch.randn(60, 4, generator=generator)
    metrics = task_metrics(TaskSpec("multilabel", 4), ml_logits, {"label": multi})
    assert metrics["auc"] == pytest.approx(
        roc_auc_score(multi.numpy(), torch.sigmoid(ml_logits).numpy(), average="macro")
    )
    predicted = (torch.sigmoid(ml_logits) >= 0.5).numpy()
    assert metrics["macro_f1"] == pytest.approx(f1_score(multi.numpy(), predicted, average="macro", zero_division=1.0))
    assert macro_f1(torch.zeros(3, 1), torch.zeros(3, 1)) == 1.0


def test_survival_bins_are_quantiles_of_the_uncensored_times():
    times = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 100, 200])
    events = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).bool()
    edges = survival_bins(times, events, 4)
    assert edges[0] == 0 and math.isinf(edges[-1])
    assert torch.allclose(edges[1:-1], torch.tensor([2.75, 4.5, 6.25], dtype=torch.float64))
    assert to_bins(times, edges).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]


def test_survival_nll_matches_the_discrete_hazard_likelihood_by_hand():
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    h = torch.sigmoid(logits)[0]
    event_in_bin_1 = survival_nll(logits, torch.tensor([1]), torch.tensor([1]))
    censored_in_bin_1 = survival_nll(logits, torch.tensor([1]), torch.tensor([0]))
    assert event_in_bin_1 == pytest.approx(-(math.log(1 - h[0]) + math.log(h[1])), abs=1e-6)
    assert censored_in_bin_1 == pytest.approx(-(math.log(1 - h[0]) + math.log(1 - h[1])), abs=1e-6)


def test_cox_baseline_equals_scikit_survival_coefficients():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=generator)
    times = torch.randint(1, 40, (200,), generator=generator).double()
    events = torch.rand(200, generator=generator) < 0.7
    ours = cox_fit(x, times, events, alpha=0.1)
    reference = CoxPHSurvivalAnalysis(alpha=0.1, ties="breslow").fit(
        x.double().numpy(), Surv.from_arrays(events.numpy(), times.numpy())
    )
    assert torch.allclose(ours, torch.from_numpy(reference.coef_), atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_cox_partial_likelihood_is_breslows_summed_by_hand_with_tied_times(seed):
    generator = torch.Generator().manual_seed(seed)
    risk = torch.randn(60, generator=generator, dtype=torch.float64)
    times = torch.randint(1, 12, (60,), generator=generator).double()  # many ties
    events = torch.rand(60, generator=generator) < 0.6
    by_hand = -sum(
        float(risk[i] - torch.log(torch.exp(risk[times >= times[i]]).sum())) for i in range(60) if events[i]
    ) / int(events.sum())
    assert float(cox_partial_nll(risk, times, events)) == pytest.approx(by_hand, rel=1e-6)
    assert float(cox_partial_nll(risk + 3.0, times, events)) == pytest.approx(by_hand, rel=1e-6)  # shift-free


def test_cox_partial_likelihood_without_an_event_is_zero_and_keeps_the_graph():
    risk = torch.randn(5, requires_grad=True)
    loss = cox_partial_nll(risk, torch.arange(5.0), torch.zeros(5, dtype=torch.bool))
    loss.backward()
    assert float(loss) == 0.0 and risk.grad is not None and bool((risk.grad == 0).all())


def test_survival_losses_rank_by_the_risk_the_cindex_reads():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=generator)
    times, events = torch.rand(40, generator=generator) * 10, torch.rand(40, generator=generator) < 0.5
    target = {"time": times, "event": events, "bin": to_bins(times, survival_bins(times, events, 4))}
    task = TaskSpec("survival", 4)
    nll, cox = task_loss(task, logits, target, "nll"), task_loss(task, logits, target, "cox")
    assert float(nll) == pytest.approx(float(survival_nll(logits, target["bin"], events)))
    assert float(cox) == pytest.approx(float(cox_partial_nll(risk_from_logits(logits), times, events)), rel=1e-6)
    assert float(task_loss(task, logits, target, "nll+cox")) == pytest.approx(float(nll + cox), rel=1e-6)
