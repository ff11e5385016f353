"""Prediction tasks a block can carry: their spec, the size of their head output, and the parsing of `kind:N`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from legokit.errors import ConfigError
from legokit.survival.curves import time_labels
from legokit.survival.outputs import SurvivalOutputs

TASK_KINDS: tuple[str, ...] = ("survival", "multiclass", "binary", "multilabel")


MAX_OUTPUTS = 100_000


@dataclass(frozen=True)
class TaskSpec:
    """A task: `survival` (discrete hazards over n time bins), `multiclass` (n classes), `binary`, `multilabel` (n)."""

    kind: str
    n: int = 1

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown task {self.kind!r}; choose one of {', '.join(TASK_KINDS)}")
        if not isinstance(self.n, int) or isinstance(self.n, bool):
            raise ConfigError(f"task {self.kind}: its size must be an integer, got {self.n!r}")
        if self.kind == "binary" and self.n != 1:
            raise ConfigError("task binary takes no size (it has one output)")
        least = {"survival": 1, "multiclass": 2, "binary": 1, "multilabel": 1}[self.kind]
        if self.n < least:
            raise ConfigError(f"task {self.kind} needs a size of at least {least}, got {self.n}")
        if self.n > MAX_OUTPUTS:
            raise ConfigError(f"task {self.kind}: {self.n:,} outputs; legokit caps a task at {MAX_OUTPUTS:,}")

    @property
    def out_features(self) -> int:
        """Number of logits the head emits: one per time bin, class or label; one for binary."""
        return self.n

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """Read `survival:4`, `multiclass:3`, `binary` or `multilabel:5`."""
        kind, sep, size = text.strip().partition(":")
        if not sep:
            if kind == "binary":
                return cls("binary")
            if kind in TASK_KINDS:
                raise ConfigError(f"task {kind!r} needs a size, e.g. {kind}:4")
            return cls(kind)
        try:
            n = int(size)
        except ValueError as exc:
            raise ConfigError(f"task {text!r}: {size!r} is not an integer") from exc
        return cls(kind, n)

    def __str__(self) -> str:
        return self.kind if self.kind == "binary" else f"{self.kind}:{self.n}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(data["kind"], data.get("n", 1))


def prediction_columns(
    task: TaskSpec,
    logits: torch.Tensor,
    classes: Sequence[str] | None = None,
    survival: SurvivalOutputs | None = None,
    times: Sequence[float] = (),
) -> dict[str, torch.Tensor]:
    """Named per-sample outputs of a task's logits (b, n), for prediction files.

    survival: hazards h = sigmoid(logits) per bin (recalibrated by `survival`'s calibration when it has one),
    survival S_k = prod_{j<=k} (1 - h_j), S(t) at `times` (`survival_at_T` columns), and risk = -sum_k S_k of the
    uncalibrated model (MM-Lego Appendix D; higher risk = earlier event; calibration never changes a ranking);
    multiclass: softmax probabilities; binary and multilabel: sigmoid probabilities (binary: of the positive class).
    Multiclass and multilabel columns are named `prob_<class>` by the model's class names (default 0..K-1).
    """
    names = list(classes) if classes is not None and task.kind != "binary" else [str(k) for k in range(task.n)]
    if task.kind == "survival":
        reading = survival or SurvivalOutputs(None, None)
        hazards = reading.hazards(logits)
        curve = torch.cumprod(1 - hazards, dim=1)
        columns = {"risk": -torch.cumprod(1 - torch.sigmoid(logits), dim=1).sum(dim=1)}
        columns.update({f"hazard_{k + 1}": hazards[:, k] for k in range(task.n)})
        columns.update({f"survival_{k + 1}": curve[:, k] for k in range(task.n)})
        if times:
            at = reading.at(logits, times)
            columns.update({f"survival_at_{label}": at[:, k] for k, label in enumerate(time_labels(times))})
        return columns
    if task.kind == "multiclass":
        probabilities = torch.softmax(logits, dim=1)
        return {f"prob_{name}": probabilities[:, k] for k, name in enumerate(names)}
    probabilities = torch.sigmoid(logits)
    if task.kind == "binary":
        return {"prob": probabilities[:, 0]}
    return {f"prob_{name}": probabilities[:, k] for k, name in enumerate(names)}
