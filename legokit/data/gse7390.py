"""GSE7390 (scikit-survival's `load_breast_cancer`, 198 patients) as a legokit dataset folder: a clinical table
(age, ER, grade, tumour size) and the 76 gene-expression columns, distant-metastasis-free survival as the target.
Needs scikit-survival (the `dev` extra), which ships the data."""

from __future__ import annotations

from pathlib import Path

from legokit.errors import ConfigError
from legokit.io.atomic import write_atomic


def write_gse7390(folder: Path) -> Path:
    """Write the folder (labels.csv, clinical.csv, genes.csv) and return it."""
    try:
        from sksurv.datasets import load_breast_cancer
    except ImportError as exc:
        raise ConfigError("GSE7390 ships with scikit-survival: pip install scikit-survival (or legokit[dev])") from exc

    x, y = load_breast_cancer()
    folder.mkdir(parents=True, exist_ok=True)
    genes = [c for c in x.columns if c.startswith("X")]
    ids = [f"s{i}" for i in range(len(x))]
    er = (x["er"].astype(str) == "positive").astype(float)
    grade = (
        x["grade"]
        .astype(str)
        .map({"intermediate": 2.0, "poorly differentiated": 3.0, "well differentiated": 1.0, "unkown": 2.0})
        .fillna(2.0)
    )
    clinical = ["id,age,er_positive,grade,size"] + [
        f"{i},{a},{e},{g},{s}" for i, a, e, g, s in zip(ids, x["age"], er, grade, x["size"])
    ]
    write_atomic(folder / "clinical.csv", ("\n".join(clinical) + "\n").encode())
    rows = ["id," + ",".join(genes)] + [
        f"{i}," + ",".join(f"{v:.6g}" for v in x.loc[k, genes]) for k, i in enumerate(ids)
    ]
    write_atomic(folder / "genes.csv", ("\n".join(rows) + "\n").encode())
    labels = ["id,time,event"] + [f"{i},{t:g},{int(e)}" for i, (e, t) in zip(ids, y)]
    write_atomic(folder / "labels.csv", ("\n".join(labels) + "\n").encode())
    return folder
