"""ACTG 175 (the HIV treatment trial that lifelines ships as a CSV, 2,139 patients) as a landmark dataset folder:
a clinical table and an immunology table (CD4 and CD8 counts at baseline and at 20 +- 5 weeks), survival from a
25-week landmark (after the week-20 counts) to AIDS, death or a 50% CD4 decline. Needs lifelines (the `dev`
extra) only for its data file: the package is located, never imported.

Columns measured after the landmark (week-96 CD4, its missingness flag, going off treatment) are left out."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

from legokit.errors import ConfigError
from legokit.io.atomic import write_atomic

LANDMARK_DAYS = 175.0
CLINICAL = [
    "age",
    "wtkg",
    "hemo",
    "homo",
    "drugs",
    "karnof",
    "oprior",
    "z30",
    "preanti",
    "race",
    "gender",
    "str2",
    "symptom",
]
ARMS = ["arm_zdv", "arm_zdv_ddi", "arm_zdv_zal", "arm_ddi"]
STRATA = ["strat_naive", "strat_1_52_weeks", "strat_over_52_weeks"]
IMMUNE = ["cd40", "cd420", "cd80", "cd820"]


def actg175_csv() -> Path:
    """Where lifelines keeps ACTG175.csv (found without importing lifelines)."""
    spec = importlib.util.find_spec("lifelines")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ACTG 175 ships with lifelines: pip install lifelines (or legokit[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ACTG175.csv"
    if not path.is_file():
        raise ConfigError(f"{path}: not found in the installed lifelines")
    return path


def write_actg175(folder: Path) -> Path:
    """Write the folder (labels.csv, clinical.csv, immune.csv) and return it."""
    with actg175_csv().open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if float(r["days"]) > LANDMARK_DAYS]
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"p{r['pidnum']}" for r in rows]

    def clinical(r: dict[str, str]) -> list[float]:
        values = [float(r[c]) for c in CLINICAL]
        values[CLINICAL.index("preanti")] = math.log1p(values[CLINICAL.index("preanti")])
        arms = [1.0 if int(r["arms"]) == k else 0.0 for k in range(4)]
        strata = [1.0 if int(r["strat"]) == k else 0.0 for k in (1, 2, 3)]
        return values + arms + strata

    tables = {
        "clinical.csv": (CLINICAL + ARMS + STRATA, [clinical(r) for r in rows]),
        "immune.csv": (IMMUNE, [[math.log1p(float(r[c])) for c in IMMUNE] for r in rows]),
    }
    for name, (columns, values) in tables.items():
        lines = ["id," + ",".join(columns)] + [
            f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in zip(ids, values)
        ]
        write_atomic(folder / name, ("\n".join(lines) + "\n").encode())
    labels = ["id,time,event"] + [
        f"{i},{float(r['days']) - LANDMARK_DAYS:g},{int(r['cens'])}" for i, r in zip(ids, rows)
    ]
    write_atomic(folder / "labels.csv", ("\n".join(labels) + "\n").encode())
    return folder
