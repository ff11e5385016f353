"""legokit's survival metrics equal scikit-survival's to 1e-6 on real data (the WHAS500 cohort bundled with
scikit-survival: 500 heart-attack patients, 215 deaths, tied times), scored by a Cox model fit on half of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sksurv.datasets import load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import brier_score, concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.nonparametric import CensoringDistributionEstimator, kaplan_meier_estimator

from legokit.survival.estimators import censoring_km, kaplan_meier
from legokit.survival.metrics import (
    brier_scores,
    calibration_error,
    dynamic_auc,
    grouped_calibration_error,
    integrated_brier,
    uno_c,
)


@pytest.fixture(scope="module")
def whas():
    x, y = load_whas500()
    x = x[["age", "bmi", "hr", "sysbp", "diasbp"]].astype(float).to_numpy()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:250], order[250:]
    test = test[y["lenfol"][test] <= y["lenfol"][train].max()]  # scikit-survival weighs only within training times
    cox = CoxPHSurvivalAnalysis(alpha=0.1).fit(x[train], y[train])
    risk = cox.predict(x[test])
    times = np.array([180.0, 365.0, 730.0, 1095.0])
    survival = np.stack([fn(times) for fn in cox.predict_survival_function(x[test])])
    return y[train], y[test], risk, survival, times


def _t(array) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(array, dtype=np.float64))


def _fields(y) -> tuple[torch.Tensor, torch.Tensor]:
    return _t(y["lenfol"]), torch.tensor(np.ascontiguousarray(y["fstat"]))


def test_kaplan_meier_and_the_censoring_distribution_equal_scikit_survivals(whas):
    train, _, _, _, _ = whas
    time, event = _fields(train)
    at = torch.linspace(0, float(time.max()), 300, dtype=torch.float64)
    reference_times, reference = kaplan_meier_estimator(train["fstat"], train["lenfol"])
    assert np.allclose(kaplan_meier(time, event).values.numpy(), reference, atol=1e-12)
    assert np.allclose(kaplan_meier(time, event).times.numpy(), reference_times)
    censoring = CensoringDistributionEstimator().fit(train)
    assert np.allclose(censoring_km(time, event)(at).numpy(), censoring.predict_proba(at.numpy()), atol=1e-12)


def test_uno_c_equals_scikit_survivals_concordance_index_ipcw(whas):
    train, test, risk, _, _ = whas
    censoring = censoring_km(*_fields(train))
    for tau in (365.0, 1095.0):
        expected = concordance_index_ipcw(train, test, risk, tau=tau)[0]
        assert abs(uno_c(_t(risk), *_fields(test), censoring, tau) - expected) < 1e-6


def test_time_dependent_auc_equals_scikit_survivals_cumulative_dynamic_auc(whas):
    train, test, risk, survival, times = whas
    censoring = censoring_km(*_fields(train))
    expected, _ = cumulative_dynamic_auc(train, test, risk, times)
    assert np.allclose(dynamic_auc(_t(risk), *_fields(test), censoring, _t(times)).numpy(), expected, atol=1e-6)
    per_time, _ = cumulative_dynamic_auc(train, test, 1 - survival, times)  # a risk per horizon
    found = dynamic_auc(_t(1 - survival), *_fields(test), censoring, _t(times))
    assert np.allclose(found.numpy(), per_time, atol=1e-6)


def test_brier_and_integrated_brier_equal_scikit_survivals(whas):
    train, test, _, survival, times = whas
    censoring = censoring_km(*_fields(train))
    _, expected = brier_score(train, test, survival, times)
    found = brier_scores(_t(survival), *_fields(test), censoring, _t(times))
    assert np.allclose(found.numpy(), expected, atol=1e-6)
    ibs = integrated_brier_score(train, test, survival, times)
    assert abs(integrated_brier(_t(survival), *_fields(test), censoring, _t(times)) - ibs) < 1e-6


def test_calibration_errors_compare_mean_predictions_with_kaplan_meier(whas):
    _, test, _, survival, times = whas
    time, event = _fields(test)
    reference_times, reference = kaplan_meier_estimator(test["fstat"], test["lenfol"])
    observed = [reference[np.searchsorted(reference_times, t, side="right") - 1] for t in times]
    large = calibration_error(_t(survival), time, event, _t(times))
    assert np.allclose(large.numpy(), np.abs(survival.mean(0) - observed), atol=1e-9)
    small = grouped_calibration_error(_t(survival), time, event, _t(times))
    assert bool((small >= 0).all()) and bool((small <= 1).all())
    perfect = torch.tensor(observed, dtype=torch.float64).expand(len(time), -1)
    assert float(calibration_error(perfect, time, event, _t(times)).max()) < 1e-12
