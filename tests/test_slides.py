"""Whole-slide bags, streamed: normalisation in one streaming pass equals the whole-split computation, patch
subsampling is seeded and bounded, loader workers change nothing, batches keep to the token budget, and a bag of
100,000 tokens predicts in bounded memory. The data are small slides of a few thousand half-precision patches."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import legokit
from legokit.data.folder import DatasetFolder, modality_shape
from legokit.data.stream import Moments, Subsample, budget_chunks
from legokit.data.training import SplitData
from legokit.predict import predict_folder
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.baselines import summary_cox_risks
from legokit.training.trainer import TrainConfig, predict_logits
from legokit.training.workflows import train_block

from .conftest import run_python

TASK = TaskSpec.parse("survival:4")
WIDTH = 12


def write_slides(folder: Path, lengths: list[int], width: int = WIDTH, seed: int = 0) -> Path:
    """`wsi/ID.safetensors` (float16 patch features) with survival labels that follow the mean of feature 0."""
    generator = torch.Generator().manual_seed(seed)
    (folder / "wsi").mkdir(parents=True)
    rows = []
    for number, length in enumerate(lengths):
        sample = f"s{number}"
        x = torch.randn(length, width, generator=generator).half()
        save_file({"x": x}, str(folder / "wsi" / f"{sample}.safetensors"))
        risk = float(x[:, 0].float().mean()) * 20
        time = max(
            1.0, 1000.0 * float(torch.exp(-torch.tensor(risk))) * (0.5 + float(torch.rand(1, generator=generator)))
        )
        rows.append([sample, f"{time:.1f}", str(int(number % 4 != 0))])
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "time", "event"])
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    lengths = [int(v) for v in torch.randint(300, 3000, (40,), generator=torch.Generator().manual_seed(1))]
    return write_slides(tmp_path_factory.mktemp("slides") / "data", lengths)


def _spec(**training: object) -> BlockSpec:
    settings = {**dict(epochs=2, batch_size=4, device="cpu", max_tokens=256), **training}
    return BlockSpec(
        "wsi",
        encoder="abmil",
        encoder_kwargs={"hidden": 16, "attention": 8},
        latent=(8, 16),
        dim_head=16,
        task=TASK,
        training=TrainConfig(**settings),  # type: ignore[arg-type]
    )


def test_streaming_normalisation_equals_the_whole_split_computation(slides, monkeypatch):
    data = SplitData.load(slides, {"wsi": modality_shape(slides, "wsi")}, TASK)
    ids = data.ids("train")
    tokens = torch.cat([data.folder.batch([i])["wsi"].x[0] for i in ids])
    monkeypatch.setattr(DatasetFolder, "token_budget", lambda self, modalities=None: 4000)
    chunks = budget_chunks(ids, data.folder.lengths(ids), 4000)
    assert len(chunks) > 5  # the pass really streams
    mean, std = data.normalization("wsi", ids)
    assert torch.allclose(mean, tokens.mean(0), atol=1e-6) and torch.allclose(
        std, tokens.std(0, unbiased=False), atol=1e-6
    )


def test_running_moments_merge_chunks_exactly():
    rows = torch.randn(1000, 5, dtype=torch.float64) * 3 + 7
    moments = Moments()
    for chunk in rows.split([1, 300, 199, 500]):
        moments.add(chunk)
    mean, std = moments.result()
    assert torch.allclose(mean.double(), rows.mean(0), atol=1e-5)
    assert torch.allclose(std.double(), rows.std(0, unbiased=False), atol=1e-5)


def test_token_budget_chunks_keep_order_and_the_budget():
    ids = [f"s{i}" for i in range(10)]
    lengths = [5, 50, 5, 5, 200, 1, 1, 1, 1, 30]
    chunks = budget_chunks(ids, lengths, 100, most=3)
    assert [i for chunk in chunks for i in chunk] == ids
    for chunk in chunks:
        longest = max(lengths[ids.index(i)] for i in chunk)
        assert len(chunk) <= 3 and (len(chunk) * longest <= 100 or len(chunk) == 1)


def test_patch_subsampling_is_seeded_and_bounded(slides):
    draw = Subsample(most=100, seed=3)
    rows = draw.rows("s1", 2000)
    assert rows is not None and len(rows) == 100 and len(set(rows.tolist())) == 100
    assert torch.equal(rows, rows.sort().values) and int(rows.max()) < 2000
    assert torch.equal(rows, Subsample(100, 3).rows("s1", 2000))
    assert not torch.equal(rows, Subsample(100, 4).rows("s1", 2000))
    assert draw.rows("s1", 100) is None  # a bag within the bound keeps every token
    data = SplitData.load(slides, {"wsi": modality_shape(slides, "wsi")}, TASK)
    batch, _ = data.batch(data.ids("train")[:6], subsample=draw)
    assert int(batch["wsi"].mask.sum(1).max()) == 100


def _history(result) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]


def test_training_and_prediction_are_the_same_with_0_and_2_workers(slides):
    torch.manual_seed(0)
    alone, first = train_block(slides, _spec(workers=0), progress=False)
    torch.manual_seed(0)
    helped, second = train_block(slides, _spec(workers=2), progress=False)
    assert _history(first) == _history(second)
    for (name, a), (_, b) in zip(alone.state_dict().items(), helped.state_dict().items()):
        assert torch.equal(a, b), name
    data = SplitData.load(slides, {"wsi": modality_shape(slides, "wsi")}, TASK)
    ids = data.ids("test")
    assert torch.equal(predict_logits(alone, data, ids, workers=0), predict_logits(alone, data, ids, workers=2))


def test_prediction_batches_keep_to_the_token_budget(slides, monkeypatch):
    block, _ = train_block(slides, _spec(epochs=1), progress=False)
    seen: list[int] = []
    real = DatasetFolder.batch

    def spy(self, ids, modalities=None, subsample=None):
        out = real(self, ids, modalities, subsample)
        seen.append(out["wsi"].x.shape[0] * out["wsi"].x.shape[1])
        return out

    monkeypatch.setattr(DatasetFolder, "token_budget", lambda self, modalities=None: 6000)
    monkeypatch.setattr(DatasetFolder, "batch", spy)
    whole = predict_folder(block, slides, device="cpu", cache=False)
    assert len(whole.ids) == 40 and len(seen) > 1 and max(seen) <= 6000


BIG = """
import resource, sys, torch
import legokit
from legokit.predict import predict_folder
block = legokit.load(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = predict_folder(block, sys.argv[1], device="cpu", cache=False)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(out.ids), grew // 1024)
"""


def test_a_bag_of_100000_tokens_predicts_in_bounded_memory(slides, tmp_path):
    block, _ = train_block(slides, _spec(epochs=1), progress=False)
    path = legokit.save_block(block, tmp_path / "wsi.st")
    big = write_slides(tmp_path / "big", [100_000, 2_000])
    done = run_python(BIG, str(big), str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    samples, grew_mb = (int(v) for v in done.stdout.split()[-2:])
    # the inputs: 100,000 x 12 float32 tokens, 4.8 MB; the encoder's and block's activations a few times that
    assert samples == 2 and grew_mb < 400, f"predicting a 100,000-token bag grew the process by {grew_mb} MB"


def test_the_summary_baseline_reads_a_split_in_chunks_and_scores_as_at_once(slides, monkeypatch):
    data = SplitData.load(slides, {"wsi": modality_shape(slides, "wsi")}, TASK)
    train, test = data.ids("train"), data.ids("test")
    at_once = summary_cox_risks(data, ["wsi"], train, test, time_feature=None)
    seen: list[int] = []
    real = DatasetFolder.batch

    def spy(self, ids, modalities=None, subsample=None, narrow=False):
        seen.append(len(ids))
        return real(self, ids, modalities, subsample, narrow)

    monkeypatch.setattr(DatasetFolder, "token_budget", lambda self, modalities=None: 6000)
    monkeypatch.setattr(DatasetFolder, "batch", spy)
    chunked = summary_cox_risks(data, ["wsi"], train, test, time_feature=None)
    assert len(seen) > 4 and max(seen) < len(test)
    assert chunked.keys() == at_once.keys()
    assert all(abs(chunked[i] - at_once[i]) < 1e-6 for i in test)
