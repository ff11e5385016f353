"""Bring your own encoder, end to end, for real encoder families (random weights, small configs): wrap from a file
through the CLI; then, in a fresh process where neither the encoder's class nor transformers can be imported,
reload bit-identical, train the block for 2 epochs on a dataset folder, merge it with a built-in block, and predict
identically at batch sizes 1, 7 and 256."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks.encoder_families import FAMILIES, LATENT, reference_output, write_family_data
from legokit import save_block
from legokit.cli.commands import main
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import train_block

from .conftest import run_python

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("sklearn")

WALK = """
import json, sys
sys.modules["transformers"] = None  # the blocks must work without the library that defined their encoders
import torch, legokit
from safetensors.torch import load_file
from legokit.cli.commands import main
from legokit.predict import predict_folder

data, labs, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = {}
for name, wrapped, reference, work, flags in jobs:
    block = legokit.load_block(wrapped)
    saved = load_file(reference)
    args = (saved["x"], saved["mask"]) if "mask" in saved else (saved["x"],)
    with torch.no_grad():
        identical = torch.equal(block(*args), saved["out"])
    trained, merged = f"{work}/trained.st", f"{work}/merged.st"
    assert main(["train", data, "--block", wrapped, "--epochs", "2", "--device", "cpu", "-o", trained, *flags]) == 0
    assert main(["merge", trained, labs, "-o", merged]) == 0
    model = legokit.load(merged)
    runs = {size: predict_folder(model, data, batch_size=size, device="cpu") for size in (1, 7, 256)}
    columns = runs[256].columns
    spread = max(abs(a - b) for size in (1, 7) for col in columns
                 for a, b in zip(runs[size].columns[col], columns[col]))
    provenance = legokit.load_block(trained).provenance["trained"]
    results[name] = {"identical": identical, "spread": spread, "samples": len(runs[256].ids),
                     "ids_agree": runs[1].ids == runs[7].ids == runs[256].ids, "encoder": provenance["encoder"],
                     "finite": all(v == v for values in columns.values() for v in values)}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    """The PBC folder with every family's modality, and a built-in labs block (same latent) to merge with."""
    root = tmp_path_factory.mktemp("families")
    data = write_family_data(root / "data")
    spec = BlockSpec(
        "labs",
        encoder_kwargs={"hidden": 32},
        latent=(16, 16),
        dim_head=16,
        training=TrainConfig(epochs=3, device="cpu"),
    )
    labs, _ = train_block(data, spec, progress=False)
    return root, data, save_block(labs, root / "labs.st")


@pytest.fixture(scope="module")
def walked(family_data, tmp_path_factory):
    """Every family wrapped through the CLI here, then walked in ONE fresh process (one interpreter start, not eight):
    reload, train, merge, predict at three batch sizes. Returns each family's findings."""
    root, data, labs = family_data
    jobs = []
    for family in FAMILIES:
        work = tmp_path_factory.mktemp(family.name)
        source, flags = family.make(root)
        wrapped = work / f"{family.name}.st"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["wrap", str(source), *flags, *LATENT, "-o", str(wrapped)]) == 0
        reference = reference_output(wrapped, work / "reference.safetensors")
        jobs.append([family.name, str(wrapped), str(reference), str(work), list(family.train_flags)])
    done = run_python(WALK, str(data), str(labs), json.dumps(jobs))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_a_wrapped_family_reloads_trains_merges_and_predicts_the_same_at_any_batch_size(family, walked):
    result = walked[family.name]
    assert result["identical"], "the block reloaded in a fresh process gives other outputs"
    assert result["ids_agree"] and result["samples"] == 388
    assert result["spread"] <= 1e-5, f"predictions depend on the batch size (max difference {result['spread']:.2e})"
    assert result["encoder"] == "frozen" and result["finite"]


def test_wrap_without_output_writes_next_to_the_encoder_and_says_where(family_data, tmp_path):
    root, _, _ = family_data
    source, flags = FAMILIES[-2].make(tmp_path)  # the dict-returning module, as a .pt2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["wrap", str(source), *flags, *LATENT]) == 0
    assert (tmp_path / "tabdict.st").is_file()
    assert "tabdict.st" in out.getvalue() and "exported in eval mode" in out.getvalue()


def test_training_a_wrapped_block_keeps_a_frozen_encoder_and_moves_the_rest(family_data, tmp_path):
    root, data, _ = family_data
    source, flags = FAMILIES[2].make(tmp_path)  # the TransformerEncoder with a padding mask
    wrapped, trained = tmp_path / "t.st", tmp_path / "trained.st"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["wrap", str(source), *flags, *LATENT, "-o", str(wrapped)]) == 0
        assert (
            main(["train", str(data), "--block", str(wrapped), "--epochs", "2", "--device", "cpu", "-o", str(trained)])
            == 0
        )
    import legokit

    before, after = legokit.load_block(wrapped).state_dict(), legokit.load_block(trained).state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["latent"], after["latent"])
    assert legokit.load_block(trained).provenance["trained"]["split"].startswith("random 70/15/15")
