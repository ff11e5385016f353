"""No model is scored on the samples it was trained or validated on: each artifact records salted hashes of its
training and validation ids, merged and fused models keep their blocks' records, and eval and adapt refuse (or,
when asked, warn about) a test split that overlaps them. Blocks with different FFT axes are not merged."""

from __future__ import annotations

import json

import pytest

import legokit
from legokit import ConfigError
from legokit.cli import main
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.workflows import evaluate_model, train_block

TINY = dict(latent=(8, 16), dim_head=16)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Labs and visits blocks trained on the random split of seed 3, merged, saved."""
    root = tmp_path_factory.mktemp("leak")
    data = root / "data"
    write_pbc(data)
    blocks = []
    for modality, encoder, kwargs in (("labs", "snn", {"hidden": 16}), ("visits", "abmil", {"hidden": 16, "attention": 8})):
        spec = BlockSpec(modality, encoder, kwargs, **TINY).override(epochs=3, seed=3)
        block, _ = train_block(data, spec, progress=False)
        blocks.append(legokit.save_block(block, root / f"{modality}.st"))
    merged = legokit.merge_files(blocks, root / "merged.st")
    return root, data, blocks, merged


def test_records_hold_salted_hashes_never_the_ids(seeded):
    root, data, blocks, _ = seeded
    record = legokit.load_block(blocks[0]).provenance["trained"]["samples"]
    assert len(record["salt"]) == 16 and record["train"] and record["val"]
    ids = [line.split(",")[0] for line in (data / "labels.csv").read_text().splitlines()[1:]]
    text = json.dumps(record)
    assert not any(f'"{sample}"' in text for sample in ids)


def test_a_merged_model_is_scored_on_the_split_its_blocks_were_trained_with(seeded):
    _, data, _, merged = seeded
    metrics = evaluate_model(legokit.load(merged), data)
    assert metrics["split_source"] == "random 70/15/15, seed 3" and metrics["warnings"] == []


def test_an_eval_that_would_score_training_samples_is_refused(seeded, capsys):
    _, data, _, merged = seeded
    with pytest.raises(ConfigError, match=r"of the \d+ test samples were seen in training: \d+ in the .*blocks\.labs"):
        evaluate_model(legokit.load(merged), data, seed=0)
    assert main(["eval", str(merged), str(data), "--seed", "0"]) == 1
    assert "--allow-overlap" in capsys.readouterr().err


def test_allow_overlap_scores_with_a_warning(seeded, capsys):
    _, data, _, merged = seeded
    assert main(["eval", str(merged), str(data), "--seed", "0", "--allow-overlap"]) == 0
    assert "warning: " in capsys.readouterr().err  # through the legokit logger, on standard error


def test_blocks_with_different_fft_axes_are_not_merged(seeded, tmp_path):
    root, data, blocks, _ = seeded
    spec = BlockSpec("visits", "abmil", {"hidden": 16, "attention": 8}, fft_axes="channels", **TINY).override(epochs=1)
    other, _ = train_block(data, spec, progress=False)
    path = legokit.save_block(other, tmp_path / "visits-channels.st")
    with pytest.raises(ConfigError, match="disagree on FFT axes \\(labs: both, visits: channels\\)"):
        legokit.merge_files([blocks[0], path], tmp_path / "m.st")
    with pytest.raises(ConfigError, match="disagree on FFT axes"):
        legokit.merge([legokit.load_block(blocks[0]), other])
