"""One NAFLD seed end to end through the CLI, timed: write the landmark folder, train the table block and the labs
block (`blocks/nafld-*.yaml`), merge them, fuse them (stack, 2 epochs), and evaluate both on the test split. Also
times reading the folder as each of these commands does, to show what share data loading takes. Run it alone: it
measures wall time.

    python -m benchmarks.nafld_end_to_end [--seed 0] [--json nafld_end_to_end.json] [--epochs N]   # N: a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legokit.cli.commands import main as legokit
from legokit.data.folder import modality_shape
from legokit.data.nafld import write_nafld
from legokit.data.training import SplitData
from legokit.tasks import TaskSpec

BLOCKS = Path(__file__).resolve().parent.parent / "blocks"


def load_seconds(folder: Path, seed: int) -> float:
    """Reading the folder once as a command does: labels, the split, every table row and every labs file."""
    began = time.perf_counter()
    data = SplitData.load(
        folder, {m: modality_shape(folder, m) for m in ("table", "labs")}, TaskSpec("survival", 4), seed
    )
    data.folder.batch(data.labels.ids)
    return time.perf_counter() - began


def _written(folder: Path) -> int:
    """Write the landmark folder; 0, as a command that succeeded."""
    write_nafld(folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the timings and metrics here")
    parser.add_argument("--epochs", type=int, help="train the blocks for this many epochs at most (a smoke run)")
    args = parser.parse_args(argv)
    console = Console()
    seconds: dict[str, float] = {}
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "nafld"
        seed = ["--seed", str(args.seed)]
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        steps = {
            "write the folder": lambda: _written(data),
            "train table block": lambda: legokit(
                [
                    "train",
                    "-q",
                    str(data),
                    "--spec",
                    str(BLOCKS / "nafld-table.yaml"),
                    *seed,
                    *epochs,
                    "-o",
                    str(work / "table.st"),
                ]
            ),
            "train labs block": lambda: legokit(
                [
                    "train",
                    "-q",
                    str(data),
                    "--spec",
                    str(BLOCKS / "nafld-labs.yaml"),
                    *seed,
                    *epochs,
                    "-o",
                    str(work / "labs.st"),
                ]
            ),
            "merge": lambda: legokit(
                ["merge", "-q", str(work / "table.st"), str(work / "labs.st"), "-o", str(work / "merged.st")]
            ),
            "fuse (stack)": lambda: legokit(
                [
                    "fuse",
                    "-q",
                    str(work / "table.st"),
                    str(work / "labs.st"),
                    "--mode",
                    "stack",
                    "--data",
                    str(data),
                    *seed,
                    "-o",
                    str(work / "fused.st"),
                ]
            ),
            "eval merged": lambda: legokit(
                ["eval", "-q", str(work / "merged.st"), str(data), "--json", str(work / "merged.json")]
            ),
            "eval fused": lambda: legokit(
                ["eval", "-q", str(work / "fused.st"), str(data), "--json", str(work / "fused.json")]
            ),
        }
        for name, step in steps.items():
            began = time.perf_counter()
            code = step()
            seconds[name] = time.perf_counter() - began
            if code not in (None, 0):
                console.print(f"[red]{name} failed (exit {code})")
                return 1
        for name in ("merged", "fused"):
            found = json.loads((work / f"{name}.json").read_text())
            metrics[name] = found.get("c_index", found.get("metrics", {}).get("c_index"))
        loading = load_seconds(data, args.seed)
    total = sum(seconds.values())
    readers = 5  # train x2, fuse, eval x2 read the folder
    table = Table(title=f"NAFLD, seed {args.seed}, end to end through the CLI: {total:.0f} s")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, value in seconds.items():
        table.add_row(name, f"{value:.1f}")
    console.print(table)
    share = (seconds["write the folder"] + readers * loading) / total
    console.print(
        f"reading the folder once: {loading:.1f} s; writing it plus {readers} reads: {share:.1%} of the total"
    )
    console.print(f"test c-index: merged {metrics['merged']}, fused {metrics['fused']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "seconds": seconds,
                    "total": total,
                    "load_once": loading,
                    "data_share": share,
                    "c_index": metrics,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
