"""`legokit merge --calibrate-on DATA`: LegoMerge of block files, then the merged model recalibrated on the
validation split of a labelled folder before its file is written (the streamed merge runs twice: once to a
temporary file the calibration runs on, once to the output with the calibration recorded)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from legokit.artifacts.files import load
from legokit.artifacts.merging import merge_files
from legokit.cache import TokenCache, encoded_once
from legokit.nn.spectral import DEFAULT_PHASE
from legokit.survival.calibration import Calibration
from legokit.training.calibrating import calibrate_on
from legokit.training.workflows import labelled_data, training_seed_of


def merge_calibrated(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    weights: Sequence[float] | Mapping[str, float] | str | None = None,
    phase: str = DEFAULT_PHASE,
    cache: TokenCache | bool | None = True,
) -> tuple[Path, Calibration]:
    """Merge `paths` into `output`, calibrated on `data_dir`'s validation split (the blocks' training split);
    nothing is written to `output` when the calibration fails."""
    with tempfile.TemporaryDirectory(prefix="legokit-merge-") as folder:
        draft = merge_files(paths, Path(folder) / "merged.st", weights, phase)
        model = load(draft)
        seed = training_seed_of(model)
        data, _, modalities = labelled_data(model, data_dir, seed)
        ids = data.ids("val", modalities)
        with encoded_once(model, data, ids, TokenCache.resolve(cache)):
            calibration = calibrate_on(model, data, modalities, seed)
    written = merge_files(paths, output, weights, phase, {"calibration": calibration.to_record()})
    return written, calibration
