"""Paired statistics for benchmark comparisons: per-seed differences of Harrell's c-index between two models scored on
the same test samples, and a two-level (seeds, then samples) bootstrap interval for their mean. Pure tensor math.

A bootstrap resample of n samples is a vector w of multiplicities (multinomial counts summing to n), so the c-index on
it is sum_ij w_i w_j N_ij / sum_ij w_i w_j D_ij: D_ij = 1 for a comparable pair, N_ij = D_ij * (1 if risk_i > risk_j,
1/2 if tied), with exactly the conventions of `legokit.training.metrics.concordance_index`. A batch of resamples W then
costs one matrix product W @ N (D's sums need only cumulative sums over the sorted times); per seed the float32 pair
matrix takes 4 n^2 bytes (25 MB for n = 2,500), the replicates go in chunks of about `memory` bytes. Another statistic
of this ratio form (e.g. an AUC: positives x negatives pairs) needs only its own `Statistic` for the same
`hierarchical_bootstrap`.

Seeds that re-split one cohort share samples, so their differences are not independent: the primary interval is the
corrected resampled t-test (Nadeau & Bengio 2003, `resampled_t`), whose variance (1/J + n_test/n_train) s^2 counts
that overlap; the bootstrap stays as a second opinion."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

MEMORY = 256 * 2**20  # bytes one chunk of replicates (or of pair-matrix rows) may hold
TIE = 1e-8  # risks this close count as tied, as in legokit.training.metrics.concordance_index
ROUNDS = 100  # redraws of undefined resamples (NaN statistic) before giving up

Statistic = Callable[[torch.Tensor], torch.Tensor]  # (rows, n) multiplicities -> (rows,) values, NaN where undefined


def _minus(text: str) -> str:
    return text.replace("-", "\u2212")


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B: per-seed differences, their mean, and its 95% two-level bootstrap interval."""

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    seeds_positive: int
    replicates: int

    def cell(self, digits: int = 3) -> str:
        """A table cell, e.g. "+0.014 [−0.003, +0.031] (4/5 seeds > 0)"."""
        d = digits
        return _minus(
            f"{self.mean:+.{d}f} [{self.low:+.{d}f}, {self.high:+.{d}f}] "
            f"({self.seeds_positive}/{len(self.per_seed)} seeds > 0)"
        )

    def __str__(self) -> str:
        return self.cell()


@dataclass(frozen=True)
class BootstrapEstimate:
    """One model's metric: mean over seeds and its 95% two-level bootstrap interval."""

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    replicates: int

    def cell(self, digits: int = 3) -> str:
        """A table cell, e.g. "0.850 [0.830, 0.870]"."""
        d = digits
        return _minus(f"{self.mean:.{d}f} [{self.low:.{d}f}, {self.high:.{d}f}]")

    def __str__(self) -> str:
        return self.cell()


@dataclass(frozen=True)
class ResampledT:
    """Per-seed differences, their mean, the corrected resampled t-test's 95% interval and two-sided p-value."""

    mean: float
    low: float
    high: float
    p: float
    per_seed: tuple[float, ...]
    test_train_ratio: float

    def cell(self, digits: int = 3) -> str:
        """A table cell, e.g. "+0.014 [−0.003, +0.031] p=0.09"."""
        d = digits
        return _minus(f"{self.mean:+.{d}f} [{self.low:+.{d}f}, {self.high:+.{d}f}] p={self.p:.2g}")

    def __str__(self) -> str:
        return self.cell()


def t_cdf(x: float, dof: int, points: int = 4001) -> float:
    """Student's t distribution function: 1/2 + c_v * integral_0^atan(x/sqrt(v)) cos^(v-1)(u) du (x = sqrt(v) tan u),
    c_v = Gamma((v+1)/2) / (sqrt(pi) Gamma(v/2)); Simpson's rule on a bounded integrand, float64."""
    if dof < 1:
        raise ValueError(f"a t distribution needs at least 1 degree of freedom, got {dof}")
    end = math.atan(abs(x) / math.sqrt(dof))
    u = torch.linspace(0.0, end, points, dtype=torch.float64)
    weights = torch.ones(points, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    integral = float((weights * u.cos().pow(dof - 1)).sum()) * end / (3 * (points - 1))
    scale = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(math.pi)
    return 0.5 + math.copysign(scale * integral, x)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (0 < p < 1), by bisection on `t_cdf` in the angle
    u = atan(x / sqrt(dof)), which is bounded."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    low, high = -math.pi / 2, math.pi / 2
    for _ in range(60):
        middle = (low + high) / 2
        if t_cdf(math.sqrt(dof) * math.tan(middle), dof) < p:
            low = middle
        else:
            high = middle
    return math.sqrt(dof) * math.tan((low + high) / 2)


def resampled_t(differences: Sequence[float], test_train_ratio: float, level: float = 0.95) -> ResampledT:
    """The corrected resampled t-test (Nadeau & Bengio 2003) of per-seed differences d_1..d_J on re-splits of one
    cohort: variance (1/J + n_test/n_train) s^2, J - 1 degrees of freedom; its `level` interval and two-sided p."""
    values = [float(d) for d in differences]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"the resampled t-test needs two or more finite per-seed differences, got {values}")
    if not (math.isfinite(test_train_ratio) and test_train_ratio > 0):
        raise ValueError(f"n_test/n_train must be a positive number, got {test_train_ratio}")
    count = len(values)
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    error = math.sqrt((1 / count + test_train_ratio) * variance)
    half = t_quantile(0.5 + level / 2, count - 1) * error
    p = 1.0 if error == 0 and mean == 0 else 0.0 if error == 0 else 2 * (1 - t_cdf(abs(mean) / error, count - 1))
    return ResampledT(mean, mean - half, mean + half, min(1.0, max(0.0, p)), tuple(values), test_train_ratio)


def _comparable(
    times_i: torch.Tensor, events_i: torch.Tensor, times: torch.Tensor, events: torch.Tensor
) -> torch.Tensor:
    t_i, t_j = rearrange(times_i, "i -> i 1"), rearrange(times, "j -> 1 j")
    later = (t_i < t_j) | ((t_i == t_j) & ~rearrange(events, "j -> 1 j"))
    return later & rearrange(events_i, "i -> i 1")


def concordance_pairs(
    risk: torch.Tensor,
    times: torch.Tensor,
    events: torch.Tensor,
    baseline: torch.Tensor | None = None,
    memory: int = MEMORY,
) -> torch.Tensor:
    """2N as an (n, n) float32 matrix: 2 where (i, j) is comparable and risk_i > risk_j, 1 where comparable and the
    risks are tied (within 1e-8), else 0; minus the same matrix of `baseline` risks when given. Built in row blocks
    of about `memory` bytes of temporaries."""
    risk, times, events = risk.double().cpu(), times.double().cpu(), events.bool().cpu()
    n = risk.numel()
    risks = [(risk, 1.0)] + ([] if baseline is None else [(baseline.double().cpu(), -1.0)])
    pairs = torch.zeros(n, n, dtype=torch.float32)
    rows = max(1, memory // (64 * n))
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        comparable = _comparable(times[block], events[block], times, events)
        for values, sign in risks:
            gap = rearrange(values[block], "i -> i 1") - rearrange(values, "j -> 1 j")
            score = (gap > TIE).float() + (gap >= -TIE).float()  # 2 higher, 1 tied (|gap| <= TIE), 0 lower
            pairs[block] += (sign * score) * comparable
    return pairs


def _denominator(weights: torch.Tensor, events: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    # samples sorted by time, an event's time group is [start, end): the weight later than it is all of it but the
    # samples before the group and the group's events. float32 prefix sums of integers <= n are exact.
    pad = weights.new_zeros(weights.shape[0], 1)
    before = torch.cat([pad, weights.cumsum(1)], 1)
    events_before = torch.cat([pad, (weights * events).cumsum(1)], 1)
    later = before[:, -1:] - before[:, start] - events_before[:, end] + events_before[:, start]
    return torch.einsum("re,re->r", weights[:, events].double(), later.double())


def cindex_statistic(
    risk: torch.Tensor,
    times: torch.Tensor,
    events: torch.Tensor,
    baseline: torch.Tensor | None = None,
    memory: int = MEMORY,
    device: str | torch.device = "cpu",
    blocks: int = 8,
) -> Statistic:
    """The weighted c-index (minus the `baseline` risks' c-index, when given) as a function of (rows, n) sample
    multiplicities: one row's value is sum_ij w_i w_j N_ij / sum_ij w_i w_j D_ij, NaN where no comparable pair has
    weight. The pair matrix is built once, over the samples sorted by time, so only its nonzero upper staircase of
    `blocks` column blocks is multiplied; D's sums are cumulative sums. Exact for integer multiplicities: the float32
    products are integers of magnitude <= 2n (exact below 2^24; CUDA's TF32 keeps multiplicities below 2048 exact)."""
    times = times.double().cpu()
    order = torch.argsort(times, stable=True)
    times, events = times[order], events.bool().cpu()[order]
    other = None if baseline is None else baseline.reshape(-1)[order]
    pairs = concordance_pairs(risk.reshape(-1)[order], times, events, other, memory).to(device)
    n = times.numel()
    width = -(-n // blocks)
    starts = list(range(0, n, width))
    ends = [int(torch.searchsorted(times, times[min(c + width, n) - 1], right=True)) for c in starts]
    group_start = torch.searchsorted(times, times)[events].to(device)
    group_end = torch.searchsorted(times, times, right=True)[events].to(device)
    order, events = order.to(device), events.to(device)

    def statistic(weights: torch.Tensor) -> torch.Tensor:
        w = weights.to(device, torch.float32)[:, order]
        numerator = torch.zeros(w.shape[0], dtype=torch.float64, device=device)
        for c, end in zip(starts, ends):
            product = w[:, :end] @ pairs[:end, c : c + width]
            numerator += torch.einsum("rj,rj->r", product.double(), w[:, c : c + width].double())
        denominator = _denominator(w, events, group_start, group_end)
        return torch.where(denominator > 0, numerator / 2 / denominator, torch.nan)

    return statistic


def weighted_cindex(
    risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Harrell's c-index of each row of integer multiplicities `weights` (rows, n): all ones gives concordance_index
    exactly. NaN where no comparable pair has weight (concordance_index says 0.5 there)."""
    return cindex_statistic(risk, times, events)(weights.reshape(-1, risk.numel()))


def multiplicities(n: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """`rows` bootstrap resamples of n samples as (rows, n) float32 multiplicities (each row sums to n)."""
    drawn = torch.randint(n, (rows, n), generator=generator)
    return torch.zeros(rows, n).scatter_add_(1, drawn, torch.ones(rows, n))


def _defined(statistic: Statistic, n: int, rows: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    values = statistic(multiplicities(n, rows, generator).to(device)).cpu()
    for _ in range(ROUNDS):
        undefined = values.isnan()
        if not undefined.any():
            return values
        values[undefined] = statistic(multiplicities(n, int(undefined.sum()), generator).to(device)).cpu()
    raise RuntimeError(
        f"the statistic stayed undefined on {int(values.isnan().sum())} of {rows} resamples after "
        f"{ROUNDS} redraws: too few comparable pairs for a bootstrap"
    )


def hierarchical_bootstrap(
    statistic_of: Callable[[int], Statistic],
    sizes: Sequence[int],
    replicates: int = 2000,
    seed: int = 0,
    memory: int = MEMORY,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-seed values on all samples, `replicates` bootstrap means) of `statistic_of(s)`, the statistic of seed s.

    Each replicate draws len(sizes) seeds with replacement (not when there is one) and, independently for each draw,
    multiplicities of that seed's n_s samples; its value is the mean over the draws. A resample where the statistic
    is undefined (NaN, e.g. no comparable pair drawn) is redrawn: the bootstrap is conditioned on a defined statistic.
    Reproducible for a `seed` and `memory` (which sets the chunks the generator draws in); seeds are processed one at
    a time, replicates in chunks of about `memory` bytes. A seed whose statistic is undefined on all its samples
    raises ValueError; resamples still undefined after 100 redraws raise RuntimeError.
    """
    if replicates < 1 or not sizes:
        raise ValueError(f"need at least one replicate and one seed, got {replicates} and {len(sizes)}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    count = len(sizes)
    if count > 1:
        picks = torch.randint(count, (replicates, count), generator=generator)
    else:
        picks = torch.zeros(replicates, 1, dtype=torch.long)
    points = torch.empty(count, dtype=torch.float64)
    values = torch.empty(replicates, count, dtype=torch.float64)
    for s, n in enumerate(sizes):
        statistic = statistic_of(s)
        points[s] = statistic(torch.ones(1, n, device=device)).cpu()[0]
        if points[s].isnan():
            raise ValueError(
                f"seed {s}: the statistic is undefined on its {n} samples (for a c-index: no comparable "
                "pair, i.e. no event before another sample's time)"
            )
        slots = picks == s
        total, rows = int(slots.sum()), max(1, memory // (48 * n))
        drawn = torch.empty(total, dtype=torch.float64)
        for start in range(0, total, rows):
            drawn[start : start + rows] = _defined(statistic, n, min(rows, total - start), generator, device)
        values[slots] = drawn
    return points, values.mean(1)


def _checked(name: str, groups: Sequence[Sequence[torch.Tensor]]) -> list[list[torch.Tensor]]:
    counts = {len(g) for g in groups}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"{name}: need the same number (>= 1) of seeds in every argument, got {sorted(counts)}")
    out = []
    for s, tensors in enumerate(zip(*groups)):
        flat = [t.detach().reshape(-1).cpu() for t in tensors]
        if len({t.numel() for t in flat}) != 1:
            raise ValueError(f"{name}: seed {s} has tensors of different lengths {[t.numel() for t in flat]}")
        if not all(bool(torch.isfinite(t.double()).all()) for t in flat):
            raise ValueError(f"{name}: seed {s} has non-finite risks or times")
        out.append(flat)
    return out


def _interval(replicated: torch.Tensor) -> tuple[float, float]:
    low, high = torch.quantile(replicated, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high


def paired_cindex(
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    times: Sequence[torch.Tensor],
    events: Sequence[torch.Tensor],
    replicates: int = 2000,
    seed: int = 0,
    memory: int = MEMORY,
    device: str | torch.device = "cpu",
) -> PairedDifference:
    """c-index(A) - c-index(B), one entry per seed (risks of A and B on that seed's test samples): per-seed
    differences, their mean, and the 2.5/97.5 percentiles of `hierarchical_bootstrap` means (paired resamples:
    A and B see the same multiplicities; resamples with no comparable pair are redrawn)."""
    seeds = _checked("paired_cindex", [a, b, times, events])

    def statistic_of(s: int) -> Statistic:
        risk_a, risk_b, t, e = seeds[s]
        return cindex_statistic(risk_a, t, e, risk_b, memory, device)

    points, replicated = hierarchical_bootstrap(
        statistic_of, [s[0].numel() for s in seeds], replicates, seed, memory, device
    )
    low, high = _interval(replicated)
    return PairedDifference(
        float(points.mean()), low, high, tuple(points.tolist()), int((points > 0).sum()), replicates
    )


def bootstrap_cindex(
    risks: Sequence[torch.Tensor],
    times: Sequence[torch.Tensor],
    events: Sequence[torch.Tensor],
    replicates: int = 2000,
    seed: int = 0,
    memory: int = MEMORY,
    device: str | torch.device = "cpu",
) -> BootstrapEstimate:
    """One model's c-index over seeds: per-seed values, their mean, and the 2.5/97.5 percentiles of
    `hierarchical_bootstrap` means (resamples with no comparable pair are redrawn)."""
    seeds = _checked("bootstrap_cindex", [risks, times, events])

    def statistic_of(s: int) -> Statistic:
        risk, t, e = seeds[s]
        return cindex_statistic(risk, t, e, None, memory, device)

    points, replicated = hierarchical_bootstrap(
        statistic_of, [s[0].numel() for s in seeds], replicates, seed, memory, device
    )
    low, high = _interval(replicated)
    return BootstrapEstimate(float(points.mean()), low, high, tuple(points.tolist()), replicates)
