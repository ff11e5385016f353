"""MoRA and SSF that see the input, under MoRA's own missing-modality protocol: exact counts for a total missing rate
shared between the modalities, dummies at the training mean, MoRA on the projections that read the encoder's
tokens, SSF with the head frozen as its paper does."""

from __future__ import annotations

import pytest
import torch

from legokit import ConfigError
from legokit.adapters import MoRA, attach
from legokit.adapters.missing import MissingSplit, with_dummies
from legokit.compose.fuse import fuse
from legokit.data import ModalityBatch
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.training.workflows import dummies_of, parameter_counts, prepare_adaptation, train_block

from .test_adapters import _blocks, _inputs, _randomise


def test_the_protocol_misses_exactly_eta_of_the_complete_samples_split_between_modalities():
    ids = [f"s{i}" for i in range(200)]
    complete = ids[:180]  # the last 20 already lack a modality: they keep what they have
    chosen = MissingSplit(0.7, 0.5, seed=3).assign(ids, complete, ["labs", "visits"])
    assert sum(m == "labs" for m in chosen.values()) == 63 and sum(m == "visits" for m in chosen.values()) == 63
    assert len(chosen) == round(0.7 * 180) and not set(chosen) & set(ids[180:])
    again = MissingSplit(0.7, 0.5, seed=3).assign(list(reversed(ids)), complete, ["labs", "visits"])
    assert again == chosen  # the draw depends on the seed and the ids, not on their order
    lopsided = MissingSplit(0.3, 0.25, seed=0).assign(ids, complete, ["labs", "visits"])
    assert [sum(m == k for m in lopsided.values()) for k in ("labs", "visits")] == [14, 40]


@pytest.mark.parametrize("rate, split", [(-0.1, 0.5), (0.7, 1.5), (True, 0.5)])
def test_a_rate_outside_0_1_is_refused(rate, split):
    with pytest.raises(ConfigError, match="must be in"):
        MissingSplit(rate, split)


def test_dummies_are_the_training_mean_so_zero_after_standardisation(tmp_path):
    folder = tmp_path / "pbc"
    write_pbc(folder)
    block, _ = train_block(
        folder, BlockSpec("labs", "snn", {"hidden": 16}, latent=(8, 16), dim_head=16).override(epochs=1), progress=False
    )
    means = dummies_of(block)["labs"]
    batch = ModalityBatch(torch.randn(3, 17) * 5 + 2)
    out = with_dummies({"labs": batch}, ["a", "b", "c"], ["labs"], {"labs": [False, True, False]}, {"labs": means})
    assert torch.equal(out["labs"].x[1], means) and torch.equal(out["labs"].x[0], batch.x[0])
    assert out["labs"].observed.tolist() == [True, False, True] and out["labs"].present.all()
    standardised = (out["labs"].x[1] - block.input_shift) / block.input_scale
    assert torch.equal(standardised, torch.zeros(17))


def test_a_dummy_bag_is_one_token_at_the_mean():
    batch = ModalityBatch(torch.randn(2, 4, 3), torch.tensor([[True, True, False, False], [True] * 4]))
    out = with_dummies(
        {"seq": batch}, ["a", "b"], ["seq"], {"seq": [True, False]}, {"seq": torch.tensor([1.0, 2.0, 3.0])}
    )
    assert out["seq"].mask[0].tolist() == [True, False, False, False]
    assert torch.equal(out["seq"].x[0, 0], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("at, sees_input", [("tokens", True), ("first", False)])
def test_mora_sees_the_input_where_the_tokens_flow_and_not_on_the_latent(at, sees_input):
    """What MoRA adds (B_m A x at its sites), for four samples with one modality pattern: it depends on the input at
    the token projections; at the first update layer its input is the learned latent, the same for every sample."""
    adapted = attach(fuse(list(_blocks()), "stack").eval(), MoRA(["tab", "seq"], rank=4), at)
    _randomise(adapted.adapters[0])
    added = []
    hooks = [
        site.register_forward_hook(lambda module, args, out: added.append(out))
        for site in adapted.adapters[0].sites.values()
    ]
    with torch.no_grad():
        adapted(_inputs(observed_seq=(True, True, True, True)), modality_mask=torch.ones(4, 2, dtype=torch.bool))
    for hook in hooks:
        hook.remove()
    assert added and all(bool(out.abs().sum() > 0) for out in added)  # B is non-zero
    varies = any(float((out - out[:1]).abs().max()) > 1e-5 for out in added)
    assert varies == sees_input


def test_mora_is_placed_on_each_blocks_first_key_value_projection_by_default():
    adapted = attach(fuse(list(_blocks()), "stack").eval(), MoRA(["tab", "seq"]))
    assert adapted.adapters[0].placement == [
        "blocks.tab.layers.0.attention.to_kv",
        "blocks.seq.layers.0.attention.to_kv",
    ]


def test_ssf_keeps_the_head_frozen_as_its_paper_does_unless_asked():
    frozen = prepare_adaptation(fuse(list(_blocks()), "stack"), "ssf")
    assert not any(p.requires_grad for p in frozen.base.head.parameters())
    assert all(p.requires_grad for p in frozen.adapters[0].parameters())
    trained = prepare_adaptation(fuse(list(_blocks()), "stack"), "ssf", train_head=True)
    assert all(p.requires_grad for p in trained.base.head.parameters())
    mora = prepare_adaptation(fuse(list(_blocks()), "stack"), "mora")
    assert all(p.requires_grad for p in mora.base.head.parameters())


@pytest.mark.parametrize("method", ["mora", "ssf"])
def test_adapter_shares_are_reported_per_modality_set_and_for_all_sets(method):
    counts = parameter_counts(prepare_adaptation(fuse(list(_blocks()), "stack"), method))
    assert counts["sets"] == (2 if method == "mora" else 4)
    assert 0 < counts["adapter_one_set"] < counts["adapter_all_sets"]
    assert (
        counts["percent_one_set"]
        < counts["percent_all_sets"]
        <= counts["percent"] + 1e-9 + (0 if method == "ssf" else 100)
    )
    assert counts["adapted_layers"] > 0 and counts["overhead_vs_adapted_layers"] > 0


def test_an_adapter_whose_head_stayed_frozen_leaves_the_models_head_alone(tmp_path):
    from legokit import load, save
    from legokit.adapters.files import attach_file, load_adapter, save_adapter

    path = save(fuse(list(_blocks()), "stack"), tmp_path / "fused.st")
    frozen = prepare_adaptation(load(path), "ssf")
    save_adapter(frozen, frozen.adapters[0], tmp_path / "f.ssf.st", load(path).source_sha256)
    _, head, _, _ = load_adapter(tmp_path / "f.ssf.st")
    assert head == {}
    model = load(path)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.add_(1.0)  # a head another adapter trained
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    adapted = attach_file(model, tmp_path / "f.ssf.st")
    assert all(torch.equal(before[k], v) for k, v in adapted.base.head.state_dict().items())


def test_eval_over_all_splits_scores_every_sample_under_the_protocol(tmp_path):
    from legokit.training.workflows import evaluate_missing, fuse_blocks

    folder = tmp_path / "pbc"
    write_pbc(folder)
    blocks = [
        train_block(
            folder, BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), dim_head=16).override(epochs=1), progress=False
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    fused, _ = fuse_blocks(blocks, folder, "stack", progress=False)
    found = evaluate_missing(fused, folder, None, split="all", missing_rate=0.7)
    assert found["samples"] == 388 and 0.0 < found["c_index"] <= 1.0
