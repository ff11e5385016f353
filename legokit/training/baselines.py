"""Baselines the demo and the benchmarks compare LegoMerge and LegoFuse against: a late-fusion concatenation model
trained end to end, and a Cox proportional-hazards model (ridge-penalised partial likelihood, Breslow ties) on every
modality's summary features, the classical model a practitioner fits by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from einops import rearrange
from torch import nn

from legokit.data.batch import ModalityBatch
from legokit.data.folder import DataError
from legokit.data.stream import budget_chunks
from legokit.data.training import SplitData
from legokit.encoders import Encoder, build_encoder
from legokit.encoders.summaries import sequence_summaries
from legokit.tasks import TaskSpec
from legokit.training.metrics import concordance_index


class LateFusion(nn.Module):
    """Each modality's encoder pools to one vector (zeros plus a missing flag where a sample lacks it); the
    vectors are concatenated and a linear head predicts the task. Trained end to end: the classic baseline."""

    def __init__(
        self,
        encoders: Mapping[str, tuple[str, dict]],
        shapes: Mapping[str, tuple[int | None, ...]],
        task: TaskSpec,
        normalization: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ):
        super().__init__()
        self.order = sorted(encoders)
        self.encoders = nn.ModuleDict(
            {m: build_encoder(name, {"in_features": shapes[m][-1], **kwargs}) for m, (name, kwargs) in encoders.items()}
        )
        for m in self.order:
            shift, scale = normalization[m]
            self.register_buffer(f"shift_{m}", shift.clone())
            self.register_buffer(f"scale_{m}", torch.where(scale > 0, scale, torch.ones_like(scale)))
        width = sum(cast(Encoder, self.encoders[m]).out_dim + 1 for m in self.order)  # `build_encoder` checked it
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, task.out_features))

    @property
    def modalities(self) -> list[str]:
        return list(self.order)

    def forward(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor:
        size = next(iter(inputs.values())).x.shape[0]
        parts = []
        for m in self.order:
            encoder = self.encoders[m]
            batch = inputs.get(m)
            if batch is None:
                device = cast(nn.Linear, self.head[1]).weight.device
                parts += [
                    torch.zeros(size, cast(Encoder, encoder).out_dim, device=device),
                    torch.ones(size, 1, device=device),
                ]
                continue
            x = (batch.x - getattr(self, f"shift_{m}")) / getattr(self, f"scale_{m}")
            out = encoder(x, batch.mask) if getattr(encoder, "accepts_mask", False) else encoder(x)
            if out.dim() == 3:
                out = out.mean(dim=1)
            present = batch.presence().to(out.dtype).unsqueeze(1)
            parts += [out * present, 1 - present]
        return self.head(torch.cat(parts, dim=1))


def cox_fit(
    x: torch.Tensor, times: torch.Tensor, events: torch.Tensor, alpha: float = 0.1, iterations: int = 100
) -> torch.Tensor:
    """Coefficients beta minimising -log PL(beta) + alpha/2 |beta|^2 (Breslow's partial likelihood for ties),
    by L-BFGS in float64. Standardise x first; risk is x @ beta."""
    x, times, events = x.double(), times.double(), events.bool()
    order = torch.argsort(times, descending=True)
    x, times, events = x[order], times[order], events[order]
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    # risk set of a time t: every sample with time >= t; with times sorted descending, a prefix up to the last tie
    last_tie = torch.searchsorted(-times, -times, right=True) - 1
    optimizer = torch.optim.LBFGS(
        [beta], max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        eta = x @ beta
        log_risk_sets = torch.logcumsumexp(eta, dim=0)[last_tie]
        loss = -(eta - log_risk_sets)[events].sum() + 0.5 * alpha * beta.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return beta.detach()


def summary_features(batch: ModalityBatch, time_feature: int | None = 0) -> torch.Tensor:
    """A modality as one row per sample for a classical model: a table's row as it is; a sequence's last value,
    mean and slope over time of each feature and its token count (`legokit.encoders.summaries`; time is feature
    `time_feature` of each token, as in the bundled folders)."""
    if batch.x.dim() == 2:
        return batch.x
    return sequence_summaries(batch.x, batch.mask, time_feature)


def _summaries(
    data: SplitData, modality: str, ids: Sequence[str], time_feature: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """These samples' summary features of one modality (zeros where a sample lacks it) and which have it (b,), read
    in chunks within the folder's token budget (a split of long bags is never held at once)."""
    budget = data.folder.token_budget([modality])
    features, present = [], []
    for chunk in budget_chunks(list(ids), data.folder.lengths(ids, [modality]), budget):
        batch = data.folder.batch(chunk, [modality], narrow=True)[modality].widened()
        features.append(summary_features(batch, time_feature))
        present.append(batch.presence())
    return torch.cat(features), torch.cat(present)


def _summary_rows(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], fills: Sequence[tuple[torch.Tensor, bool]]
) -> torch.Tensor:
    """Modalities' summary features side by side; a modality a sample lacks is its training mean, plus a missing flag
    for the modalities that some training sample lacks (`fills`: mean, flagged, per modality)."""
    columns = []
    for (features, present), (mean, flagged) in zip(parts, fills):
        present = rearrange(present, "b -> b 1")
        columns.append(torch.where(present, features, mean))
        if flagged:
            columns.append((~present).to(mean.dtype))
    return torch.cat(columns, dim=1)


@dataclass(frozen=True)
class SummaryCox:
    """A Cox model over every modality's summary features (`summary_features`), standardised on its training
    samples: coefficients, the standardisation, each modality's fill (training mean, missing flag), and the
    training samples' linear predictors, times and events (for Breslow's baseline hazard)."""

    modalities: tuple[str, ...]
    time_feature: int | None
    beta: torch.Tensor
    mean: torch.Tensor
    sd: torch.Tensor
    fills: tuple[tuple[torch.Tensor, bool], ...]
    eta: torch.Tensor
    time: torch.Tensor
    event: torch.Tensor

    def linear(self, data: SplitData, ids: Sequence[str]) -> torch.Tensor:
        """The linear predictor (risk) of these samples; an id lacking every modality gets the training means."""
        scored = _summary_rows([_summaries(data, m, ids, self.time_feature) for m in self.modalities], self.fills)
        return ((scored.double() - self.mean.double()) / self.sd.double()) @ self.beta

    def survival(self, data: SplitData, ids: Sequence[str], times: Sequence[float]) -> torch.Tensor:
        """S(t | x) = exp(-H0(t) exp(eta)) at `times` (n, len(times)), H0 Breslow's estimate on the training data."""
        return breslow_survival(self.eta, self.time, self.event, self.linear(data, ids), times)


def breslow_survival(
    eta_train: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    eta: torch.Tensor,
    times: Sequence[float],
) -> torch.Tensor:
    """Cox survival at `times` for linear predictors `eta`: H0(t) = sum over event times t_j <= t of d_j over the
    sum of exp(eta_train) of the samples still at risk at t_j (Breslow)."""
    time, event, eta_train = time.double(), event.bool(), eta_train.double()
    distinct = torch.unique(time[event], sorted=True)
    at_risk = torch.stack([eta_train[time >= t].exp().sum() for t in distinct]) if len(distinct) else distinct
    deaths = torch.stack([(time[event] == t).sum().double() for t in distinct]) if len(distinct) else distinct
    steps = (deaths / at_risk).cumsum(0) if len(distinct) else distinct
    horizons = torch.tensor(list(times), dtype=torch.float64)
    index = torch.searchsorted(distinct, horizons, right=True)
    hazard = torch.cat([torch.zeros(1, dtype=torch.float64), steps])[index]
    return torch.exp(-hazard[None, :] * eta.double().exp()[:, None])


@dataclass(frozen=True)
class SummaryDesign:
    """Summary features of the training samples that have any of `modalities` (`summary_features`, side by side; a
    lacking modality its training mean plus a flag), the fills that make the same columns for other samples, and the
    training targets."""

    modalities: tuple[str, ...]
    time_feature: int | None
    x: torch.Tensor
    fills: tuple[tuple[torch.Tensor, bool], ...]
    time: torch.Tensor
    event: torch.Tensor

    def rows(self, data: SplitData, ids: Sequence[str]) -> torch.Tensor:
        """The same columns for these samples (an id lacking every modality gets the training means)."""
        return _summary_rows([_summaries(data, m, ids, self.time_feature) for m in self.modalities], self.fills)


def summary_design(
    data: SplitData, modalities: Sequence[str], train: Sequence[str], time_feature: int | None = 0
) -> SummaryDesign:
    """The training design of a classical model on summary features. Fewer than two training samples with any of
    `modalities`, or a modality none of them has, is a DataError: its features would be NaN, and so every risk."""
    train = [i for i in train if any(i in data.folder.ids_of(m) for m in modalities)]
    if len(train) < 2:
        raise DataError(
            f"Cox with summary features needs two training samples with {', '.join(modalities)}; {len(train)} have any"
        )
    parts = [_summaries(data, m, train, time_feature) for m in modalities]
    fills = []
    for m, (features, present) in zip(modalities, parts):
        if not present.any():
            raise DataError(
                f"modality {m}: none of the {len(train)} training samples has it; Cox with summary "
                "features cannot fill it in (leave it out)"
            )
        fills.append((features[present].mean(0), not bool(present.all())))
    targets = data.labels.select(train)
    x = _summary_rows(parts, fills)
    return SummaryDesign(tuple(modalities), time_feature, x, tuple(fills), targets["time"], targets["event"])


def _cox_on(design: SummaryDesign, alpha: float) -> SummaryCox:
    x = design.x
    mean, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    beta = cox_fit((x - mean) / sd, design.time, design.event, alpha)
    eta = ((x.double() - mean.double()) / sd.double()) @ beta
    return SummaryCox(
        design.modalities, design.time_feature, beta, mean, sd, design.fills, eta, design.time, design.event
    )


def summary_cox(
    data: SplitData,
    modalities: Sequence[str],
    train: Sequence[str],
    time_feature: int | None = 0,
    alpha: float = 0.1,
) -> SummaryCox:
    """Cox with summary features fit on `train` (the samples that have any of `modalities`), ridge `alpha` on
    standardised columns: the baseline the toolkit has to beat (`summary_design` says which inputs it refuses)."""
    return _cox_on(summary_design(data, modalities, train, time_feature), alpha)


PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0)  # ridge penalties a tuned Cox model tries, chosen on validation


def tuned_summary_cox(
    data: SplitData,
    modalities: Sequence[str],
    train: Sequence[str],
    val: Sequence[str],
    time_feature: int | None = 0,
    penalties: Sequence[float] = PENALTIES,
) -> tuple[SummaryCox, dict[float, float]]:
    """Penalised Cox with summary features, its ridge penalty chosen by Harrell's c-index on the `val` samples that
    have any of `modalities` (ties go to the larger penalty); returns the chosen model and each penalty's score. A
    validation split with no such sample, or no event among them, is a DataError."""
    design = summary_design(data, modalities, train, time_feature)
    val = [i for i in val if any(i in data.folder.ids_of(m) for m in modalities)]
    targets = data.labels.select(val) if val else None
    if targets is None or not bool(targets["event"].bool().any()):
        raise DataError(f"a tuned Cox model needs validation samples with {', '.join(modalities)} and an event")
    rows = design.rows(data, val)
    scores: dict[float, float] = {}
    models = {}
    for alpha in sorted(penalties, reverse=True):
        models[alpha] = _cox_on(design, alpha)
        risk = ((rows.double() - models[alpha].mean.double()) / models[alpha].sd.double()) @ models[alpha].beta
        scores[alpha] = concordance_index(risk, targets["time"], targets["event"])
    best = max(scores, key=lambda alpha: scores[alpha])  # the first maximum: the largest penalty among ties
    return models[best], scores


def summary_cox_risks(
    data: SplitData,
    modalities: Sequence[str],
    train: Sequence[str],
    ids: Sequence[str],
    time_feature: int | None = 0,
    alpha: float = 0.1,
) -> dict[str, float]:
    """Risks of `ids` under Cox with summary features fit on `train` (`summary_cox`)."""
    model = summary_cox(data, modalities, train, time_feature, alpha)
    return dict(zip(ids, model.linear(data, ids).tolist())) if ids else {}
