"""Fusing and merging copy the blocks: fine-tuning a fused model, or adapting a merged one, leaves the caller's blocks
as they were, so the same blocks fused twice (stack, then weave) give what fresh copies of them give."""

from __future__ import annotations

import copy

import pytest
import torch

from legokit.adapters import SSF, attach
from legokit.adapters.base import Sited
from legokit.compose.fuse import fuse
from legokit.compose.merge import merge, own_blocks
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import fuse_blocks, train_block
from legokit.wrap import wrap_builtin

from .conftest import SMALL

CONFIG = TrainConfig(epochs=1, lr=1e-2, device="cpu")


@pytest.fixture(scope="module")
def pbc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuse-copies") / "pbc"
    write_pbc(folder)
    blocks = [
        train_block(
            folder,
            BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), depth=1, dim_head=16).override(epochs=1),
            progress=False,
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    return folder, blocks


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _fuse(blocks, folder, mode):
    model, _ = fuse_blocks(blocks, folder, mode, CONFIG, progress=False, cache=False)
    return model


def test_fine_tuning_a_fused_model_leaves_the_callers_blocks_unchanged(pbc):
    folder, blocks = pbc
    before = [_state(b) for b in blocks]
    flags = [[p.requires_grad for p in b.parameters()] for b in blocks]
    modes = [b.training for b in blocks]
    fused = _fuse(blocks, folder, "stack")
    assert all(_same(_state(b), s) for b, s in zip(blocks, before))
    assert [[p.requires_grad for p in b.parameters()] for b in blocks] == flags
    assert [b.training for b in blocks] == modes
    assert not any(f is b for f in fused.blocks.values() for b in blocks)
    theirs = {p.data_ptr() for b in blocks for p in b.parameters()}
    assert not theirs & {p.data_ptr() for p in fused.parameters()}
    # the fine-tuning did move the fused model's copies
    assert not all(_same(_state(fused.blocks[b.modality]), s) for b, s in zip(blocks, before))


def test_fusing_the_same_blocks_twice_gives_what_fresh_copies_give(pbc):
    folder, blocks = pbc
    fresh = copy.deepcopy(blocks)
    stacked = _fuse(blocks, folder, "stack")
    woven = _fuse(blocks, folder, "weave")  # after the stack fine-tuned: it must start from the same blocks
    assert _same(_state(woven), _state(_fuse(copy.deepcopy(fresh), folder, "weave")))
    assert _same(_state(stacked), _state(_fuse(blocks, folder, "stack")))


def _small(modality: str, seed: int):
    torch.manual_seed(seed)
    return wrap_builtin("snn", None, modality, "survival:4", {"in_features": 10, "hidden": 16}, **SMALL)


@pytest.mark.parametrize("combine", [lambda b: merge(b), lambda b: fuse(b, "stack")], ids=["merge", "fuse"])
def test_adapting_a_combined_model_does_not_wrap_the_callers_blocks(combine):
    blocks = [_small("tab", 0).train(), _small("lab", 1).train()]
    before = [_state(b) for b in blocks]
    model = attach(combine(blocks), SSF(["lab", "tab"]))
    model.requires_grad_(False)
    assert any(isinstance(m, Sited) for m in model.modules())
    assert not any(isinstance(m, Sited) for b in blocks for m in b.modules())
    assert all(b.training and all(p.requires_grad for p in b.parameters()) for b in blocks)
    assert all(_same(_state(b), s) for b, s in zip(blocks, before))


def test_a_bound_token_source_stays_with_the_original():
    blocks = [_small("tab", 0), _small("lab", 1)]
    source = lambda block, x, mask: None  # noqa: E731 -- stands in for `cache.CachedTokens`
    blocks[0].token_source = source
    copies = own_blocks(blocks)
    assert copies[0].token_source is None and blocks[0].token_source is source
    assert all(_same(_state(c), _state(b)) for c, b in zip(copies, blocks))
