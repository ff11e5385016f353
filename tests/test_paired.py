"""legokit.training.paired on the bundled Mayo PBC cohort: the weighted c-index equals concordance_index exactly
(all-ones weights, and explicit resamples), the two-level bootstrap equals a brute-force one replicate for replicate,
and the paired interval behaves (identical models, antisymmetry, a clearly better risk, reproducibility, rare events).
"""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch

from legokit.training.metrics import concordance_index
from legokit.training.paired import (
    BootstrapEstimate,
    PairedDifference,
    bootstrap_cindex,
    cindex_statistic,
    hierarchical_bootstrap,
    multiplicities,
    paired_cindex,
    resampled_t,
    t_cdf,
    t_quantile,
    weighted_cindex,
)


def pbc() -> dict[str, torch.Tensor]:
    """The bundled Mayo PBC table: days of follow-up, death (status 2; transplant and alive censored), covariates."""
    with resources.files("legokit.data").joinpath("pbc", "pbc.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = {
        name: torch.tensor([float(r[name]) for r in rows], dtype=torch.float64)
        for name in ("time", "bili", "albumin", "age", "edema")
    }
    columns["event"] = torch.tensor([r["status"] == "2" for r in rows])
    columns["noise"] = torch.randn(len(rows), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return columns


DATA = pbc()


def splits(count: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """`count` random test splits of `size` patients (one per training seed)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(DATA["time"].numel(), generator=generator)[:size] for _ in range(count)]


def per_seed(name: str, indices: list[torch.Tensor], months: bool = False) -> list[torch.Tensor]:
    column = DATA[name] if name != "time" or not months else torch.floor(DATA["time"] / 30)
    return [column[i] for i in indices]


def has_comparable(times: torch.Tensor, events: torch.Tensor) -> bool:
    later = (times[:, None] < times[None, :]) | ((times[:, None] == times[None, :]) & ~events[None, :])
    return bool((later & events[:, None]).any())


def brute_statistic(a: torch.Tensor, b: torch.Tensor | None, times: torch.Tensor, events: torch.Tensor):
    """c-index(A) [- c-index(B)] by explicitly resampling the indices each multiplicity row stands for."""

    def statistic(weights: torch.Tensor) -> torch.Tensor:
        values = []
        for w in weights:
            index = torch.repeat_interleave(torch.arange(w.numel()), w.long())
            t, e = times[index], events[index]
            if not has_comparable(t, e):
                values.append(float("nan"))
                continue
            value = concordance_index(a[index], t, e)
            values.append(value if b is None else value - concordance_index(b[index], t, e))
        return torch.tensor(values, dtype=torch.float64)

    return statistic


@pytest.mark.parametrize("months", [False, True])
@pytest.mark.parametrize("risk", ["bili", "albumin", "age", "edema", "jittered"])
def test_all_ones_weighted_cindex_equals_concordance_index_exactly(risk, months):
    times = torch.floor(DATA["time"] / 30) if months else DATA["time"]
    if risk == "jittered":  # ties within concordance_index's 1e-8 tolerance, not bitwise
        values = DATA["bili"] + 1e-9 * DATA["noise"]
    else:
        values = DATA[risk]
    gaps = (values[:, None] - values[None, :]).abs()
    assert times.unique().numel() < times.numel() and int((gaps <= 1e-8).sum()) > values.numel()
    ones = torch.ones(values.numel())
    assert float(weighted_cindex(values, times, DATA["event"], ones)[0]) == concordance_index(
        values, times, DATA["event"]
    )


def test_weighted_cindex_equals_concordance_index_of_explicit_resamples():
    index = splits(1, 120)[0]
    times, events, bili = torch.floor(DATA["time"][index] / 60), DATA["event"][index], DATA["bili"][index]
    weights = multiplicities(120, 40, torch.Generator().manual_seed(3))
    fast = weighted_cindex(bili, times, events, weights)
    assert torch.equal(fast, brute_statistic(bili, None, times, events)(weights))


def test_weighted_cindex_is_nan_without_a_comparable_pair():
    times, events = DATA["time"][:30], DATA["event"][:30]
    weights = (~events).float().reshape(1, -1)  # censored samples only
    assert weighted_cindex(DATA["bili"][:30], times, events, weights).isnan().all()


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("count", [1, 4])
def test_fast_bootstrap_equals_brute_force_replicate_for_replicate(count, paired):
    index = splits(count, 60, seed=count)
    a, b = per_seed("bili", index), per_seed("age", index) if paired else [None] * count
    times, events = per_seed("time", index, months=True), per_seed("event", index)
    sizes = [60] * count
    fast = hierarchical_bootstrap(lambda s: cindex_statistic(a[s], times[s], events[s], b[s]), sizes, 200, seed=5)
    brute = hierarchical_bootstrap(lambda s: brute_statistic(a[s], b[s], times[s], events[s]), sizes, 200, seed=5)
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    low, high = torch.quantile(brute[1], levels).tolist()
    if paired:  # (N_A - N_B) / D against N_A / D - N_B / D: equal up to the last bit
        result = paired_cindex(a, b, times, events, replicates=200, seed=5)
        assert torch.allclose(fast[1], brute[1], rtol=0, atol=1e-15)
        assert result.low == pytest.approx(low, abs=1e-15) and result.high == pytest.approx(high, abs=1e-15)
        assert result.per_seed == pytest.approx(brute[0].tolist(), abs=1e-15)
    else:  # one ratio each: bitwise equal
        result = bootstrap_cindex(a, times, events, replicates=200, seed=5)
        assert torch.equal(fast[1], brute[1]) and (result.low, result.high) == (low, high)
        assert result.per_seed == tuple(concordance_index(x, t, e) for x, t, e in zip(a, times, events))


def test_one_seed_skips_the_seed_level():
    index = splits(1, 50)[0]
    times, events, bili = DATA["time"][index], DATA["event"][index], DATA["bili"][index]
    _, replicated = hierarchical_bootstrap(lambda s: cindex_statistic(bili, times, events), [50], 100, seed=9)
    weights = multiplicities(50, 100, torch.Generator().manual_seed(9))
    assert torch.equal(replicated, weighted_cindex(bili, times, events, weights))


def test_agrees_with_an_independent_brute_force_bootstrap_within_monte_carlo_error():
    index = splits(4, 80, seed=11)
    a, b = per_seed("bili", index), per_seed("albumin", index)
    b = [-x for x in b]  # low albumin is the risk
    times, events = per_seed("time", index), per_seed("event", index)
    generator = torch.Generator().manual_seed(123)
    replicated = []
    for _ in range(300):
        means = []
        for s in torch.randint(4, (4,), generator=generator).tolist():
            draw = torch.randint(80, (80,), generator=generator)
            t, e = times[s][draw], events[s][draw]
            means.append(concordance_index(a[s][draw], t, e) - concordance_index(b[s][draw], t, e))
        replicated.append(sum(means) / len(means))
    brute = torch.tensor(replicated, dtype=torch.float64)
    _, fast = hierarchical_bootstrap(lambda s: cindex_statistic(a[s], times[s], events[s], b[s]), [80] * 4, 2000)
    spread = float(fast.std())
    assert float(brute.std()) == pytest.approx(spread, rel=0.2)
    assert abs(float(brute.mean() - fast.mean())) < 0.25 * spread
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    assert (torch.quantile(brute, levels) - torch.quantile(fast, levels)).abs().max() < 0.5 * spread


def test_identical_models_give_exactly_zero():
    index = splits(5, 80)
    bili, times, events = per_seed("bili", index), per_seed("time", index), per_seed("event", index)
    result = paired_cindex(bili, [x.clone() for x in bili], times, events, replicates=300)
    assert (result.mean, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.per_seed == (0.0,) * 5 and result.seeds_positive == 0


def test_swapping_the_models_negates_the_difference():
    index = splits(5, 80, seed=2)
    a, b = per_seed("bili", index), per_seed("age", index)
    times, events = per_seed("time", index), per_seed("event", index)
    ab = paired_cindex(a, b, times, events, replicates=400, seed=4)
    ba = paired_cindex(b, a, times, events, replicates=400, seed=4)
    assert ba.per_seed == tuple(-x for x in ab.per_seed) and ba.mean == -ab.mean
    assert ba.low == pytest.approx(-ab.high, abs=1e-12) and ba.high == pytest.approx(-ab.low, abs=1e-12)
    assert ab.seeds_positive + ba.seeds_positive == 5 - sum(x == 0 for x in ab.per_seed)


def test_a_clearly_better_risk_has_an_interval_above_zero_and_is_reproducible():
    index = splits(5, 80, seed=3)
    bili, noise = per_seed("bili", index), per_seed("noise", index)
    times, events = per_seed("time", index), per_seed("event", index)
    result = paired_cindex(bili, noise, times, events, replicates=500, seed=1)
    assert 0 < result.low < result.mean < result.high and result.seeds_positive == 5
    assert paired_cindex(bili, noise, times, events, replicates=500, seed=1) == result
    assert paired_cindex(bili, noise, times, events, replicates=500, seed=2) != result
    small = paired_cindex(bili, noise, times, events, replicates=500, seed=1, memory=64 * 80 * 7)
    assert small.per_seed == result.per_seed and small.mean == result.mean


def test_rare_events_redraw_undefined_resamples_instead_of_returning_nan():
    index = splits(3, 40, seed=5)
    events = [torch.zeros(40, dtype=torch.bool) for _ in index]
    times = per_seed("time", index)
    for e, t in zip(events, times):
        e[int(t.argmin())] = True  # one event per split, at its earliest time: ~37% of resamples miss it
    a, b = per_seed("bili", index), per_seed("age", index)
    raw = cindex_statistic(a[0], times[0], events[0], b[0])(multiplicities(40, 300, torch.Generator()))
    assert 50 < int(raw.isnan().sum()) < 200  # the redraws do happen
    result = paired_cindex(a, b, times, events, replicates=300, seed=8)
    assert all(torch.isfinite(torch.tensor([result.mean, result.low, result.high])))
    fast = hierarchical_bootstrap(lambda s: cindex_statistic(a[s], times[s], events[s], b[s]), [40] * 3, 300, 8)
    brute = hierarchical_bootstrap(lambda s: brute_statistic(a[s], b[s], times[s], events[s]), [40] * 3, 300, 8)
    assert torch.allclose(fast[1], brute[1], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="no comparable"):
        paired_cindex(a, b, times, [torch.zeros(40, dtype=torch.bool)] * 3, replicates=10)


def test_bootstrap_cindex_of_one_model():
    index = splits(5, 80, seed=6)
    bili, times, events = per_seed("bili", index), per_seed("time", index), per_seed("event", index)
    result = bootstrap_cindex(bili, times, events, replicates=500)
    expected = [concordance_index(x, t, e) for x, t, e in zip(bili, times, events)]
    assert result.per_seed == pytest.approx(expected, abs=1e-12)
    assert result.mean == pytest.approx(sum(expected) / 5, abs=1e-12)
    assert 0.5 < result.low < result.mean < result.high < 1


def test_cells_and_input_checks():
    cell = PairedDifference(0.014, -0.003, 0.031, (0.02, 0.01, -0.01, 0.03, 0.02), 4, 2000)
    assert str(cell) == "+0.014 [\u22120.003, +0.031] (4/5 seeds > 0)"
    assert BootstrapEstimate(0.85, 0.83, 0.87, (0.85,), 2000).cell() == "0.850 [0.830, 0.870]"
    index = splits(2, 30)
    times, events, bili = per_seed("time", index), per_seed("event", index), per_seed("bili", index)
    with pytest.raises(ValueError, match="number"):
        paired_cindex(bili, bili[:1], times, events)
    with pytest.raises(ValueError, match="lengths"):
        paired_cindex(bili, [bili[0][:20], bili[1]], times, events)
    with pytest.raises(ValueError, match="non-finite"):
        paired_cindex(bili, [bili[0], bili[1] * float("nan")], times, events)


@pytest.mark.parametrize("dof", [1, 2, 4, 9, 60])
def test_t_quantiles_are_the_tabulated_ones(dof: int) -> None:
    table = {1: 12.7062047, 2: 4.3026527, 4: 2.7764451, 9: 2.2621572, 60: 2.0002978}  # two-sided 95% critical values
    assert t_quantile(0.975, dof) == pytest.approx(table[dof], abs=1e-6)
    assert t_quantile(0.025, dof) == pytest.approx(-table[dof], abs=1e-6)
    assert t_cdf(table[dof], dof) == pytest.approx(0.975, abs=1e-8)
    assert t_cdf(0.0, dof) == pytest.approx(0.5, abs=1e-12)


def test_resampled_t_widens_the_naive_interval_by_the_test_train_ratio() -> None:
    differences = [0.010, 0.020, -0.005, 0.015, 0.000]
    found = resampled_t(differences, 15 / 70)
    mean = sum(differences) / 5
    sd = (sum((d - mean) ** 2 for d in differences) / 4) ** 0.5
    half = 2.7764451 * sd * (1 / 5 + 15 / 70) ** 0.5  # Nadeau & Bengio's (1/J + n2/n1) instead of 1/J
    assert found.mean == pytest.approx(mean) and found.per_seed == tuple(differences)
    assert (found.low, found.high) == (pytest.approx(mean - half, abs=1e-7), pytest.approx(mean + half, abs=1e-7))
    naive = resampled_t(differences, 1e-12)
    assert naive.high - naive.low < found.high - found.low
    assert 0.05 < found.p < 1 and resampled_t([0.01, 0.011, 0.012], 0.2).p < 0.01


@pytest.mark.parametrize(
    ("differences", "ratio", "message"),
    [([0.1], 0.2, "two or more"), ([0.1, float("nan")], 0.2, "finite"), ([0.1, 0.2], 0.0, "positive")],
)
def test_resampled_t_refuses_what_it_cannot_test(differences: list[float], ratio: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resampled_t(differences, ratio)
