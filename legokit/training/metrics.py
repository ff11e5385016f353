"""Losses and metrics of the tasks (MM-Lego Appendix D). Pure tensor math, no modules.

survival: discrete-time hazards over bins of the uncensored times, negative log-likelihood, Harrell's c-index;
multiclass: cross-entropy, macro one-vs-rest AUC; binary: BCE, AUC; multilabel: BCE, macro-F1 at 0.5, macro AUC.
AUCs are computed from scores (probabilities), never from thresholded labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from legokit.tasks import TaskSpec


def survival_bins(times: torch.Tensor, events: torch.Tensor, n: int) -> torch.Tensor:
    """n + 1 bin edges at the quantiles of the uncensored times (the outer edges open to 0 and infinity)."""
    observed = times[events.bool()]
    if observed.numel() == 0:
        observed = times
    inner = torch.quantile(observed.double(), torch.linspace(0, 1, n + 1, dtype=torch.float64)[1:-1])
    return torch.cat([torch.zeros(1, dtype=torch.float64), inner, torch.full((1,), float("inf"), dtype=torch.float64)])


def to_bins(times: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The bin index (0 .. n-1) of each time."""
    return torch.bucketize(times.double(), edges[1:-1].to(times.device), right=True)


def survival_nll(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Discrete-time survival NLL with hazards h = sigmoid(logits): an event in bin k costs
    -log S(k-1) - log h(k); a censoring in bin k costs -log S(k), where log S(k) = sum_{j<=k} log(1 - h(j))."""
    log_h = F.logsigmoid(logits)
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=1)
    padded = torch.cat([torch.zeros_like(log_survival[:, :1]), log_survival], dim=1)
    k = bins.long().unsqueeze(1)
    event = events.float()
    before = padded.gather(1, k).squeeze(1)
    at = log_h.gather(1, k).squeeze(1)
    through = log_survival.gather(1, k).squeeze(1)
    return -(event * (before + at) + (1 - event) * through).mean()


def cox_partial_nll(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Cox's negative log partial likelihood with Breslow's ties, per event: -(1/d) sum over events i of
    risk_i - log sum_{j: t_j >= t_i} exp(risk_j) (DeepSurv's loss over a batch's risk sets). 0 (keeping the graph)
    when the batch holds no event."""
    order = torch.argsort(times.double(), descending=True)
    risk, times, events = risk.double()[order], times.double()[order], events.bool()[order]
    # times sorted descending: the risk set of t_i is a prefix, up to the last sample tied with it
    last_tie = torch.searchsorted(-times, -times, right=True) - 1
    log_risk_sets = torch.logcumsumexp(risk, dim=0)[last_tie]
    count = events.sum()
    if int(count) == 0:
        return (risk * 0).sum().float()
    return (-(risk - log_risk_sets)[events].sum() / count).float()


SURVIVAL_LOSSES = ("nll", "cox", "nll+cox")  # the discrete-time likelihood, Cox's partial likelihood, or their sum


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Risk = -sum of the survival curve (higher = earlier event)."""
    return -torch.cumprod(torch.sigmoid(-logits), dim=1).sum(dim=1)


def concordance_index(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> float:
    """Harrell's c-index: over pairs (i, j) where i has an event and j was still at risk after it (t_i < t_j, or
    t_i = t_j with j censored), the share with risk_i > risk_j; risks within 1e-8 count 1/2. 0.5 when no pair is
    comparable. The same conventions as scikit-survival's `concordance_index_censored`."""
    risk, times, events = risk.double().cpu(), times.double().cpu(), events.bool().cpu()
    later = (times[:, None] < times[None, :]) | ((times[:, None] == times[None, :]) & ~events[None, :])
    comparable = later & events[:, None]
    if not comparable.any():
        return 0.5
    tied = (risk[:, None] - risk[None, :]).abs() <= 1e-8
    higher = ((risk[:, None] > risk[None, :]) & ~tied).double() + 0.5 * tied.double()
    return float((higher * comparable).sum() / comparable.sum())


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve from scores (Mann-Whitney, ties count 1/2); NaN when one class is absent."""
    scores, labels = scores.double().cpu(), labels.bool().cpu()
    positive, negative = scores[labels], scores[~labels]
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
    return float(greater.mean())


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")


def macro_f1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over labels of F1 (a label with no positives and no predictions counts 1)."""
    predicted, labels = predicted.bool().cpu(), labels.bool().cpu()
    scores = []
    for k in range(labels.shape[1]):
        tp = (predicted[:, k] & labels[:, k]).sum().item()
        fp = (predicted[:, k] & ~labels[:, k]).sum().item()
        fn = (~predicted[:, k] & labels[:, k]).sum().item()
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def task_loss(
    task: TaskSpec, logits: torch.Tensor, target: dict[str, torch.Tensor], survival_loss: str = "nll"
) -> torch.Tensor:
    """The training loss of a task, for a batch of logits and targets (`bin`/`event`/`time`, or `label`); a survival
    task's is `survival_loss`: the discrete-time NLL, Cox's partial likelihood of the risk the c-index ranks by
    (`risk_from_logits`: the head and its bins stay as they are, so the block still merges), or their sum."""
    logits = logits.float()
    if task.kind == "survival":
        if survival_loss == "nll":
            return survival_nll(logits, target["bin"], target["event"])
        cox = cox_partial_nll(risk_from_logits(logits), target["time"], target["event"])
        return cox if survival_loss == "cox" else survival_nll(logits, target["bin"], target["event"]) + cox
    if task.kind == "multiclass":
        return F.cross_entropy(logits, target["label"].long())
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], target["label"].float())
    return F.binary_cross_entropy_with_logits(logits, target["label"].float())


PRIMARY = {"survival": "c_index", "multiclass": "auc", "binary": "auc", "multilabel": "auc"}


def undefined_auc(task: TaskSpec, target: dict[str, torch.Tensor], split: str) -> str | None:
    """Why a split's AUC cannot be computed, as a warning: its samples hold one class only (binary, multiclass), or
    every label one value (multilabel); None when it can (or the task has no AUC, or the split no samples)."""
    labels = target.get("label")
    if task.kind not in ("binary", "multiclass", "multilabel") or labels is None or labels.numel() == 0:
        return None
    if task.kind == "multilabel":
        if bool((labels == labels[:1]).all()):
            return (
                f"the {split} split's {labels.shape[0]} samples have the same value for every label: its AUC "
                "is undefined (NaN; null in JSON)"
            )
        return None
    classes = labels.long().unique()
    if classes.numel() > 1:
        return None
    return (
        f"the {split} split's {labels.shape[0]} samples are all of class {int(classes[0])}: its AUC is "
        "undefined (NaN; null in JSON)"
    )


def task_metrics(task: TaskSpec, logits: torch.Tensor, target: dict[str, torch.Tensor]) -> dict[str, float]:
    """The task's metrics on a whole split; the first is the one model selection uses."""
    logits = logits.float()
    if task.kind == "survival":
        return {"c_index": concordance_index(risk_from_logits(logits), target["time"], target["event"])}
    if task.kind == "multiclass":
        probabilities = torch.softmax(logits, dim=1)
        labels = target["label"].long()
        auc = _nanmean([binary_auc(probabilities[:, k], labels == k) for k in range(task.n)])
        accuracy = float((probabilities.argmax(1) == labels).double().mean())
        return {"auc": auc, "accuracy": accuracy}
    if task.kind == "binary":
        return {"auc": binary_auc(torch.sigmoid(logits[:, 0]), target["label"])}
    probabilities = torch.sigmoid(logits)
    labels = target["label"]
    return {
        "auc": _nanmean([binary_auc(probabilities[:, k], labels[:, k]) for k in range(task.n)]),
        "macro_f1": macro_f1(probabilities >= 0.5, labels),
    }
