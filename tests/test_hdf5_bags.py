"""HDF5 bags (`NAME/ID.h5`, issue 32 item 4): a bag written as CLAM and TRIDENT write them (`features`, `coords`)
reads as the same tensor as the safetensors sample holding the same numbers, and a folder of them predicts and
trains exactly as the safetensors folder does; a modality's shape is read from the first file's metadata alone;
without h5py, two files for one sample and mixed widths are one-line errors naming the files."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from legokit import save_block
from legokit.data import hdf5 as hdf5_module
from legokit.data.folder import DataError, DatasetFolder, load_bag, modality_shape
from legokit.predict import predict_folder
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.workflows import train_block
from legokit.wrap import wrap_builtin

from .conftest import cli_here

IDS = [f"s{k}" for k in range(10)]
SMALL = dict(latent=(4, 8), dim_head=8)


def write_h5(path: Path, features: np.ndarray, chunks: tuple[int, int] | None = None, coords: bool = True) -> Path:
    """A bag as CLAM writes it (chunks of one row, rows appendable) or TRIDENT (contiguous), with coords."""
    with h5py.File(path, "w") as handle:
        if chunks is None:
            handle.create_dataset("features", data=features)
        else:
            rows = (None, features.shape[1])
            dataset = handle.create_dataset("features", features.shape, features.dtype, maxshape=rows, chunks=chunks)
            dataset[:] = features
        if coords:
            handle.create_dataset("coords", data=np.arange(2 * len(features), dtype="i8").reshape(-1, 2))
        handle.attrs["patch_size"] = 256
    return path


def bag(k: int, width: int = 4) -> np.ndarray:
    generator = np.random.default_rng(k)
    return generator.standard_normal((1 + k % 4, width)).astype("f2" if k % 2 else "f4")


def make_folders(root: Path) -> tuple[Path, Path]:
    """The same ten samples as NAME/ID.h5 (half CLAM-chunked, half contiguous) and as NAME/ID.safetensors."""
    folders = root / "h5", root / "st"
    for folder in folders:
        (folder / "seq").mkdir(parents=True)
        labels = "".join(f"{i},{10 + 3 * k},{k % 2}\n" for k, i in enumerate(IDS))
        (folder / "labels.csv").write_text("id,time,event\n" + labels)
        splits = "".join(f"{i},{'train' if k < 6 else 'val' if k < 8 else 'test'}\n" for k, i in enumerate(IDS))
        (folder / "splits.csv").write_text("id,split\n" + splits)
    for k, sample in enumerate(IDS):
        features = bag(k)
        write_h5(folders[0] / "seq" / f"{sample}.h5", features, (1, 4) if k % 3 else None)
        save_file({"x": torch.from_numpy(features)}, folders[1] / "seq" / f"{sample}.safetensors")
    return folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    return make_folders(tmp_path_factory.mktemp("hdf5-bags"))


@pytest.mark.parametrize("dtype", ["f2", "f4", "f8", ">f4", "i1", "i2", "i4", "i8", ">i8", "u1"])
@pytest.mark.parametrize("chunks", [None, (1, 6), (2, 3), (64, 6)])
def test_an_hdf5_bag_reads_as_the_same_tensor_as_its_safetensors_twin(tmp_path, dtype, chunks):
    values = np.random.default_rng(0).uniform(-100, 100, (5, 6)).astype(dtype)
    h5 = write_h5(tmp_path / "a.h5", values, chunks)
    twin = tmp_path / "a.safetensors"
    save_file({"x": torch.from_numpy(values.astype(values.dtype.newbyteorder("=")))}, twin)
    got, expected = load_bag(h5, (None, 6)), load_bag(twin, (None, 6))
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)


def test_a_folder_of_hdf5_bags_predicts_exactly_as_the_safetensors_folder(folders):
    h5, st = folders
    assert torch.equal(
        torch.cat([x.x for x in DatasetFolder(h5, {"seq": (None, 4)}).batch(IDS).values()]),
        torch.cat([x.x for x in DatasetFolder(st, {"seq": (None, 4)}).batch(IDS).values()]),
    )
    torch.manual_seed(0)
    block = wrap_builtin(
        "mlp", None, "seq", "survival:4", {"in_features": 4, "hidden": 8}, (None, 4), device="cpu", **SMALL
    )
    got, expected = (predict_folder(block, folder, device="cpu", cache=False) for folder in (h5, st))
    assert got.ids == expected.ids == IDS
    assert got.columns == expected.columns
    assert {p.suffix for p in got.sources if p.parent.name == "seq"} == {".h5"}


def test_a_block_trained_on_hdf5_bags_equals_one_trained_on_safetensors(folders):
    spec = BlockSpec("seq", "mlp", {"in_features": 4, "hidden": 8}, task=TaskSpec("survival", 4), depth=1, **SMALL)
    spec = spec.override(epochs=2)
    results = [train_block(folder, spec, progress=False) for folder in folders]
    (got, got_result), (expected, expected_result) = results
    timeless = [[{k: v for k, v in epoch.items() if k != "seconds"} for epoch in r.history] for _, r in results]
    assert len(timeless[0]) == 2 and timeless[0] == timeless[1]
    assert got_result.test == expected_result.test
    mine, theirs = got.state_dict(), expected.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)


def test_a_modality_shape_is_read_from_the_first_bags_metadata_alone(folders, monkeypatch):
    reads: list[object] = []
    monkeypatch.setattr(hdf5_module, "_read", lambda *args: reads.append(args))
    assert modality_shape(folders[0], "seq") == (None, 4)
    assert not reads


def test_a_folder_may_mix_hdf5_and_safetensors_bags(tmp_path):
    root = tmp_path / "mixed"
    (root / "seq").mkdir(parents=True)
    write_h5(root / "seq" / "a.h5", bag(0))
    save_file({"x": torch.from_numpy(bag(1))}, root / "seq" / "b.safetensors")
    data = DatasetFolder(root, {"seq": (None, 4)})
    assert data.ids == ["a", "b"]
    batch = data.batch(["a", "b"])["seq"]
    assert torch.equal(batch.x[0, :1], torch.from_numpy(bag(0)).float())
    assert torch.equal(batch.x[1, :2], torch.from_numpy(bag(1)).float())


def test_without_h5py_a_folder_of_hdf5_bags_says_which_extra_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    for attempt in (lambda: DatasetFolder(folders[0], {"seq": (None, 4)}), lambda: modality_shape(folders[0], "seq")):
        with pytest.raises(DataError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and "s0.h5" in message and "pip install 'legokit[hdf5]'" in message
    DatasetFolder(folders[1], {"seq": (None, 4)}).batch(IDS)  # safetensors bags need no h5py


def test_two_files_for_one_sample_are_one_line_naming_both(folders, tmp_path):
    root = tmp_path / "both"
    (root / "seq").mkdir(parents=True)
    write_h5(root / "seq" / "a.h5", bag(0))
    save_file({"x": torch.from_numpy(bag(0))}, root / "seq" / "a.safetensors")
    for attempt in (lambda: DatasetFolder(root, {"seq": (None, 4)}), lambda: modality_shape(root, "seq")):
        with pytest.raises(DataError, match=r"a\.h5 and .*a\.safetensors: two files for sample 'a'"):
            attempt()


def test_mixed_feature_widths_are_one_line_naming_the_file(tmp_path):
    root = tmp_path / "widths"
    (root / "seq").mkdir(parents=True)
    write_h5(root / "seq" / "a.h5", bag(0, width=4))
    write_h5(root / "seq" / "b.h5", bag(1, width=5), chunks=(1, 5))
    width = modality_shape(root, "seq")
    assert width == (None, 4)
    data = DatasetFolder(root, {"seq": width})
    with pytest.raises(DataError, match=r"b\.h5: 'features' must have shape \(tokens, 4\) .* got \(2, 5\)"):
        data.batch(["a", "b"])


def test_the_cli_reads_hdf5_bags_and_answers_a_bad_one_in_one_line(folders, tmp_path):
    torch.manual_seed(0)
    block = wrap_builtin(
        "mlp", None, "seq", "survival:4", {"in_features": 4, "hidden": 8}, (None, 4), device="cpu", **SMALL
    )
    model = save_block(block, tmp_path / "seq.st")
    outputs = [tmp_path / f"{name}.csv" for name in ("h5", "st")]
    for folder, output in zip(folders, outputs):
        done = cli_here("predict", str(model), str(folder), "--device", "cpu", "--no-cache", "-o", str(output))
        assert done.returncode == 0, done.stderr
    assert outputs[0].read_text() == outputs[1].read_text()
    broken = tmp_path / "broken"
    (broken / "seq").mkdir(parents=True)
    (broken / "seq" / "a.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    done = cli_here("predict", str(model), str(broken), "--device", "cpu", "-o", str(tmp_path / "x.csv"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "a.h5: not a readable HDF5 bag" in done.stderr, done.stderr
