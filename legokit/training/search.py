"""A budgeted search of training settings on the validation split (`legokit train --search N`): the settings given
first, then N - 1 distinct points of a small grid drawn at random (seeded by the run's seed, so every trial trains and
validates on the same split); the trial with the best validation metric is kept, and the table of every trial goes
into the block's provenance. Test metrics play no part in the choice and are not in the table."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from legokit.errors import ConfigError
from legokit.progress import log
from legokit.training.trainer import TrainConfig, TrainResult

# the grid a search draws from: TrainConfig fields and the values each may take (27 points). Trials are ranked by
# the validation metric of the epoch each kept, so a setting that only changes how many epochs are looked at (patience,
# epochs, smoothing) would win by looking more often: none is searched
SEARCH_SPACE: Mapping[str, tuple[float | int, ...]] = {
    "lr": (3e-4, 1e-3, 3e-3),
    "weight_decay": (0.01, 0.1, 0.3),
    "batch_size": (16, 32, 64),
}
MOST_TRIALS = math.prod(len(values) for values in SEARCH_SPACE.values()) + 1  # every grid point and the given one


@dataclass(frozen=True)
class Trial:
    """One trial: its settings (the searched fields), the selected epoch, epochs run and validation metrics."""

    settings: dict[str, float | int]
    best_epoch: int
    epochs_run: int
    val: dict[str, float]

    def row(self) -> dict[str, Any]:
        return {**self.settings, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "val": self.val}


def check_trials(trials: int) -> None:
    """Refuse a search budget that is not a whole number from 1 to the grid's size plus one."""
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MOST_TRIALS:
        raise ConfigError(f"--search takes 1 to {MOST_TRIALS} trials (the grid's points and the given settings)")


def trial_configs(base: TrainConfig, trials: int) -> list[TrainConfig]:
    """The base settings, then `trials` - 1 distinct grid points other than the base, drawn with `base.seed`."""
    check_trials(trials)
    given = tuple(getattr(base, name) for name in SEARCH_SPACE)
    grid = [point for point in itertools.product(*SEARCH_SPACE.values()) if point != given]
    drawn = random.Random(base.seed).sample(grid, min(trials - 1, len(grid)))
    settings: list[dict[str, Any]] = [dict(zip(SEARCH_SPACE, point)) for point in drawn]
    return [base] + [replace(base, **chosen) for chosen in settings]


def _score(result: TrainResult, primary: str) -> float:
    value = result.val.get(primary, math.nan)
    return value if isinstance(value, float) and math.isfinite(value) else -math.inf


def search(
    train: Callable[[TrainConfig], tuple[nn.Module, TrainResult]],
    base: TrainConfig,
    trials: int,
    primary: str,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train one model per trial config (`trial_configs`) and keep the best by the validation `primary` metric (the
    earlier trial on a tie; an undefined metric ranks last). Returns it, its result, and the search record: the space,
    every trial's row and the chosen trial's index."""
    configs = trial_configs(base, trials)
    started = time.perf_counter()
    kept: tuple[float, int, nn.Module, TrainResult] | None = None
    rows = []
    for index, config in enumerate(configs):
        model, result = train(config)
        trial = Trial(
            {name: getattr(config, name) for name in SEARCH_SPACE}, result.best_epoch, len(result.history), result.val
        )
        rows.append(trial.row())
        score = _score(result, primary)
        log.info("search trial %d/%d %s: val %s %.4f", index + 1, len(configs), trial.settings, primary, score)
        if kept is None or score > kept[0]:
            kept = (score, index, model, result)
    if kept is None:  # trial_configs returns at least the base settings
        raise ConfigError("--search ran no trial")
    _, chosen, model, result = kept
    record = {
        "space": {k: list(v) for k, v in SEARCH_SPACE.items()},
        "trials": rows,
        "chosen": chosen,
        "seconds": time.perf_counter() - started,
    }
    return model, result, record
