"""No model is scored on the samples it was trained or validated on: each artifact records salted hashes of its
training and validation ids, merged and fused models keep their blocks' records, and eval and adapt refuse (or,
when asked, warn about) a test split that overlaps them. Blocks with different FFT axes are not merged."""

from __future__ import annotations

import json
import shutil

import pytest

import legokit
from legokit import ConfigError
from legokit.cli.commands import main
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.training.leakage import overlaps, refuse_overlap, sample_record
from legokit.training.workflows import evaluate_model, labelled_data, train_block

TINY = dict(latent=(8, 16), dim_head=16)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Labs and visits blocks trained on the random split of seed 3, merged, saved."""
    root = tmp_path_factory.mktemp("leak")
    data = root / "data"
    write_pbc(data)
    blocks = []
    encoders = (("labs", "snn", {"hidden": 16}), ("visits", "abmil", {"hidden": 16, "attention": 8}))
    for modality, encoder, kwargs in encoders:
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


# --- validation samples count as seen, as much as training samples ---------------------------------------------------


def test_a_validation_id_counts_as_seen_like_a_training_id():
    provenance = {"trained": {"samples": sample_record(train=["p1", "p2", "p3"], val=["p4", "p5"])}}
    assert [o.seen for o in overlaps(provenance, ["p4"])] == [1]
    assert [o.seen for o in overlaps(provenance, ["p1", "p4", "p5", "p6"])] == [3]
    assert overlaps(provenance, ["p6", "p7"]) == []
    with pytest.raises(ConfigError, match=r"^2 of the 3 test samples were seen in training"):
        refuse_overlap(provenance, ["p4", "p5", "p6"], "test")
    (warning,) = refuse_overlap(provenance, ["p5", "p6"], "test", allow=True)
    assert warning.startswith("1 of the 2 test samples were seen in training: 1 in the training/validation samples")


def _swapped_val_and_test(model, data) -> tuple[dict[str, str], list[str]]:
    """The seed-3 split the blocks were trained with, its validation and test samples swapped; and the new test ids."""
    split, _, modalities = labelled_data(model, data, 3)
    swapped = {i: {"val": "test", "test": "val"}.get(s, s) for i, s in split.splits.items()}
    return swapped, split.ids("val", modalities)


def test_an_eval_on_the_samples_the_blocks_were_validated_on_is_refused(seeded):
    _, data, _, merged = seeded
    model = legokit.load(merged)
    swapped, val = _swapped_val_and_test(model, data)
    assert len(val) > 40
    with pytest.raises(
        ConfigError,
        match=rf"^{len(val)} of the {len(val)} test samples were seen in training: "
        rf"{len(val)} in the .*blocks\.labs",
    ):
        evaluate_model(model, data, splits=swapped)


def test_the_cli_refuses_to_score_validation_samples_unless_allowed(seeded, tmp_path, capsys):
    _, data, _, merged = seeded
    swapped, val = _swapped_val_and_test(legokit.load(merged), data)
    folder = shutil.copytree(data, tmp_path / "data")
    (folder / "splits.csv").write_text("id,split\n" + "".join(f"{i},{s}\n" for i, s in swapped.items()))
    assert main(["eval", str(merged), str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{len(val)} of the {len(val)} test samples were seen in training" in err and "--allow-overlap" in err
    assert main(["eval", str(merged), str(folder), "--allow-overlap"]) == 0
    assert f"warning: {len(val)} of the {len(val)} test samples were seen in training" in capsys.readouterr().err
