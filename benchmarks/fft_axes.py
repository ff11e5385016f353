"""Which FFT axes and phase rule serve LegoMerge best, measured on the bundled PBC data (DESIGN.md asks for this).

For each FFT setting ("both": 2-D over the latent, as the paper writes it; "channels": 1-D over latent channels, as
its public code does), over 5 seeds: the two demo blocks, their LegoMerge with the paper's and the circular phase
mean, and LegoFuse (stack, 2 epochs). Prints test c-index mean ± s.d. and writes JSON.

    python -m benchmarks.fft_axes [--seeds 5] [--json fft_axes.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legokit.compose.merge import merge
from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.training import SplitData
from legokit.demo import default_spec
from legokit.training.trainer import TrainConfig, evaluate
from legokit.training.workflows import fuse_blocks, train_block

COLUMNS = ("labs block", "visits block*", "merge (paper phase)", "merge (circular phase)", "fuse (stack)")


def measure(folder: Path, axes: str, seeds: int) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {c: [] for c in COLUMNS}
    shapes = {m: modality_shape(folder, m) for m in ("labs", "visits")}
    for seed in range(seeds):
        labs, _ = train_block(folder, default_spec("labs").override(seed=seed, fft_axes=axes), progress=False)
        visits, _ = train_block(folder, default_spec("visits").override(seed=seed, fft_axes=axes), progress=False)
        data = SplitData.load(folder, shapes, labs.config.task, seed)
        test, task = data.ids("test"), labs.config.task
        with_visits = data.ids("test", ["visits"])
        scores["labs block"].append(evaluate(labs, data, test, task)["c_index"])
        scores["visits block*"].append(evaluate(visits, data, with_visits, task)["c_index"])
        for phase in ("paper", "circular"):
            scores[f"merge ({phase} phase)"].append(
                evaluate(merge([labs, visits], phase=phase), data, test, task)["c_index"]
            )
        _, result = fuse_blocks([labs, visits], folder, "stack", TrainConfig(epochs=2, seed=seed), progress=False)
        scores["fuse (stack)"].append(result.test["c_index"])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_pbc(Path(tmp))
        for axes in ("both", "channels"):
            results[axes] = measure(Path(tmp), axes, args.seeds)
    table = Table(title=f"PBC test c-index, mean ± s.d. over {args.seeds} seeds (* test patients with visits)")
    table.add_column("fft axes")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for axes, scores in results.items():
        table.add_row(axes, *(f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" for v in scores.values()))
    Console(width=160).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
