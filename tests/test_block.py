"""Numerical behaviour of LegoBlock (MM-Lego Eq. 1-3)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat
from torch import nn

from legokit import BlockConfig, EncoderSpec, LegoBlock, ShapeError, TaskSpec
from legokit.errors import ConfigError
from legokit.wrap import wrap_builtin

from .conftest import SMALL


@pytest.mark.parametrize("task, width", [("survival:4", 4), ("multiclass:3", 3), ("binary", 1), ("multilabel:5", 5)])
def test_head_emits_one_logit_per_task_output(task, width):
    block = wrap_builtin("snn", None, "tab", task, {"in_features": 10, "hidden": 16}, **SMALL)
    out = block(torch.randn(7, 10))
    assert out.shape == (7, width)
    assert torch.isfinite(out).all()


def test_encode_returns_a_complex_frequency_domain_latent(snn_block):
    latent = snn_block.encode(torch.randn(3, 10))
    assert latent.shape == (3, 8, 16)
    assert latent.is_complex()
    assert latent.imag.abs().sum() > 0  # the last step is not inverted back to a real latent


def test_encoder_runs_once_per_forward_whatever_the_depth():
    calls = []
    config = BlockConfig(
        "tab",
        EncoderSpec("snn", {"in_features": 10, "hidden": 16}, 16),
        (10,),
        TaskSpec("binary"),
        latent=(8, 16),
        depth=5,
        dim_head=16,
    )
    block = LegoBlock(config)
    block.encoder.register_forward_hook(lambda *_: calls.append(1))
    block(torch.randn(4, 10))
    assert len(calls) == 1


def test_learned_latent_is_not_overwritten_by_a_forward_pass(snn_block):
    before = snn_block.latent.detach().clone()
    snn_block.train()
    snn_block(torch.randn(4, 10))
    assert torch.equal(before, snn_block.latent.detach())


def test_imaginary_part_passes_through_an_update_step_unchanged(snn_block):
    tokens, mask = snn_block.tokens(torch.randn(2, 10))
    latent = snn_block.start(2)
    spectrum = torch.fft.fftn(latent, dim=(-2, -1))
    stepped = snn_block.step(0, latent, tokens, mask)
    assert torch.allclose(stepped.imag, spectrum.imag)
    assert not torch.allclose(stepped.real, spectrum.real)


def test_fft_axes_choice_changes_the_latent():
    torch.manual_seed(0)
    both = wrap_builtin("snn", None, "tab", "binary", {"in_features": 10, "hidden": 16}, fft_axes="both", **SMALL)
    channels = wrap_builtin(
        "snn", None, "tab", "binary", {"in_features": 10, "hidden": 16}, fft_axes="channels", **SMALL
    )
    channels.load_state_dict(both.state_dict())
    x = torch.randn(2, 10)
    assert not torch.allclose(both.encode(x), channels.encode(x))


def test_gradients_reach_the_latent_the_layers_and_the_encoder(snn_block, mlp_block):
    mlp_block.train()
    mlp_block(torch.randn(6, 5, 4)).sum().backward()
    for name, parameter in mlp_block.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    snn_block.train()
    snn_block(torch.randn(6, 10)).sum().backward()
    query_side = ("attention.norm_query", "attention.to_q")  # cannot move the output when there is one key
    for name, parameter in snn_block.named_parameters():
        if any(part in name for part in query_side):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert snn_block.latent.grad.abs().sum() > 0
    assert snn_block.encoder.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("heads", [1, 8])
def test_one_token_attention_takes_the_exact_shortcut(heads):
    """With one key the softmax weight is 1 for every query: the shortcut (no query projection, no softmax) must
    equal full attention, computed here over two copies of the token (two equal keys also give the value)."""
    from legokit.nn.layers import CrossAttention

    torch.manual_seed(heads)
    attention = CrossAttention(32, 24, heads=heads, dim_head=8)
    query, token = torch.randn(5, 16, 32), torch.randn(5, 1, 24, requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])
    fast = attention(query, token, rearrange(mask, "b -> b 1"))
    full = attention(query, torch.cat([token, token], dim=1), repeat(mask, "b -> b 2"))
    assert (fast - full).abs().max() <= 1e-6
    assert torch.equal(fast[2], torch.zeros_like(fast[2]))  # a masked token: no update
    (grad_fast,) = torch.autograd.grad(fast.sum(), token)
    (grad_full,) = torch.autograd.grad(full.sum(), token)
    assert (grad_fast - grad_full).abs().max() <= 1e-5


def test_padded_instances_do_not_change_an_abmil_block_output(abmil_block):
    bag = torch.randn(1, 4, 5)
    padded = torch.cat([bag, torch.randn(1, 3, 5) * 100], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    assert torch.allclose(abmil_block(bag), abmil_block(padded, mask), atol=1e-5)


def test_abmil_softmax_is_over_instances_not_the_batch(abmil_block):
    bags = torch.randn(5, 6, 5)
    alone = abmil_block(bags[:1])
    together = abmil_block(bags)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_padded_tokens_do_not_change_a_token_wise_block_output(mlp_block):
    seq = torch.randn(1, 3, 4)
    padded = torch.cat([seq, torch.full((1, 2, 4), 1e3)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    assert torch.allclose(mlp_block(seq), mlp_block(padded, mask), atol=1e-5)


def test_a_sample_with_no_tokens_gives_finite_output_and_leaves_others_alone(mlp_block):
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    out = mlp_block(x, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:1], mlp_block(x[:1]), atol=1e-5)


def test_wrong_input_shape_is_a_shape_error_naming_the_modality(snn_block):
    with pytest.raises(ShapeError, match=r"modality tab: expected input of shape \(batch, 10\), got \(4, 9\)"):
        snn_block(torch.randn(4, 9))


def test_mask_of_the_wrong_shape_is_a_shape_error(abmil_block):
    with pytest.raises(ShapeError, match="mask must be bool"):
        abmil_block(torch.randn(2, 4, 5), torch.ones(2, 3, dtype=torch.bool))


def test_encoder_that_takes_bags_refuses_a_vector_input_shape():
    with pytest.raises(ConfigError, match="takes a bag of tokens"):
        wrap_builtin("abmil", None, "img", "binary", {"in_features": 5}, input_shape=(5,), **SMALL)


def test_block_accepts_any_user_module_as_a_live_encoder():
    class Tokens(nn.Module):
        out_dim = 12

        def forward(self, x):
            return x.repeat(1, 1, 2)

    config = BlockConfig("seq", EncoderSpec("custom", {}, 12), (None, 6), TaskSpec("binary"), latent=(4, 8), dim_head=8)
    block = LegoBlock(config, encoder=Tokens())
    assert block(torch.randn(3, 5, 6)).shape == (3, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_block_on_cuda_matches_cpu_within_tolerance(snn_block):
    x = torch.randn(4, 10)
    expected = snn_block(x)
    got = snn_block.to("cuda")(x.to("cuda")).cpu()
    assert torch.allclose(expected, got, atol=1e-4)
