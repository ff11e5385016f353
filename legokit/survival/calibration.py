"""Recalibrating a survival model's hazards on a validation split. The calibrated hazard of bin k is
h'_k = sigmoid(a * l_k + c_k) for the model's logit l_k: one offset shared by every bin ("shift", a = 1), one
offset and one positive scale ("affine"), per-bin offsets c_k ("offsets", a = 1), per-bin offsets and a scale
("scaled"), or nothing ("none"). A method is a candidate when the split holds at least 10 events per number it
fits (the events-per-variable rule); each candidate is fitted by maximum likelihood, and the one with the best
5-fold cross-validated likelihood within the split is chosen (the simpler one on a tie). In that likelihood a
sample censored inside bin k survives the share of the bin it was followed for (constant hazard within a bin, as
`legokit.survival.curves` reads the curve), so the fit targets the Kaplan-Meier curve. The risk score, and so every
ranking and c-index, is the uncalibrated model's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from legokit.errors import ConfigError
from legokit.survival.curves import knots

METHODS = ("none", "shift", "affine", "offsets", "scaled")
EVENTS_PER_PARAMETER = 10  # a method is a candidate only when the split holds this many events per fitted number
FOLDS = 5
RIDGE = 1e-3  # a pull of the offsets (and log scale) towards the uncalibrated model: a bin with no events stays put


@dataclass(frozen=True)
class Calibration:
    """A fitted recalibration: `method`, its per-bin `offsets` c_k and `scale` a, the training data's last
    follow-up `follow_up` (where the open last bin is read to end), and the split it was fitted on."""

    method: str
    offsets: tuple[float, ...]
    scale: float
    follow_up: float
    split: str
    samples: int
    events: int

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {str(self.method)[:40]!r}")
        if not isinstance(self.offsets, tuple) or not all(_finite(c) for c in self.offsets) or not self.offsets:
            raise ConfigError(f"calibration offsets must be a non-empty list of numbers within +-{LIMIT:g}")
        if not _finite(self.scale) or self.scale <= 0:
            raise ConfigError(
                f"calibration scale must be a positive number up to {LIMIT:g}, got {str(self.scale)[:40]}"
            )
        if not _finite(self.follow_up, MAX_TIME) or self.follow_up < 0:
            raise ConfigError(
                f"calibration follow-up must be a time from 0 to {MAX_TIME:g}, got {str(self.follow_up)[:40]}"
            )
        if not isinstance(self.split, str) or not 0 < len(self.split) <= 40 or not self.split.isascii():
            raise ConfigError("calibration split must be a short ASCII name")
        if not self.split.replace("+", "").isalnum():
            raise ConfigError(f"calibration split must be letters and digits, got {self.split!r}")
        for name in ("samples", "events"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"calibration {name} must be a count, got {str(value)[:40]}")

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated logits a * l + c (b, n)."""
        if logits.shape[-1] != len(self.offsets):
            raise ConfigError(f"a calibration of {len(self.offsets)} bins cannot apply to {logits.shape[-1]} logits")
        offsets = torch.tensor(self.offsets, dtype=logits.dtype, device=logits.device)
        return self.scale * logits + offsets

    def summary(self) -> str:
        """One short line for a person: the method and what it was fitted on."""
        return (
            f"{self.method}, from {self.samples} {self.split} samples ({self.events} events); follow-up "
            f"{self.follow_up:g}"
        )

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "offsets": list(self.offsets)}

    @classmethod
    def from_record(cls, record: Any) -> Calibration:
        """A calibration from its record in a model's provenance; a malformed one is a one-line ConfigError."""
        if not isinstance(record, Mapping):
            raise ConfigError(f"a calibration record must be a mapping, got {type(record).__name__}")
        fields = {"method", "offsets", "scale", "follow_up", "split", "samples", "events"}
        if set(record) != fields:
            raise ConfigError(f"a calibration record holds {', '.join(sorted(fields))}, got {sorted(record)!r:.200}")
        offsets = record["offsets"]
        if not isinstance(offsets, list) or len(offsets) > 10_000:
            raise ConfigError("calibration offsets must be a list of at most 10,000 numbers")
        return cls(**{**record, "offsets": tuple(offsets)})

    @classmethod
    def for_task(cls, record: Any, kind: str, bins: int) -> Calibration:
        """`from_record`, and the record fits a survival task of `bins` bins; else a one-line ConfigError."""
        calibration = cls.from_record(record)
        if kind != "survival" or bins != len(calibration.offsets):
            raise ConfigError(
                f"a calibration of {len(calibration.offsets)} bins does not fit the model's task ({kind}, {bins} "
                "outputs)"
            )
        return calibration


LIMIT = 1e3  # the largest |offset| and scale a record may hold: sigmoid saturates long before; float32 never overflows
MAX_TIME = 1e12  # the largest follow-up a record may hold


def _finite(value: Any, limit: float = LIMIT) -> bool:
    """A real number (no bool) within +-`limit`: finite in float32 too, whatever its type (a huge int included)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= limit
    except OverflowError:
        return False


def _bins_and_shares(time: torch.Tensor, edges: Sequence[float], follow_up: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each time's bin (0 .. n-1) and the share of that bin it lies past (0 at the bin's start, 1 at its end)."""
    at = knots(edges, follow_up)
    time = time.double()
    bins = torch.searchsorted(torch.tensor(list(edges), dtype=torch.float64), time, right=True)
    start, end = at[bins], at[bins + 1]
    share = torch.where(end > start, (time - start) / (end - start).clamp_min(1e-300), torch.ones_like(time))
    return bins, share.clamp(0, 1)


def censored_nll(logits: torch.Tensor, bins: torch.Tensor, share: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of discrete-time hazards: an event in bin k costs -log S_{k-1} - log h_k; a
    censoring a share w into bin k costs -log S_{k-1} - w log(1 - h_k)."""
    log_h, log_keep = F.logsigmoid(logits), F.logsigmoid(-logits)
    before = torch.cat([torch.zeros_like(log_keep[:, :1]), log_keep.cumsum(1)], dim=1).gather(1, bins[:, None])[:, 0]
    at = log_h.gather(1, bins[:, None])[:, 0]
    kept = log_keep.gather(1, bins[:, None])[:, 0]
    event = event.to(logits.dtype)
    return -(before + event * at + (1 - event) * share * kept).mean()


def _fit(
    method: str, logits: torch.Tensor, bins: torch.Tensor, share: torch.Tensor, event: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """(scale, offsets) of `method` at their maximum penalised likelihood on these samples."""
    n = logits.shape[1]
    free = torch.zeros(1 if method in ("shift", "affine") else n, dtype=torch.float64, requires_grad=True)
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=method in ("affine", "scaled"))
    if method == "none":
        return 1.0, torch.zeros(n, dtype=torch.float64)
    params = [free] + ([log_scale] if log_scale.requires_grad else [])
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = censored_nll(log_scale.exp() * logits + free.expand(n), bins, share, event)
        loss = loss + RIDGE * (free.square().sum() + log_scale.square())
        loss.backward()
        return loss

    optimizer.step(objective)
    return float(log_scale.detach().exp()), free.detach().expand(n).clone()


def parameters(method: str, bins: int) -> int:
    """How many numbers `method` fits for a model of `bins` bins."""
    return {"none": 0, "shift": 1, "affine": 2, "offsets": bins, "scaled": bins + 1}[method]


def candidates(bins: int, events: int) -> list[str]:
    """The methods a split of `events` events can support: EVENTS_PER_PARAMETER events per fitted number."""
    return [m for m in METHODS if events >= EVENTS_PER_PARAMETER * parameters(m, bins)]


def fit_calibration(
    logits: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    edges: Sequence[float],
    follow_up: float,
    split: str = "val",
    seed: int = 0,
) -> Calibration:
    """The recalibration of a model's logits (b, n) on a split's times and events: each method's cross-validated
    likelihood decides, then the chosen one is fitted on the whole split. No event in the split: a ConfigError."""
    logits, event = logits.detach().double().cpu(), event.bool().cpu()
    if not bool(event.any()):
        raise ConfigError(f"cannot calibrate on the {split} split: its {len(event)} samples hold no event")
    if candidates(logits.shape[1], int(event.sum())) == ["none"]:
        raise ConfigError(
            f"cannot calibrate on the {split} split: {int(event.sum())} events, and even one offset needs "
            f"{EVENTS_PER_PARAMETER}"
        )
    bins, share = _bins_and_shares(time.cpu(), edges, follow_up)
    folds = torch.randperm(len(event), generator=torch.Generator().manual_seed(seed)) % FOLDS
    held: dict[str, float] = {}
    for method in candidates(logits.shape[1], int(event.sum())):
        total = 0.0
        for fold in range(min(FOLDS, len(event))):
            out, kept = folds == fold, folds != fold
            scale, offsets = _fit(method, logits[kept], bins[kept], share[kept], event[kept])
            total += float(censored_nll(scale * logits[out] + offsets, bins[out], share[out], event[out])) * int(
                out.sum()
            )
        held[method] = total
    method = min(held, key=lambda m: (round(held[m], 9), METHODS.index(m)))
    scale, offsets = _fit(method, logits, bins, share, event)
    return Calibration(
        method, tuple(float(c) for c in offsets), scale, float(follow_up), split, len(event), int(event.sum())
    )
