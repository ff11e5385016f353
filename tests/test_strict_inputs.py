"""Inputs read by strict rules (issue 31): a sample file is checked from its safetensors header before any tensor
byte is read (fresh processes measure the memory), every number in a user's CSV is read by one ASCII grammar, and
`write_nafld` writes only a new folder."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from legokit import ConfigError
from legokit.contract import number_value, parse_edges
from legokit.data import nafld
from legokit.data import samples as samples_module
from legokit.data.folder import DataError, DatasetFolder, load_bag, modality_shape, read_table
from legokit.data.labels import read_labels
from legokit.errors import WriteError
from legokit.tasks import TaskSpec

ACCEPTED = {"15": 15.0, "-15": -15.0, "1.5": 1.5, "15.": 15.0, ".5": 0.5, "-.5": -0.5, "1e3": 1000.0, "25E-2": 0.25}
ACCEPTED |= {"1.5e+2": 150.0, "007": 7.0, "-0": 0.0}
REFUSED = ["1_5", "\uff11\uff15", "\u0661\u0665", "\xa015", "15\xa0", "+15", " 15", "15 ", "\t15", "\u200b15"]
REFUSED += ["inf", "-inf", "Infinity", "nan", "NA", "0x10", "1e", "e5", "-", ".", "1.2.3", "--1", "1,5", "\u00b2", ""]


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _raw_sample(path: Path, header: dict, data_bytes: int, body: bytes = b"") -> Path:
    """A safetensors file with this header, its data `data_bytes` long: `body`, then a hole (a sparse file)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + body)
        handle.truncate(8 + len(text) + data_bytes)
    return path


# ---- numbers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", sorted(ACCEPTED))
def test_a_number_in_ascii_digits_with_a_leading_minus_point_and_exponent_is_read(text, tmp_path):
    path = _csv(tmp_path / "tab.csv", ["id", "a", "b"], [["p1", text, "1"]])
    assert read_table("tab", path).rows["p1"].tolist() == [ACCEPTED[text], 1.0]


@pytest.mark.parametrize("text", REFUSED)
def test_other_spellings_python_reads_as_numbers_are_one_line_errors_naming_file_row_and_column(text, tmp_path):
    path = _csv(tmp_path / "tab.csv", ["id", "a", "b"], [["p1", "1", "2"], ["p2", "3", text]])
    with pytest.raises(DataError, match=r"tab\.csv: row 3, column b: .*(is not a number|must be imputed)") as caught:
        read_table("tab", path)
    assert "\n" not in str(caught.value)
    assert number_value(text) is None


def test_a_survival_time_of_3_65_is_refused_not_read_as_365(tmp_path):
    labels = _csv(tmp_path / "labels.csv", ["id", "time", "event"], [["p1", "3_65", "1"]])
    with pytest.raises(DataError, match=r"row 2, column time: '3_65' is not a number"):
        read_labels(labels, TaskSpec("survival", 2))
    for event in ("+1", "\uff11", "1\xa0"):
        _csv(labels, ["id", "time", "event"], [["p1", "365", event]])
        with pytest.raises(DataError, match="row 2, column event"):
            read_labels(labels, TaskSpec("survival", 2))


def test_missing_value_spellings_keep_their_meaning_and_their_hint(tmp_path):
    path = _csv(tmp_path / "tab.csv", ["id", "a", "b"], [["p1", "1", "2"], ["p2", "", " "], ["p3", "\xa0", ""]])
    assert set(read_table("tab", path).rows) == {"p1"}  # blank in every feature: the sample lacks the modality
    for text in ("nan", "NA", "inf"):
        _csv(path, ["id", "a", "b"], [["p1", text, "2"]])
        with pytest.raises(DataError, match="missing values must be imputed"):
            read_table("tab", path)
    _csv(path, ["id", "a", "b"], [["p1", "1e999", "2"]])
    with pytest.raises(DataError, match="row 2, column a: '1e999' is out of range"):
        read_table("tab", path)


def test_class_codes_are_numbers_by_the_same_grammar_and_other_spellings_are_names_or_errors(tmp_path):
    path = _csv(tmp_path / "labels.csv", ["id", "label"], [["p1", "0"], ["p2", " 1.0 "], ["p3", "1e0"]])
    assert read_labels(path, TaskSpec("binary", 1)).targets["label"].tolist() == [0, 1, 1]
    for code, problem in (("\uff11", "is not a number"), ("\xa01", "surrounding spaces"), ("+1", "must be 0/1")):
        _csv(path, ["id", "label"], [["p1", "0"], ["p2", code]])
        with pytest.raises(DataError, match=problem):
            read_labels(path, TaskSpec("binary", 1))


def test_bins_given_on_the_command_line_follow_the_number_grammar():
    assert parse_edges("365,730.5,1e3") == (365.0, 730.5, 1000.0)
    for bins in ("3_65,730", "+365,730", "365, 730", "\uff13\uff16\uff15,730"):
        with pytest.raises(ConfigError, match="--bins"):
            parse_edges(bins)


def test_the_number_grammar_does_not_backtrack_on_long_cells():
    assert number_value("9" * 200_000 + "x") is None and number_value("9" * 100_000 + "." + "9" * 100_000 + "e") is None


# ---- sample files: the header decides, before any byte of a tensor is read -------------------------------------------


def test_a_tensor_beside_x_is_refused_naming_the_file(tmp_path):
    save_file({"x": torch.randn(3, 4), "coords": torch.zeros(3, 2)}, tmp_path / "s.safetensors")
    with pytest.raises(DataError, match=r"s\.safetensors: holds 'coords' beside 'x'; a sample file holds 'x' only"):
        load_bag(tmp_path / "s.safetensors")
    save_file({"y": torch.randn(3, 4)}, tmp_path / "s.safetensors")
    with pytest.raises(DataError, match=r"no tensor named 'x' \(it holds 'y'\)"):
        load_bag(tmp_path / "s.safetensors")


def test_a_header_that_lies_about_offsets_or_sizes_is_refused_before_the_data_are_read(tmp_path, monkeypatch):
    reads: list[Path] = []
    real = samples_module._read_range
    monkeypatch.setattr(samples_module, "_read_range", lambda path, *a: reads.append(path) or real(path, *a))
    entry = {"dtype": "F32", "shape": [2, 4]}
    cases = {
        "past the end": ({"x": {**entry, "data_offsets": [0, 32]}}, 16, "the file holds 16"),
        "trailing bytes": ({"x": {**entry, "data_offsets": [0, 32]}}, 40, "the file holds 40"),
        "shifted": ({"x": {**entry, "data_offsets": [8, 40]}}, 40, "at data bytes 8..40"),
        "short": ({"x": {**entry, "data_offsets": [0, 16]}}, 16, "take 32 bytes"),
        "negative": ({"x": {**entry, "data_offsets": [-8, 32]}}, 32, "no count"),
        "bool dimension": ({"x": {**entry, "shape": [2, True], "data_offsets": [0, 8]}}, 8, "no count"),
        "no dtype": ({"x": {"shape": [2, 4], "data_offsets": [0, 32]}}, 32, "has dtype 'None'"),
        "complex": ({"x": {**entry, "dtype": "C64", "data_offsets": [0, 64]}}, 64, "expected real numbers"),
        "empty features": ({"x": {**entry, "shape": [10**30, 0], "data_offsets": [0, 0]}}, 0, "at least one token"),
        "huge": ({"x": {**entry, "shape": [10**30, 4], "data_offsets": [0, 16]}}, 16, "cap 1.0 GiB"),
        "metadata": ({"__metadata__": {"a": 1}, "x": {**entry, "data_offsets": [0, 32]}}, 32, "metadata"),
    }
    for name, (header, size, problem) in cases.items():
        path = _raw_sample(tmp_path / f"{name}.safetensors", header, size)
        with pytest.raises(DataError, match=problem):
            load_bag(path)
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(DataError, match="a header of 4,611,686,018,427,387,904 bytes"):
        load_bag(tmp_path / "long.safetensors")
    assert reads == []


def test_a_sample_keeps_its_real_dtypes_and_is_read_as_float32(tmp_path):
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int64, torch.uint8):
        x = (torch.arange(12).reshape(3, 4) % 5).to(dtype)
        save_file({"x": x}, tmp_path / "s.safetensors", metadata={"format": "pt"})
        assert torch.equal(load_bag(tmp_path / "s.safetensors", (None, 4)), x.float())
    nan = torch.full((2, 4), float("nan")).to(torch.float8_e4m3fn)
    save_file({"x": nan}, tmp_path / "s.safetensors")
    with pytest.raises(DataError, match="holds NaN"):
        load_bag(tmp_path / "s.safetensors")
    for dtype in (torch.bool, torch.complex64, torch.uint16):
        save_file({"x": torch.zeros(2, 4, dtype=dtype)}, tmp_path / "s.safetensors")
        with pytest.raises(DataError, match="expected real numbers"):
            load_bag(tmp_path / "s.safetensors")


def test_the_shape_of_a_modality_comes_from_its_first_header_alone(tmp_path, monkeypatch):
    (tmp_path / "seq").mkdir()
    _raw_sample(
        tmp_path / "seq" / "a.safetensors",
        {"x": {"dtype": "F32", "shape": [1000, 7], "data_offsets": [0, 28000]}},
        28000,
    )
    monkeypatch.setattr(samples_module, "_read_range", lambda *a: pytest.fail("modality_shape read tensor data"))
    assert modality_shape(tmp_path, "seq") == (None, 7)


def _grown_kib(tmp_path: Path, make) -> tuple[str, int]:
    """Peak memory growth (KiB) of a fresh process reading a folder whose one sample `make` writes, as training and
    predict read it: the modality's shape, then a batch of every sample."""
    folder = tmp_path / "data"
    (folder / "seq").mkdir(parents=True)
    make(folder / "seq" / "a.safetensors")
    code = (
        "import resource, sys\n"
        "from legokit.data.folder import DataError, DatasetFolder, modality_shape\n"
        "data = DatasetFolder(sys.argv[1], {'seq': (None, 4)})\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    modality_shape(sys.argv[1], 'seq')\n    data.batch(data.ids)\n    print('read')\n"
        "except DataError as exc:\n    print('refused', exc)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "grew_kb" in out.stdout, out.stdout + out.stderr[-2000:]
    head, grew = out.stdout.split("grew_kb")
    return head.strip(), int(grew)


def test_a_sparse_sample_declaring_a_1_6_gb_x_is_refused_without_the_memory(tmp_path):
    """4 KB on disk, 1.6 GB by its size and header: refused from the header; the process grows by < 50 MB."""
    header = {"x": {"dtype": "F32", "shape": [100_000_000, 4], "data_offsets": [0, 1_600_000_000]}}
    said, grew = _grown_kib(tmp_path, lambda path: _raw_sample(path, header, 1_600_000_000))
    assert said.startswith("refused") and "cap 1.0 GiB" in said, said
    assert grew < 50 << 10, f"refusing it raised peak memory by {grew} KiB"


def test_a_valid_x_beside_an_unused_2_gb_tensor_is_refused_without_the_memory(tmp_path):
    x = torch.randn(3, 4)
    header = {
        "x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
        "unused": {"dtype": "F32", "shape": [500_000_000], "data_offsets": [48, 2_000_000_048]},
    }
    said, grew = _grown_kib(tmp_path, lambda path: _raw_sample(path, header, 2_000_000_048, x.numpy().tobytes()))
    assert said.startswith("refused") and "holds 'unused' beside 'x'" in said, said
    assert grew < 50 << 10, f"refusing it raised peak memory by {grew} KiB"


def test_a_normal_sample_is_read_within_50_mb(tmp_path):
    said, grew = _grown_kib(tmp_path, lambda path: save_file({"x": torch.randn(2000, 4)}, path))
    assert said == "read", said
    assert grew < 50 << 10, f"reading it raised peak memory by {grew} KiB"


def test_good_samples_batch_as_saved_bags_and_fixed_shape_images_alike(tmp_path):
    (tmp_path / "seq").mkdir()
    xs = {"a": torch.randn(3, 4), "b": torch.randn(1, 4, dtype=torch.float64)}
    for sample, x in xs.items():
        save_file({"x": x}, tmp_path / "seq" / f"{sample}.safetensors")
    batch = DatasetFolder(tmp_path, {"seq": (None, 4)}).batch(["a", "b"])["seq"]
    assert torch.equal(batch.x[0], xs["a"]) and torch.equal(batch.x[1, :1], xs["b"].float())
    assert batch.mask.tolist() == [[True, True, True], [True, False, False]]
    (tmp_path / "img").mkdir()
    picture = torch.randn(3, 5, 5)
    save_file({"x": picture.half()}, tmp_path / "img" / "a.safetensors")
    save_file({"x": torch.randn(3, 5, 4)}, tmp_path / "img" / "b.safetensors")
    images = DatasetFolder(tmp_path, {"img": (3, 5, 5)})
    assert torch.equal(images.batch(["a"])["img"].x[0], picture.half().float())
    with pytest.raises(DataError, match=r"b\.safetensors: 'x' must have shape \(3, 5, 5\)"):
        images.batch(["b"])


# ---- write_nafld writes a new folder only ---------------------------------------------------------------------------


def test_write_nafld_refuses_an_existing_folder_before_reading_or_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(nafld, "read_frame", lambda name: pytest.fail("read the data before refusing"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "labels.csv").write_text("id,time,event\np1,10,1\n")
    (full / "table.csv").write_text("id,a\np1,1\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("x")
    for existing in (full, empty, tmp_path / "file"):
        with pytest.raises(WriteError, match="already exists; write_nafld writes a new folder") as caught:
            nafld.write_nafld(existing)
        assert "\n" not in str(caught.value)
    assert (full / "labels.csv").read_text() == "id,time,event\np1,10,1\n" and sorted(os.listdir(full)) == [
        "labels.csv",
        "table.csv",
    ]
    assert os.listdir(empty) == []
