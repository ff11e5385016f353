"""Per-step work done once (issue 32, item 5): `Labels.select`'s id map is built once, and a longitudinal block's
summaries are computed once per sample in a training run, with results bit-identical to computing them every step;
on the bundled PBC cohort."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch

from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.labels import Labels, read_labels
from legokit.data.training import SplitData
from legokit.encoders.longitudinal import LongitudinalSummary, SummaryTable
from legokit.encoders.summaries import summary_width
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import build_block, fuse_blocks, train_block

TASK = TaskSpec("survival", 4)
BLOCKS = Path(__file__).resolve().parent.parent / "blocks"


@pytest.fixture(scope="module")
def pbc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return folder


@pytest.fixture(scope="module")
def split(pbc: Path) -> SplitData:
    return SplitData.load(pbc, {m: modality_shape(pbc, m) for m in ("labs", "visits")}, TASK, 0)


def _visits(epochs: int = 3) -> BlockSpec:
    return BlockSpec.from_yaml(BLOCKS / "visits.yaml").override(epochs=epochs, device="cpu")


def _labs(epochs: int = 2) -> BlockSpec:
    return BlockSpec.from_yaml(BLOCKS / "labs.yaml").override(epochs=epochs, device="cpu")


def _without_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training as before the change: the encoder summarises every batch it runs."""
    monkeypatch.setattr("legokit.training.trainer.summarised_once", lambda model, data: nullcontext())


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _history(result: Any) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]


class _CountedIds(tuple[str, ...]):
    """Sample ids that count how often they are walked through."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        type(self).walks += 1
        return super().__iter__()


def test_select_builds_its_id_map_once(pbc: Path) -> None:
    read = read_labels(pbc / "labels.csv", TASK)
    labels = Labels(read.path, read.task, _CountedIds(read.ids), read.targets)
    built = _CountedIds.walks
    ids = list(read.ids)
    for start in range(0, len(ids), 32):
        chunk = ids[start : start + 32][::-1]
        found = labels.select(chunk)
        rows = torch.tensor([ids.index(i) for i in chunk])
        assert all(torch.equal(found[k], v[rows]) for k, v in read.targets.items())
    assert _CountedIds.walks == built, "select walked every id again"
    assert labels.row_of == {i: k for k, i in enumerate(ids)}
    assert labels == read  # the map is no part of equality


def test_select_refuses_an_unknown_id_with_a_key_error_naming_it(pbc: Path) -> None:
    labels = read_labels(pbc / "labels.csv", TASK)
    with pytest.raises(KeyError, match="no-such-patient"):
        labels.select([labels.ids[0], "no-such-patient"])


def test_training_with_summaries_looked_up_is_bit_identical(pbc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up, result = train_block(pbc, _visits(), progress=False)
    with monkeypatch.context() as patch:
        _without_table(patch)
        recomputed, before = train_block(pbc, _visits(), progress=False)
    assert _same(looked_up, recomputed)
    assert _history(result) == _history(before) and len(result.history) == 3
    assert (result.val, result.test, result.best_epoch) == (before.val, before.test, before.best_epoch)
    assert looked_up.token_source is None  # the table lives for the run only


def test_each_sample_is_summarised_once_per_training_run(pbc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summarised: list[int] = []
    original = LongitudinalSummary.summaries

    def counted(self: LongitudinalSummary, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        summarised.append(x.shape[0])
        return original(self, x, mask)

    monkeypatch.setattr(LongitudinalSummary, "summaries", counted)
    _, result = train_block(pbc, _visits(epochs=4), progress=False)
    data = SplitData.load(pbc, {"visits": modality_shape(pbc, "visits")}, TASK, 0)
    samples = sum(len(data.ids(split, ["visits"])) for split in ("train", "val", "test"))
    assert len(result.history) == 4
    assert sum(summarised) == samples  # the first epoch, the first validation and the test pass; nothing after


def test_fusing_with_modality_dropout_stays_bit_identical(pbc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewritten batches (a dropped modality is zeros) are summarised as they run, the others looked up."""
    visits, _ = train_block(pbc, _visits(epochs=2), progress=False)
    labs, _ = train_block(pbc, _labs(), progress=False)
    config = TrainConfig(epochs=2, modality_dropout=0.4, seed=3, device="cpu")
    fused, result = fuse_blocks([visits, labs], pbc, "weave", config, progress=False)
    with monkeypatch.context() as patch:
        _without_table(patch)
        again, before = fuse_blocks([visits, labs], pbc, "weave", config, progress=False)
    assert _same(fused, again)
    assert _history(result) == _history(before) and result.test == before.test


def test_a_summary_table_keeps_one_row_per_sample(split: SplitData) -> None:
    torch.manual_seed(0)
    block = build_block(_visits(), modality_shape(split.folder.root, "visits")).eval()
    block.set_normalization(*split.normalization("visits", split.ids("train", ["visits"])))
    ids = split.ids("train", ["visits"])
    table = SummaryTable(split)
    block.token_source = table
    with torch.no_grad():
        for order in (ids, ids[::-1]):
            for start in range(0, len(ids), 32):
                batches, _ = split.batch(order[start : start + 32])
                looked_up = block.encode(batches)
                block.token_source = None
                assert torch.equal(looked_up, block.encode(batches))
                block.token_source = table
    features = modality_shape(split.folder.root, "visits")[-1]
    assert len(table.place) == len(ids) and features is not None
    assert table.table.shape[1] == summary_width(features)
    assert table.table.shape[0] < 2 * len(ids)


def test_a_changed_standardisation_summarises_again(split: SplitData) -> None:
    torch.manual_seed(0)
    block = build_block(_visits(), modality_shape(split.folder.root, "visits")).eval()
    table = SummaryTable(split)
    ids = split.ids("val", ["visits"])
    with torch.no_grad():
        batches, _ = split.batch(ids)
        batch = batches["visits"]
        table(block, batch.x, batch.mask)
        block.set_normalization(*split.normalization("visits", ids))
        tokens, _ = table(block, batch.x, batch.mask) or (None, None)
        assert tokens is not None and torch.equal(tokens, block.encoder_tokens(batch.x, batch.mask)[0])


def test_only_the_last_unchanged_batch_is_looked_up_by_id(split: SplitData) -> None:
    ids = split.ids("train", ["visits"])
    first, _ = split.batch(ids[:4])
    batches, _ = split.batch(ids[4:8])
    x, mask = batches["visits"].x, batches["visits"].mask
    assert split.samples_in(x, mask) == tuple(ids[4:8])
    assert split.samples_in(batches["labs"].x, None) == tuple(ids[4:8])
    assert split.samples_in(first["visits"].x, first["visits"].mask) is None  # an older batch
    assert split.samples_in(x.clone(), mask) is None  # a copy
    assert split.samples_in(x, None) is None  # another mask
    x[0, 0, 0] += 1.0
    assert split.samples_in(x, mask) is None  # written in place
    assert pickle.loads(pickle.dumps(split)).samples_in(x, mask) is None
