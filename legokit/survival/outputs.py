"""How a survival model's logits are read: its hazards and survival at the end of each bin, recalibrated when it
carries a calibration, and S(t) at any times (`legokit.survival.curves`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from legokit.errors import ConfigError
from legokit.survival.calibration import Calibration
from legokit.survival.curves import survival_at


@dataclass(frozen=True)
class SurvivalOutputs:
    """A survival model's inner bin `edges` (None: not recorded) and its `calibration` (None: uncalibrated)."""

    edges: tuple[float, ...] | None
    calibration: Calibration | None

    def hazards(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-bin hazards (b, n), recalibrated when the model carries a calibration."""
        return torch.sigmoid(self.calibration.apply(logits) if self.calibration is not None else logits)

    def survival(self, logits: torch.Tensor) -> torch.Tensor:
        """S at the end of each bin (b, n)."""
        return torch.cumprod(1 - self.hazards(logits), dim=1)

    def times_problem(self, times: Sequence[float]) -> tuple[str | None, str | None]:
        """(error, warning) for reading S at `times`: an error when the curve cannot be read there (no bin edges
        recorded, or past the last edge without a recorded follow-up), a warning past the last follow-up."""
        if self.edges is None:
            return "the model records no bin edges (an older file): S(t) cannot be read at --times", None
        last = max(times, default=0.0)
        if self.calibration is None:
            edge = self.edges[-1] if self.edges else 0.0
            if last > edge:
                return (
                    f"--times reach {last:g}, past the last bin edge {edge:g}, and the model records no follow-up "
                    "to read its open last bin to (it is uncalibrated: calibrate it, e.g. merge --calibrate-on DATA)"
                ), None
            return None, None
        if last > self.calibration.follow_up:
            return None, (
                f"--times reach {last:g}, past the training data's last follow-up {self.calibration.follow_up:g}: "
                "S(t) is held at its value there, not extrapolated"
            )
        return None, None

    def at(self, logits: torch.Tensor, times: Sequence[float]) -> torch.Tensor:
        """S(t) (b, len(times)) at `times` (checked with `times_problem` first)."""
        error, _ = self.times_problem(times)
        if error is not None:
            raise ConfigError(error)
        assert self.edges is not None
        follow_up = self.calibration.follow_up if self.calibration is not None else max(self.edges, default=0.0)
        return survival_at(self.survival(logits), self.edges, follow_up, torch.tensor(times, dtype=torch.float64))
