"""SSF keeps complete samples at the base model by default, as its paper does (Reza et al., arXiv:2310.03986: the
network is pretrained on all modalities, then scale and shift sets are learned for the missing-modality combinations
with the pretrained weights frozen). `train_complete=True` learns a set for the complete combination too; adapter
files record which, and files written before the setting existed load with their trained complete rows."""

from __future__ import annotations

import json

import pytest
import torch

import legokit
from legokit import ArtifactError, ConfigError
from legokit.adapters import SSF, attach
from legokit.adapters.base import availability
from legokit.adapters.files import attach_file, load_adapter, save_adapter
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import ADAPTER
from legokit.compose.fuse import fuse
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig, parameter_groups
from legokit.training.workflows import adapt, labelled_data, parameter_counts, prepare_adaptation, train_block
from legokit.wrap import wrap_builtin

from .conftest import SMALL

CONFIG = TrainConfig(epochs=2, lr=1e-2, device="cpu")


@pytest.fixture(scope="module")
def pbc(tmp_path_factory):
    """The bundled PBC folder, a fused labs + visits base saved to a file, and its validation and test samples with
    which of them have every modality."""
    root = tmp_path_factory.mktemp("ssf-complete")
    folder = root / "pbc"
    write_pbc(folder)
    blocks = [
        train_block(
            folder,
            BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), depth=1, dim_head=16).override(epochs=1),
            progress=False,
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    base_path = legokit.save(fuse(blocks, "stack"), root / "base.st")
    base = legokit.load(base_path)
    data, _, modalities = labelled_data(base, folder, 0)
    ids = data.ids("val", modalities) + data.ids("test", modalities)
    batches, _ = data.batch(ids)
    complete = availability(batches, modalities).all(dim=1)
    assert 0 < int(complete.sum()) < len(ids)  # both kinds of samples are there
    complete_batches, _ = data.batch([i for i, c in zip(ids, complete) if c])
    return {
        "root": root,
        "folder": folder,
        "base": base_path,
        "batches": batches,
        "complete": complete,
        "logits": _logits(base, batches),
        "complete_batches": complete_batches,
    }


def _logits(model, batches):
    model.eval()
    with torch.no_grad():
        return model(batches)


def _adapted(pbc, **options):
    base = legokit.load(pbc["base"])
    adapted, _, counts = adapt(base, pbc["folder"], "ssf", config=CONFIG, progress=False, **options)
    return base, adapted, counts


@pytest.fixture(scope="module")
def default(pbc):
    return _adapted(pbc)


@pytest.fixture(scope="module")
def trained_complete(pbc):
    return _adapted(pbc, train_complete=True)


def test_complete_samples_keep_the_base_predictions_exactly(pbc, default):
    _, adapted, _ = default
    logits, complete, base = _logits(adapted, pbc["batches"]), pbc["complete"], pbc["logits"]
    assert torch.equal(logits[complete], base[complete])
    assert not torch.equal(logits[~complete], base[~complete])  # the missing-modality sets did train


def test_the_complete_combination_is_no_parameter_and_is_saved_as_the_identity(default):
    _, adapted, counts = default
    adapter = adapted.adapters[-1]
    assert adapter.train_complete is False and adapter.config()["train_complete"] is False
    for key, site in adapter.sites.items():
        assert site.scale.shape[0] == site.shift.shape[0] == 3  # 2^2 combinations, the complete one not trained
        state = adapter.state_dict()
        scale, shift = state[f"sites.{key}.scale"], state[f"sites.{key}.shift"]
        assert scale.shape[0] == shift.shape[0] == 4  # a file holds every combination
        assert torch.equal(scale[3], torch.ones_like(scale[3])) and torch.equal(shift[3], torch.zeros_like(shift[3]))
        assert torch.equal(scale[:3], site.scale.detach())
    assert counts["trainable"] == counts["adapter_all_sets"] == sum(p.numel() for p in adapter.parameters())
    assert counts["sets"] == 4 and counts["adapter_one_set"] * 3 == counts["adapter_all_sets"]


def test_with_train_complete_complete_samples_change_too(pbc, trained_complete):
    _, adapted, counts = trained_complete
    logits, complete, base = _logits(adapted, pbc["batches"]), pbc["complete"], pbc["logits"]
    assert not torch.equal(logits[complete], base[complete])
    assert not torch.equal(logits[~complete], base[~complete])
    assert counts["adapter_one_set"] * 4 == counts["adapter_all_sets"]
    assert all(site.scale.shape[0] == 4 for site in adapted.adapters[-1].sites.values())


@pytest.mark.parametrize("which", ["default", "trained_complete"])
def test_a_saved_adapter_reloads_with_the_same_behaviour(pbc, which, request):
    base, adapted, _ = request.getfixturevalue(which)
    adapter = adapted.adapters[-1]
    path = save_adapter(adapted, adapter, pbc["root"] / f"{which}.ssf.st", base.source_sha256)
    assert read_artifact(path).config["train_complete"] is (which == "trained_complete")
    loaded, _, _, _ = load_adapter(path)
    assert loaded.train_complete is adapter.train_complete
    again = attach_file(legokit.load(pbc["base"]), path)
    assert torch.equal(_logits(again, pbc["batches"]), _logits(adapted, pbc["batches"]))
    if which == "default":
        complete = pbc["complete"]
        assert torch.equal(_logits(again, pbc["batches"])[complete], pbc["logits"][complete])


def test_a_file_written_before_the_setting_uses_its_trained_complete_rows(pbc, trained_complete):
    base, adapted, _ = trained_complete
    path = save_adapter(adapted, adapted.adapters[-1], pbc["root"] / "new.ssf.st", base.source_sha256)
    source = read_artifact(path)
    config = json.loads(json.dumps(source.config))
    del config["train_complete"]  # as legokit wrote it before
    old = write_artifact(pbc["root"] / "old.ssf.st", ADAPTER, config, dict(source.tensors))
    loaded, _, _, _ = load_adapter(old)
    assert loaded.train_complete is True
    again = attach_file(legokit.load(pbc["base"]), old)
    logits, complete = _logits(again, pbc["batches"]), pbc["complete"]
    assert torch.equal(logits, _logits(adapted, pbc["batches"]))
    assert not torch.equal(logits[complete], pbc["logits"][complete])


@pytest.mark.parametrize("value", [1, "yes", None, [True]])
def test_a_train_complete_of_another_type_is_a_one_line_error(pbc, default, value):
    base, adapted, _ = default
    path = save_adapter(adapted, adapted.adapters[-1], pbc["root"] / "typed.ssf.st", base.source_sha256)
    source = read_artifact(path)
    config = {**json.loads(json.dumps(source.config)), "train_complete": value}
    bad = write_artifact(pbc["root"] / "bad.ssf.st", ADAPTER, config, dict(source.tensors))
    with pytest.raises(ArtifactError, match="train_complete must be a bool") as caught:
        load_adapter(bad)
    assert "\n" not in str(caught.value)


def test_the_complete_rows_get_no_gradient_and_no_weight_decay(pbc):
    """Even with every sample complete, the default adapter has nothing to train for them: the model is the base."""
    model = attach(legokit.load(pbc["base"]).eval(), SSF(["labs", "visits"]))
    adapter = model.adapters[-1]
    optimiser = torch.optim.AdamW(adapter.parameters(), lr=0.1, weight_decay=0.5)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    model(pbc["complete_batches"]).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in adapter.parameters())
    optimiser.step()
    after = adapter.state_dict()
    for key in before:  # the identity rows are not parameters: weight decay cannot move them
        assert torch.equal(after[key][-1], before[key][-1])


def test_train_complete_is_an_ssf_setting_and_a_bool():
    model = fuse([_small("tab", 0), _small("lab", 1)], "stack")
    with pytest.raises(ConfigError, match="train_complete is a setting of SSF only"):
        prepare_adaptation(model, "mora", train_complete=True)
    with pytest.raises(ConfigError, match="must be True or False"):
        SSF(["tab", "lab"], train_complete="yes")
    counts = parameter_counts(prepare_adaptation(model, "ssf", train_complete=True))
    assert counts["sets"] == 4 and counts["adapter_one_set"] * 4 == counts["adapter_all_sets"]


def _small(modality: str, seed: int):
    torch.manual_seed(seed)
    return wrap_builtin("snn", None, modality, "survival:4", {"in_features": 10, "hidden": 16}, **SMALL)


def test_ssf_scales_train_without_weight_decay_so_unseen_combinations_stay_the_identity(pbc):
    """AdamW decays every row of a tensor that has a gradient: an SSF scale (identity 1) would shrink towards 0 for
    the modality combinations a batch lacks. Scales are left out of weight decay; shifts (identity 0) keep it."""
    model = attach(legokit.load(pbc["base"]).eval(), SSF(["labs", "visits"]))
    sites = [m for m in model.modules() if getattr(m, "no_weight_decay", None)]
    groups = parameter_groups(model, TrainConfig(weight_decay=0.5))
    undecayed = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    assert undecayed == {id(site.scale) for site in sites}
    optimiser = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)
    complete = pbc["complete"]
    lacking = {
        m: b.__class__(
            b.x[~complete],
            None if b.mask is None else b.mask[~complete],
            None if b.present is None else b.present[~complete],
        )
        for m, b in pbc["batches"].items()
    }
    model(lacking).sum().backward()
    site = next(site for site in sites if site.scale.grad is not None)
    rows = site.scale.grad.abs().sum(dim=1) == 0  # combinations these samples do not have
    before = site.scale.detach().clone()
    optimiser.step()
    assert rows.any() and torch.equal(site.scale.detach()[rows], before[rows])
