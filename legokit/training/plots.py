"""Figures of a model's results: Kaplan-Meier curves of predicted risk groups with a log-rank test, ROC curves,
and the training history. Pure plotting: the statistics are computed here in torch, the figures with matplotlib.

matplotlib is an optional dependency (`pip install 'legokit[plot]'`), imported only when a figure is drawn, with the
non-interactive Agg backend. Every PNG is written atomically and never over one of the command's inputs.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from legokit.errors import ConfigError, ShapeError, positive_int
from legokit.io.atomic import refuse_inputs, write_atomic
from legokit.survival.estimators import kaplan_meier as product_limit
from legokit.tasks import TaskSpec
from legokit.training.metrics import risk_from_logits

DPI = 120
MISSING_MATPLOTLIB = "plots need matplotlib: pip install 'legokit[plot]'"


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a ConfigError naming the `plot` extra when matplotlib is missing.

    The backend is chosen only when pyplot is not imported yet: switching an importer's backend would close its
    open figures (a notebook's), and any backend renders into a PNG buffer.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(MISSING_MATPLOTLIB) from exc
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(MISSING_MATPLOTLIB) from exc
    return plt


def _render(fig: Any) -> bytes:
    """The figure as PNG bytes, rendered in memory (the caller closes the figure)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _vector(name: str, values: torch.Tensor) -> torch.Tensor:
    """A 1-D float64 CPU copy of `values` (shape (n,) or (n, 1), n >= 1); a ShapeError otherwise."""
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"{name}: not a tensor of numbers ({type(values).__name__})") from exc
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 1:
        raise ShapeError(f"{name}: expected shape (n,) or (n, 1), got {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ShapeError(f"{name}: empty; nothing to plot")
    if tensor.is_complex():
        raise ShapeError(f"{name}: complex values")
    return tensor.detach().to("cpu", torch.float64)


def _finite(name: str, values: torch.Tensor) -> torch.Tensor:
    """`values` as a 1-D float64 vector with no NaN or infinite entry."""
    tensor = _vector(name, values)
    if not torch.isfinite(tensor).all():
        raise ShapeError(f"{name}: holds NaN or infinite values")
    return tensor


def _binary(name: str, values: torch.Tensor) -> torch.Tensor:
    """`values` as a 1-D bool vector; every entry must be 0 or 1 (or a bool)."""
    tensor = _vector(name, values)
    if not ((tensor == 0) | (tensor == 1)).all():
        raise ShapeError(f"{name}: must hold 0 or 1 only (1 = event), got other values")
    return tensor.bool()


def _same_length(**vectors: torch.Tensor) -> None:
    lengths = {name: len(v) for name, v in vectors.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError("mismatched lengths: " + ", ".join(f"{name} {n}" for name, n in lengths.items()))


def _survival_inputs(time: torch.Tensor, event: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    times, events = _finite("time", time), _binary("event", event)
    _same_length(time=times, event=events)
    return times, events


def _risk_table(
    times: torch.Tensor, events: torch.Tensor, group: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct times (sorted) and, per time and group, the number at risk just before and the events at it.

    Censored at t counts as still at risk at t (events come before censorings at a tie)."""
    distinct, where = torch.unique(times, sorted=True, return_inverse=True)
    cell = where * n_groups + group
    leaving = torch.zeros(len(distinct) * n_groups, dtype=torch.float64)
    leaving.index_add_(0, cell, torch.ones_like(times))
    dying = torch.zeros(len(distinct) * n_groups, dtype=torch.float64)
    dying.index_add_(0, cell, events.double())
    leaving, dying = leaving.view(-1, n_groups), dying.view(-1, n_groups)
    at_risk = leaving.sum(0, keepdim=True) - (leaving.cumsum(0) - leaving)
    return distinct, at_risk, dying


def kaplan_meier(time: torch.Tensor, event: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The product-limit (Kaplan-Meier) estimate: the distinct event or censoring times, sorted, and the survival
    probability just after each (float64); at a tie, events come before censorings."""
    curve = product_limit(*_survival_inputs(time, event))
    return curve.times, curve.values


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square with `df` degrees of freedom: the p-value of a chi-square test."""
    statistic = max(float(statistic), 0.0)
    if df == 1:
        return math.erfc(math.sqrt(statistic / 2))
    value = torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
    )
    return float(value)


def logrank(time: torch.Tensor, event: torch.Tensor, group: torch.Tensor) -> tuple[float, float, int]:
    """The log-rank test that the groups share one survival curve: (chi-square statistic, p-value, degrees of
    freedom), with the hypergeometric covariance over all groups (as lifelines' multivariate_logrank_test)."""
    times, events = _survival_inputs(time, event)
    labels = _finite("group", group)
    _same_length(time=times, event=events, group=labels)
    _, index = torch.unique(labels, sorted=True, return_inverse=True)
    n_groups = int(index.max()) + 1
    if n_groups < 2:
        raise ShapeError("the log-rank test needs at least two groups; all samples are in one")
    _, at_risk, dying = _risk_table(times, events, index, n_groups)
    n, d = at_risk.sum(1), dying.sum(1)
    share = at_risk / n[:, None]
    observed_minus_expected = (dying - share * d[:, None]).sum(0)
    spread = torch.where(n > 1, d * (n - d) / (n - 1).clamp(min=1), torch.zeros_like(n))
    covariance = torch.einsum("t,tg,th->gh", spread, share, -share)
    covariance += torch.diag((spread[:, None] * share).sum(0))
    z = observed_minus_expected[:-1]
    statistic = float(z @ torch.linalg.pinv(covariance[:-1, :-1]) @ z)
    df = n_groups - 1
    return statistic, chi2_sf(statistic, df), df


def risk_groups(risk: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Each sample's group by quantiles of its predicted risk (0 = lowest risk); 2 groups split at the median, a risk
    equal to a cut going to the lower group, so tied risks always share a group."""
    groups = positive_int("groups", groups)
    values = _finite("risk", risk)
    if groups == 1:
        return torch.zeros(len(values), dtype=torch.long)
    cuts = torch.quantile(values, torch.arange(1, groups, dtype=torch.float64) / groups)
    return torch.bucketize(values, cuts, right=False)


def roc_curve(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ROC points (false and true positive rates from (0, 0) to (1, 1), one point per distinct score, so tied
    scores move both rates at once) and the area under them by the trapezoid rule."""
    values, positive = _finite("scores", scores), _binary("labels", labels)
    _same_length(scores=values, labels=positive)
    n_positive = int(positive.sum())
    if n_positive == 0 or n_positive == len(positive):
        raise ShapeError("labels: ROC needs both positive and negative samples")
    order = torch.argsort(values, descending=True, stable=True)
    ranked, hits = values[order], positive[order].double()
    last_of_tie = torch.cat([ranked[1:] != ranked[:-1], torch.ones(1, dtype=torch.bool)])
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, hits.cumsum(0)[last_of_tie] / n_positive])
    fpr = torch.cat([zero, (1.0 - hits).cumsum(0)[last_of_tie] / (len(positive) - n_positive)])
    return fpr, tpr, float(torch.trapezoid(tpr, fpr))


def _prepare_output(
    path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
) -> tuple[Path, list[str | os.PathLike[str]]]:
    """The output path and the inputs as a list, refused before any drawing when the path is one of the inputs."""
    path, inputs = Path(path), list(inputs)
    refuse_inputs(path, inputs)
    return path, inputs


def _with_title(title: str, note: str) -> str:
    return f"{title}\n{note}" if title else note


@contextmanager
def _figure(
    path: Path, inputs: list[str | os.PathLike[str]], size: tuple[float, float], panels: int = 1
) -> Iterator[Any]:
    """One figure's axes (a row of `panels` when more than one); on a clean exit the figure is laid out, rendered
    and written atomically to `path`, and it is closed whatever happens."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, panels, figsize=size)
    try:
        yield ax
        fig.tight_layout()
        data = _render(fig)
    finally:
        plt.close(fig)
    write_atomic(path, data, inputs)


def plot_survival(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    path: str | os.PathLike[str],
    title: str = "",
    groups: int = 2,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Path:
    """Kaplan-Meier curves of the samples grouped by predicted risk, with the log-rank p-value between the groups:
    shows whether the model's risk separates who survives longer; with `calibration` (predicted S(t) (n, H) and
    the H horizons) a second panel sets each horizon's predicted survival against Kaplan-Meier's, overall and by
    fifths of the prediction. Writes a PNG to `path` and returns it."""
    if positive_int("groups", groups) < 2:
        raise ConfigError(f"groups must be at least 2 to compare survival, got {groups}")
    values = _finite("risk", risk)
    times, events = _survival_inputs(time, event)
    _same_length(risk=values, time=times, event=events)
    path, inputs = _prepare_output(path, inputs)
    group = risk_groups(values, groups)
    present = [int(g) for g in torch.unique(group)]
    if len(present) >= 2:
        statistic, p_value, df = logrank(times, events, group)
        note = f"log-rank p = {p_value:.3g} (chi2 = {statistic:.2f}, df = {df})"
    else:
        note = "log-rank test: n/a (all samples in one risk group)"
    with _figure(path, inputs, (12.8, 4.8) if calibration else (6.4, 4.8), 2 if calibration else 1) as axes:
        ax = axes[0] if calibration else axes
        if calibration is not None:
            _calibration_panel(axes[1], calibration[0], calibration[1], times, events)
        start = min(0.0, float(times.min()))
        for k in present:
            members = group == k
            n = int(members.sum())
            label = f"{'low' if k == 0 else 'high'} risk (n={n})" if groups == 2 else f"risk group {k} (n={n})"
            at, survival = kaplan_meier(times[members], events[members])
            (line,) = ax.step(
                torch.cat([torch.tensor([start], dtype=torch.float64), at]).tolist(),
                torch.cat([torch.ones(1, dtype=torch.float64), survival]).tolist(),
                where="post",
                label=label,
            )
            censored = times[members & ~events]
            if censored.numel():
                marks = survival[torch.searchsorted(at, censored)]
                ax.plot(censored.tolist(), marks.tolist(), linestyle="none", marker="|", color=line.get_color())
        ax.set_xlabel("time")
        ax.set_ylabel("survival probability")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_with_title(title, note))
        ax.legend(loc="best", title="0 = lowest predicted risk" if groups > 2 else None)
    return path


def _calibration_panel(
    ax: Any, predicted: torch.Tensor, horizons: torch.Tensor, times: torch.Tensor, events: torch.Tensor
) -> None:
    """Predicted against Kaplan-Meier survival at each horizon (at most 8, spread over them): all samples (a large
    marker) and fifths of the prediction (small ones), on the diagonal when calibrated."""
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    shown = torch.linspace(0, len(horizons) - 1, min(len(horizons), 8)).round().long().unique().tolist()
    for k, at in ((k, float(horizons[k])) for k in shown):  # at most 8 horizons, spread over them
        column = predicted[:, k].double()
        order = torch.argsort(column, stable=True)
        groups = [m for m in torch.tensor_split(order, max(1, min(5, len(order) // 20))) if len(m)]
        xs = [float(column[m].mean()) for m in groups]
        ys = [float(km_at(times[m], events[m], at)) for m in groups]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=f"t = {at:g}")
        ax.plot([float(column.mean())], [float(km_at(times, events, at))], marker="D", color=line.get_color())
    ax.set_xlabel("predicted survival S(t)")
    ax.set_ylabel("Kaplan-Meier survival S(t)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("calibration (diamond: all samples; dots: fifths)")
    ax.legend(loc="best")


def km_at(times: torch.Tensor, events: torch.Tensor, at: float) -> float:
    """Kaplan-Meier's S(at) of these samples."""
    return float(product_limit(times, events)(torch.tensor([at], dtype=torch.float64))[0])


def _class_labels(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    values = _finite("labels", labels)
    if not ((values == values.round()) & (values >= 0) & (values < n_classes)).all():
        raise ShapeError(f"labels: must be class indices 0 .. {n_classes - 1}")
    return values.long()


def plot_roc(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    path: str | os.PathLike[str],
    title: str = "",
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """ROC curves with their AUCs: one curve for binary probabilities ((n,) or (n, 1), labels 0/1), one-vs-rest per
    class for (n, K) probabilities and class-index labels; shows how well the scores rank each class."""
    try:
        scores = torch.as_tensor(probabilities).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"probabilities: not a tensor of numbers ({type(probabilities).__name__})") from exc
    if scores.dim() == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.dim() == 1:
        curves = [("positive class", _finite("probabilities", scores), _binary("labels", labels))]
    elif scores.dim() == 2 and scores.shape[1] >= 2:
        if scores.shape[0] == 0:
            raise ShapeError("probabilities: empty; nothing to plot")
        if not torch.isfinite(scores).all():
            raise ShapeError("probabilities: holds NaN or infinite values")
        classes = _class_labels(labels, scores.shape[1])
        curves = [(f"class {k}", scores[:, k], classes == k) for k in range(scores.shape[1])]
    else:
        raise ShapeError(f"probabilities: expected shape (n,), (n, 1) or (n, K), got {tuple(scores.shape)}")
    _same_length(probabilities=curves[0][1], labels=curves[0][2])
    path, inputs = _prepare_output(path, inputs)
    with _figure(path, inputs, (5.6, 5.2)) as ax:
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC = 0.5)")
        aucs = []
        for name, score, positive in curves:
            n_positive = int(positive.sum())
            if n_positive == 0 or n_positive == len(positive):
                missing = "positives" if n_positive == 0 else "negatives"
                ax.plot([], [], linestyle="none", label=f"{name}: skipped (no {missing})")
                continue
            fpr, tpr, auc = roc_curve(score, positive)
            aucs.append(auc)
            ax.plot(fpr.tolist(), tpr.tolist(), label=f"{name} (AUC = {auc:.3f})")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        note = f"macro AUC = {sum(aucs) / len(aucs):.3f}" if len(curves) > 1 and aucs else ""
        ax.set_title(_with_title(title, note) if note else title)
        ax.legend(loc="lower right", fontsize="small")
    return path


def _number(row: int, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ShapeError(f"history row {row}: {key!r} is not a number ({value!r})")
    return float(value)


def plot_history(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike[str],
    title: str = "",
    best_epoch: int | None = None,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """The per-epoch training history (legokit's trainer rows): losses on the left axis, the first other metric on
    the right, the best epoch marked; shows whether training converged or overfitted."""
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence) or not history:
        raise ShapeError("history: expected a non-empty list of per-epoch rows")
    keys: list[str] = []
    for row, entry in enumerate(history):
        if not isinstance(entry, Mapping) or "epoch" not in entry:
            raise ShapeError(f"history row {row}: expected a mapping with an 'epoch' key")
        keys += [key for key in entry if key not in keys]
    losses = [key for key in keys if key != "epoch" and "loss" in key]
    metrics = [key for key in keys if key != "epoch" and "loss" not in key]
    if not losses and not metrics:
        raise ShapeError("history: no loss or metric to plot besides 'epoch'")

    def column(key: str) -> list[float]:
        return [_number(row, key, entry.get(key, math.nan)) for row, entry in enumerate(history)]

    epochs = column("epoch")
    path, inputs = _prepare_output(path, inputs)
    with _figure(path, inputs, (6.4, 4.4)) as ax:
        marker = "o" if len(epochs) <= 30 else None
        handles = [ax.plot(epochs, column(key), marker=marker, markersize=3, label=key)[0] for key in losses]
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        right = ax.twinx() if metrics else None
        if right is not None:
            handles += right.plot(
                epochs, column(metrics[0]), marker=marker, markersize=3, color=f"C{len(losses)}", label=metrics[0]
            )
            right.set_ylabel(metrics[0])
        if best_epoch is not None:
            if float(best_epoch) in epochs:
                handles.append(ax.axvline(best_epoch, linestyle=":", color="0.3", label=f"best epoch {best_epoch}"))
            else:
                handles += ax.plot([], [], linestyle="none", label=f"best epoch {best_epoch}: not in the history")
        top = right if right is not None else ax  # the legend below the axes drawn last: no line of either crosses it
        top.legend(
            handles=handles,
            labels=[h.get_label() for h in handles],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncol=min(len(handles), 4),
            fontsize="small",
            frameon=False,
        )
        if title:
            ax.set_title(title)
    return path


def plot_task(
    task: TaskSpec,
    logits: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    title: str = "",
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Path:
    """The figure that fits a task: Kaplan-Meier curves by predicted risk group (survival, with a calibration panel
    when `calibration` gives predicted S(t) at horizons), ROC curves (binary, multiclass); multilabel tasks have
    none yet."""
    if task.kind == "survival":
        return plot_survival(
            risk_from_logits(logits), targets["time"], targets["event"], path, title, inputs=inputs,
            calibration=calibration,
        )  # fmt: skip
    if task.kind in ("binary", "multiclass"):
        probabilities = torch.sigmoid(logits[:, 0]) if task.kind == "binary" else torch.softmax(logits, dim=1)
        return plot_roc(probabilities, targets["label"], path, title, inputs=inputs)
    raise ConfigError(f"--plot draws survival and classification results; a {task} task has no plot yet")
