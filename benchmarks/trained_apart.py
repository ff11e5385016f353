"""Blocks trained apart, end to end through the CLI: two sites with disjoint patients train one block each (site A in
days, site B in years with its table columns in another order), site B on site A's bins (`--bins-from`); the merge
is scored on a third, held-out set whose columns are in yet another order. The same blocks without shared bins must
be refused. For reference: the two blocks trained together on both sites' patients (one folder, days) and merged.

    python -m benchmarks.trained_apart [--datasets pbc actg175] [--seeds 5] [--json trained_apart.json]

Prints test c-index mean ± s.d. over seeds, the paired difference merge - site A's block per seed, and how often the
merge without shared bins was refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legokit.cli.commands import main as legokit
from legokit.data.actg175 import write_actg175
from legokit.data.bundled import write_pbc

DAYS_PER_YEAR = 365.25
# cohort: how to write it, site A's modality, site B's modality, and the spec of each (None: the default snn)
COHORTS: Mapping[str, tuple[Callable[[Path], object], str, str, dict[str, str]]] = {
    "pbc": (write_pbc, "labs", "visits", {"labs": "blocks/labs.yaml", "visits": "blocks/visits.yaml"}),
    "actg175": (write_actg175, "clinical", "immune", {}),
}
ROWS = (
    "site A block",
    "site B block",
    "merge, trained apart (shared bins)",
    "merge - site A block (paired)",
    "merge, trained together (reference)",
)


def _table(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], {row[0]: row for row in rows[1:]}


def _write_table(
    path: Path, header: Sequence[str], rows: Mapping[str, list[str]], ids: Sequence[str], order: Sequence[int]
) -> None:
    """A table of these ids with its feature columns in `order` (the id column first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([header[0], *(header[1 + k] for k in order)])
        for sample in ids:
            if sample in rows:
                writer.writerow([sample, *(rows[sample][1 + k] for k in order)])


def _write_site(
    source: Path,
    target: Path,
    modalities: Sequence[str],
    ids: Sequence[str],
    years: bool,
    shuffle: random.Random | None,
    test_only: bool = False,
) -> None:
    """A site's folder: labels (days, or years), its modalities for its patients, tables' columns shuffled."""
    header, labels = _table(source / "labels.csv")
    target.mkdir(parents=True)
    with (target / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for sample in ids:
            row = list(labels[sample])
            if years:
                row[header.index("time")] = f"{float(row[header.index('time')]) / DAYS_PER_YEAR:.10g}"
            writer.writerow(row)
    for modality in modalities:
        if (source / f"{modality}.csv").exists():
            columns, rows = _table(source / f"{modality}.csv")
            order = list(range(len(columns) - 1))
            if shuffle is not None:
                shuffle.shuffle(order)
            _write_table(target / f"{modality}.csv", columns, rows, ids, order)
        else:
            (target / modality).mkdir()
            for sample in ids:
                file = source / modality / f"{sample}.safetensors"
                if file.exists():
                    shutil.copyfile(file, target / modality / file.name)
    if test_only:
        (target / "splits.csv").write_text("id,split\n" + "".join(f"{i},test\n" for i in ids), encoding="utf-8")


def _cli(command: str, *args: str) -> int:
    return legokit([command, "-q", *args])


def _score(model: Path, data: Path, out: Path) -> float:
    code = _cli("eval", str(model), str(data), "--split", "test", "--json", str(out))
    if code != 0:
        raise SystemExit(f"legokit eval {model} {data} exited {code}")
    return float(json.loads(out.read_text())["c_index"])


def run_seed(cohort: str, seed: int, work: Path) -> dict[str, float | bool]:
    write, first, second, specs = COHORTS[cohort]
    source = work / "cohort"
    if not source.exists():
        write(source)
    _, labels = _table(source / "labels.csv")
    ids = sorted(labels)
    random.Random(seed).shuffle(ids)
    held = ids[: round(0.15 * len(ids))]
    rest = ids[len(held) :]
    site_a, site_b = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    run = work / f"seed-{seed}"
    shuffle = random.Random(seed + 7)
    _write_site(source, run / "A", [first], site_a, years=False, shuffle=None)
    _write_site(source, run / "B", [second], site_b, years=True, shuffle=shuffle)
    _write_site(source, run / "C", [first, second], held, years=False, shuffle=shuffle, test_only=True)
    _write_site(source, run / "AB", [first, second], rest, years=False, shuffle=None)

    def train(folder: str, modality: str, output: str, *extra: str) -> Path:
        spec = ["--spec", specs[modality]] if modality in specs else ["--modality", modality]
        code = _cli("train", str(run / folder), *spec, "--seed", str(seed), "-o", str(run / output), *extra)
        if code != 0:
            raise SystemExit(f"legokit train {folder} {modality} exited {code}")
        return run / output

    a = train("A", first, "a.st", "--time-unit", "days")
    b = train("B", second, "b.st", "--bins-from", str(a), "--time-unit", "years")
    own = train("B", second, "b-own.st", "--time-unit", "years")
    refused = _cli("merge", str(a), str(own), "-o", str(run / "refused.st")) != 0 and not (run / "refused.st").exists()
    if _cli("merge", str(a), str(b), "-o", str(run / "merged.st")) != 0:
        raise SystemExit("merge of blocks with shared bins failed")
    together_a = train("AB", first, "ab-a.st", "--time-unit", "days")
    together_b = train("AB", second, "ab-b.st", "--time-unit", "days")
    if _cli("merge", str(together_a), str(together_b), "-o", str(run / "together.st")) != 0:
        raise SystemExit("merge of blocks trained together failed")
    scores = {
        "site A block": _score(a, run / "C", run / "a.json"),
        "site B block": _score(b, run / "C", run / "b.json"),
        "merge, trained apart (shared bins)": _score(run / "merged.st", run / "C", run / "m.json"),
        "merge, trained together (reference)": _score(run / "together.st", run / "C", run / "t.json"),
    }
    scores["merge - site A block (paired)"] = scores["merge, trained apart (shared bins)"] - scores["site A block"]
    return {
        **scores,
        "refused without shared bins": refused,
        "held-out patients": len(held),
        "site A patients": len(site_a),
        "site B patients": len(site_b),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", help="write per-seed results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    results: dict[str, list[dict[str, float | bool]]] = {}
    for cohort in args.datasets:
        with tempfile.TemporaryDirectory() as folder:
            for seed in range(args.seeds):
                console.log(f"{cohort}: seed {seed}")
                results.setdefault(cohort, []).append(run_seed(cohort, seed, Path(folder)))
    table = Table(title=f"Blocks trained apart: test c-index on a held-out set, mean ± s.d. over {args.seeds} seeds")
    table.add_column("model")
    for cohort in results:
        a, b = COHORTS[cohort][1], COHORTS[cohort][2]
        table.add_column(f"{cohort} (A: {a}, days; B: {b}, years)")
    for row in ROWS:
        cells = []
        for seeds in results.values():
            values = [float(s[row]) for s in seeds]
            mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:+.3f} ± {sd:.3f}" if "paired" in row else f"{mean:.3f} ± {sd:.3f}")
        table.add_row(row, *cells)
    table.add_row(
        "merge without shared bins refused",
        *(
            f"{sum(bool(s['refused without shared bins']) for s in seeds)} of {len(seeds)}"
            for seeds in results.values()
        ),
    )
    table.add_row(
        "patients: site A / site B / held out",
        *(
            f"{seeds[0]['site A patients']} / {seeds[0]['site B patients']} / {seeds[0]['held-out patients']}"
            for seeds in results.values()
        ),
    )
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
