"""A new missing-modality adapter in one file: defined, registered with `register_adapter` (as MoRA and SSF are),
trained by the library's `adapt` on the bundled PBC data, saved, and attached again from its file with identical
outputs; the registry refuses a taken name and names the registered adapters when asked for an unknown one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn

import legokit
from legokit import ArtifactError, ConfigError
from legokit.adapters import Adapter, MoRA, adapter_class, adapter_names, attach, register_adapter, registry
from legokit.adapters.base import Sited, site_key
from legokit.adapters.config import AdaptConfig
from legokit.adapters.files import attach_file, load_adapter, save_adapter
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import ADAPTER
from legokit.cli.commands import build_parser
from legokit.compose.fuse import fuse
from legokit.data.bundled import write_pbc
from legokit.spec import BlockSpec
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import adapt, labelled_data, train_block


class BiasSite(nn.Module):
    """One bias per modality for a layer of `out_features` outputs, zero at the start: the adapted model is the base."""

    def __init__(self, in_features: int, out_features: int, modalities: int):
        super().__init__()
        self.in_features = in_features
        self.bias = nn.Parameter(torch.zeros(modalities, out_features))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(self.bias.dtype) @ self.bias  # (b, out): the sum of the biases of the modalities a sample has


class BiasWrapped(Sited):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner(x, *args, **kwargs)
        shift = self.site(self.adapter.mask_for(out))
        return out + shift.reshape(out.shape[0], *([1] * (out.dim() - 2)), -1).to(out.dtype)


class ModalityBias(Adapter):
    """out + sum over the modalities m a sample has of b_m, after the linear layers it targets."""

    summary = "a bias per modality"
    trains_head = True
    default_at = "tokens"

    def build_site(self, sizes: Sequence[int]) -> nn.Module:
        return BiasSite(sizes[0], sizes[1], len(self.modalities))

    def sizes_for(self, module: nn.Module) -> list[int]:
        return [int(module.in_features), int(module.out_features)]

    def site_sizes(self, site: nn.Module) -> list[int]:
        return [site.in_features, site.bias.shape[1]]

    def site_shapes(self, sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
        return {"bias": (len(self.modalities), sizes[1])}

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return BiasWrapped(module, self, site_key(name))


@pytest.fixture(scope="module")
def registered():
    """`bias` registered for this module's tests only: the registry is as it was afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
        assert register_adapter("bias")(ModalityBias) is ModalityBias
        yield ModalityBias
    assert "bias" not in adapter_names()


@pytest.fixture(scope="module")
def pbc(tmp_path_factory, registered):
    root = tmp_path_factory.mktemp("plugin-adapter")
    write_pbc(root / "pbc")
    blocks = [
        train_block(
            root / "pbc",
            BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), depth=1, dim_head=16).override(epochs=1),
            progress=False,
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    base = legokit.save(fuse(blocks, "stack"), root / "base.st")
    model = legokit.load(base)
    data, _, modalities = labelled_data(model, root / "pbc", 0)
    batches, _ = data.batch(data.ids("test", modalities))
    return {"root": root, "folder": root / "pbc", "base": base, "batches": batches}


def _logits(model: nn.Module, batches) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batches)


def test_a_registered_adapter_trains_saves_and_attaches_again_with_identical_outputs(pbc):
    base = legokit.load(pbc["base"])
    before = _logits(base, pbc["batches"])
    adapted, result, counts = adapt(
        base, pbc["folder"], "bias", config=TrainConfig(epochs=2, lr=1e-2, device="cpu"), progress=False
    )
    adapter = adapted.adapters[-1]
    assert isinstance(adapter, ModalityBias) and adapter.kind == "bias" and adapter.placement
    assert all(name.endswith("to_kv") for name in adapter.placement)  # its own default sites
    assert any(bool(site.bias.abs().sum() > 0) for site in adapter.sites.values())  # it trained
    assert counts["sets"] == 2 and counts["adapter_all_sets"] == sum(p.numel() for p in adapter.parameters())
    assert result.test and not torch.equal(_logits(adapted, pbc["batches"]), before)

    path = save_adapter(adapted, adapter, pbc["root"] / "bias.st", base.source_sha256)
    config = read_artifact(path).config
    assert config["type"] == "bias" and config["head_trained"] is True
    assert set(config["sites"]) == {site_key(n) for n in adapter.placement}
    again = attach_file(legokit.load(pbc["base"]), path)
    assert isinstance(again.adapters[-1], ModalityBias)
    assert torch.equal(_logits(again, pbc["batches"]), _logits(adapted, pbc["batches"]))


def test_a_registered_adapter_is_a_choice_of_the_cli_and_of_adapt_config(registered):
    args = build_parser().parse_args(["adapt", "m.st", "--method", "bias", "--data", "D", "-o", "x.st"])
    assert args.method == "bias"
    assert AdaptConfig("bias").adapter_kwargs() == {}
    with pytest.raises(ConfigError, match=r"^rank is a setting of MoRA only; the 'bias' adaptation does not take it$"):
        AdaptConfig("bias", rank=8)


def test_a_taken_name_is_refused(registered):
    with pytest.raises(ConfigError, match=r"adapter 'mora' is already registered \(MoRA\)"):
        register_adapter("mora")(ModalityBias)
    with pytest.raises(ConfigError, match="an adapter name must be a Python identifier other than head, full"):
        register_adapter("full")(ModalityBias)
    with pytest.raises(ConfigError, match="does not define build_site, sizes_for, site_sizes, site_shapes, wrap"):
        register_adapter("empty")(type("Empty", (Adapter,), {}))
    assert register_adapter("bias")(ModalityBias) is ModalityBias  # the same class again is no conflict


def test_an_unknown_adapter_is_a_one_line_error_naming_the_registered_ones(pbc):
    with pytest.raises(ConfigError) as caught:
        adapter_class("lora")
    assert str(caught.value) == "unknown adapter 'lora'; registered adapters are mora, ssf, bias"
    with pytest.raises(ConfigError, match=r"^unknown adaptation 'lora'; choose one of head, mora, ssf, bias, full$"):
        AdaptConfig("lora")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapt", "m.st", "--method", "lora", "--data", "D", "-o", "x.st"])
    base_sha = legokit.load(pbc["base"]).source_sha256
    source = read_artifact(save_adapter(*_untrained(pbc), pbc["root"] / "mora.st", base_sha))
    bad = write_artifact(pbc["root"] / "lora.st", ADAPTER, {**source.config, "type": "lora"}, dict(source.tensors))
    with pytest.raises(ArtifactError) as caught:
        load_adapter(bad)
    assert str(caught.value).endswith("unknown adapter type 'lora' (legokit knows mora, ssf, bias)")
    assert "\n" not in str(caught.value)


def _untrained(pbc):
    adapted = attach(legokit.load(pbc["base"]), MoRA(["labs", "visits"], rank=2))
    return adapted, adapted.adapters[-1]
