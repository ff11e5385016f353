"""The bundled real dataset: Mayo Clinic PBC (R's survival `pbc` and `pbcseq`), as a landmark dataset folder.

No leakage by construction: at a landmark (default 1 year after registration) only patients alive and still
followed are kept, survival is counted from the landmark, and the visit sequence holds only visits up to it.
Modalities: `labs.csv` (registration table, 418 patients minus those lost in the first year) and `visits/`
(one token per visit, trial patients only, so the others lack it: a natural missing modality). Skewed laboratory
values are log-transformed; missing values (never the outcome) are filled with the cohort's median of that
column, a feature-only step. The blocks standardise their inputs from the training split themselves.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from legokit.io.atomic import write_atomic

LOG = {"bili", "chol", "copper", "alk.phos", "ast", "trig", "protime"}
SIGNS = ["ascites", "hepato", "spiders", "edema"]
LABS = ["bili", "chol", "albumin", "copper", "alk.phos", "ast", "trig", "platelet", "protime"]
VISIT_LABS = ["bili", "chol", "albumin", "alk.phos", "ast", "platelet", "protime"]


def _rows(name: str) -> list[dict[str, str]]:
    source = resources.files("legokit.data").joinpath("pbc").joinpath(name)
    # newline= is valid at runtime (a pathlib or zipfile Path on 3.10+); the stubs' Traversable.open omits it
    with source.open(newline="", encoding="utf-8") as handle:  # type: ignore[call-overload]
        return list(csv.DictReader(handle))


def _value(row: dict[str, str], column: str) -> float | None:
    text = row[column].strip()
    if text in ("", "NA"):
        return None
    value = float(text)
    return math.log(value) if column in LOG else value


def _impute(table: list[list[float | None]]) -> list[list[float]]:
    """Fill each column's missing values with that column's median."""
    columns = list(zip(*table))
    medians = [statistics.median([v for v in col if v is not None]) for col in columns]
    return [[m if v is None else v for v, m in zip(row, medians)] for row in table]


def write_pbc(folder: str | os.PathLike[str], landmark_days: float = 365.0) -> dict[str, int]:
    """Write the PBC landmark dataset folder (labels.csv, labs.csv, visits/ID.safetensors); returns counts."""
    folder = Path(folder)
    (folder / "visits").mkdir(parents=True, exist_ok=True)
    patients = [r for r in _rows("pbc.csv") if float(r["time"]) > landmark_days]
    kept = {r["id"] for r in patients}
    labs_columns = ["age", "male", "in_trial", *SIGNS, *LABS, "stage"]
    table = _impute(
        [
            [
                float(r["age"]),
                1.0 if r["sex"] == "m" else 0.0,
                0.0 if r["trt"] in ("", "NA") else 1.0,
                *(_value(r, c) for c in SIGNS + LABS),
                _value(r, "stage"),
            ]
            for r in patients
        ]
    )
    labels = ["id,time,event"] + [
        f"{r['id']},{float(r['time']) - landmark_days:g},{1 if r['status'] == '2' else 0}" for r in patients
    ]
    write_atomic(folder / "labels.csv", ("\n".join(labels) + "\n").encode())
    lines = [",".join(["id", *labs_columns])] + [
        ",".join([r["id"], *(f"{v:.6g}" for v in row)]) for r, row in zip(patients, table)
    ]
    write_atomic(folder / "labs.csv", ("\n".join(lines) + "\n").encode())
    visits = [v for v in _rows("pbcseq.csv") if v["id"] in kept and float(v["day"]) <= landmark_days]
    visit_table = _impute(
        [
            [
                (landmark_days - float(v["day"])) / 365.25,
                *(_value(v, c) for c in SIGNS + VISIT_LABS),
                _value(v, "stage"),
            ]
            for v in visits
        ]
    )
    by_patient: dict[str, list[list[float]]] = {}
    for visit, row in zip(visits, visit_table):
        by_patient.setdefault(visit["id"], []).append(row)
    for patient, rows in by_patient.items():
        write_atomic(
            folder / "visits" / f"{patient}.safetensors",
            safetensors_bytes({"x": torch.tensor(rows, dtype=torch.float32)}),
        )
    readme = (
        "PBC landmark dataset written by legokit.data.bundled.write_pbc "
        f"(landmark {landmark_days:g} days). Source: R survival package (pbc, pbcseq); "
        "see legokit/data/pbc/SOURCE.md.\n"
        "visits/ID.safetensors: x (visits, features) with features years_before_landmark, "
        f"{', '.join(SIGNS + VISIT_LABS)}, "
        "stage (log of bili, chol, alk.phos, ast, protime).\n"
    )
    write_atomic(folder / "README.txt", readme.encode())
    return {
        "patients": len(patients),
        "events": sum(r["status"] == "2" for r in patients),
        "with_visits": len(by_patient),
        "visits": len(visits),
    }
