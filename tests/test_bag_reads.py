"""What a training step reads of a bag: only the rows its draw kept (in spans), equal to the whole bag indexed, in
safetensors and HDF5; half-precision bags travel half through the loader and reach the model as the same float32."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch
from safetensors.torch import save_file

from legokit.data import samples as samples_module
from legokit.data.folder import DatasetFolder, modality_shape
from legokit.data.loader import SplitBatches, read_ahead
from legokit.data.samples import load_bag
from legokit.data.sizes import DataError
from legokit.data.stream import SPAN_GAP_BYTES, Subsample, row_spans
from legokit.data.training import SplitData
from legokit.tasks import TaskSpec

from .test_slides import write_slides

TASK = TaskSpec.parse("survival:4")


def test_row_spans_cover_every_drawn_row_and_skip_wide_gaps():
    rows = torch.tensor([0, 1, 2, 10, 11, 500, 501, 9000])
    spans = row_spans(rows, row_bytes=SPAN_GAP_BYTES // 16)  # a gap of up to 16 rows is read through
    assert spans == [(0, 12, 0, 5), (500, 502, 5, 7), (9000, 9001, 7, 8)]
    assert row_spans(torch.tensor([], dtype=torch.long), 8) == []
    assert row_spans(torch.arange(100), 4) == [(0, 100, 0, 100)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_reading_drawn_rows_equals_the_whole_bag_indexed(tmp_path, dtype):
    x = torch.randn(40_000, 8).to(dtype)
    save_file({"x": x}, str(tmp_path / "s.safetensors"))
    for most, seed in [(64, 0), (4096, 1), (39_999, 2)]:
        rows = Subsample(most, seed).rows("s", 40_000)
        assert rows is not None
        got = load_bag(tmp_path / "s.safetensors", rows=rows, narrow=True)
        assert got.dtype == (dtype if dtype != torch.float32 else torch.float32)
        assert torch.equal(got, x[rows])
        assert torch.equal(load_bag(tmp_path / "s.safetensors", rows=rows), x[rows].float())


def test_hdf5_bags_read_drawn_rows_too(tmp_path):
    x = torch.randn(5_000, 6).half()
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle.create_dataset("features", data=x.numpy())
    rows = Subsample(300, 3).rows("s", 5_000)
    assert rows is not None
    assert torch.equal(load_bag(tmp_path / "s.h5", rows=rows, narrow=True), x[rows])
    with pytest.raises(DataError, match="asked of 5,000 tokens"):
        load_bag(tmp_path / "s.h5", rows=torch.tensor([4, 5_000]))


def test_a_training_step_reads_only_the_spans_of_its_drawn_rows(tmp_path, monkeypatch):
    folder = write_slides(tmp_path / "data", [20_000, 15_000], width=512)  # 1 KiB patches
    data = DatasetFolder(folder, {"wsi": modality_shape(folder, "wsi")})
    read: list[int] = []
    real = samples_module._read_range
    monkeypatch.setattr(
        samples_module, "_read_range", lambda path, fd, start, n: read.append(n) or real(path, fd, start, n)
    )
    batch = data.batch(["s0", "s1"], subsample=Subsample(256, 0))["wsi"]
    assert batch.x.shape == (2, 256, 512) and bool(batch.mask.all())
    whole = (20_000 + 15_000) * 512 * 2
    assert sum(read) < whole / 4  # 512 of 35,000 rows drawn: a small part of the bytes is read
    monkeypatch.undo()
    expected = [load_bag(folder / "wsi" / f"{i}.safetensors")[Subsample(256, 0).rows(i, n)] for i, n in
                [("s0", 20_000), ("s1", 15_000)]]  # fmt: skip
    assert torch.equal(batch.x, torch.stack(expected))


def test_half_precision_bags_stay_half_in_the_loader_and_reach_the_model_as_float32(tmp_path):
    folder = write_slides(tmp_path / "data", [300, 1200, 800, 50, 2000, 700, 900, 100], width=8)
    data = SplitData.load(folder, {"wsi": modality_shape(folder, "wsi")}, TASK)
    ids = data.ids("train")
    chunks = [ids[s : s + 2] for s in range(0, len(ids), 2)]
    draw = Subsample(500, 7)
    carried = SplitBatches(data, chunks, subsample=draw)[0][1]["wsi"].x
    assert carried.dtype == torch.float16
    for workers in (0, 2):
        for (_, batches, _), chunk in zip(read_ahead(data, chunks, subsample=draw, workers=workers), chunks):
            reference = data.folder.batch(chunk, subsample=draw)["wsi"]  # read whole bags, as float32
            assert batches["wsi"].x.dtype == torch.float32
            assert torch.equal(batches["wsi"].x, reference.x) and torch.equal(batches["wsi"].mask, reference.mask)


def test_a_bag_read_into_a_folders_memory_serves_drawn_rows_without_a_read(tmp_path, monkeypatch):
    folder = write_slides(tmp_path / "data", [3_000], width=4)
    data = DatasetFolder(folder, {"wsi": modality_shape(folder, "wsi")})
    whole = data.batch(["s0"])["wsi"].x[0]  # kept: a small folder stays in memory
    monkeypatch.setattr(samples_module, "_read_range", lambda *a: pytest.fail("read again"))
    rows = Subsample(100, 5).rows("s0", 3_000)
    assert torch.equal(data.batch(["s0"], subsample=Subsample(100, 5))["wsi"].x[0], whole[rows])


def test_drawn_rows_out_of_a_bags_range_are_refused(tmp_path):
    save_file({"x": torch.zeros(10, 2)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(DataError, match="asked of 10 tokens"):
        load_bag(Path(tmp_path / "s.safetensors"), rows=torch.tensor([3, 10]))


def test_unsorted_rows_are_refused(tmp_path):
    save_file({"x": torch.zeros(10, 2)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(DataError, match="must be sorted"):
        load_bag(tmp_path / "s.safetensors", rows=torch.tensor([5, 3]))
