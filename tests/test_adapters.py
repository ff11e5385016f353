"""Missing-modality adapters: MoRA and SSF on legokit models and on any nn.Module, their artifacts, the protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from legokit import ConfigError, ShapeError, load, save
from legokit.adapters import SSF, Adapted, MissingRates, MoRA, attach, detach
from legokit.adapters.files import attach_file, save_adapter
from legokit.compose.fuse import fuse
from legokit.compose.merge import merge
from legokit.data import ModalityBatch
from legokit.wrap import wrap_builtin

from .conftest import SMALL, cli_here


def _blocks():
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", "survival:4", {"in_features": 10, "hidden": 16}, **SMALL).eval()
    seq = wrap_builtin("abmil", None, "seq", "survival:4", {"in_features": 5, "hidden": 16}, **SMALL).eval()
    return tab, seq


def _inputs(observed_seq=(True, False, True, False)):
    torch.manual_seed(1)
    return {
        "tab": ModalityBatch(torch.randn(4, 10)),
        "seq": ModalityBatch(torch.randn(4, 6, 5), observed=torch.tensor(observed_seq)),
    }


def _randomise(adapter):
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_()


@pytest.mark.parametrize(
    "make",
    [lambda b: fuse(list(b), "stack"), lambda b: fuse(list(b), "weave"), lambda b: merge(list(b))],
    ids=["stack", "weave", "merge"],
)
@pytest.mark.parametrize(
    "adapter, at",
    [
        (lambda: MoRA(["tab", "seq"], rank=4), "first"),
        (lambda: MoRA(["tab", "seq"], rank=2), "all"),
        (lambda: SSF(["tab", "seq"]), "all"),
    ],
    ids=["mora-first", "mora-all", "ssf"],
)
def test_an_adapted_model_starts_exactly_as_its_base(make, adapter, at):
    model = make(_blocks()).eval()
    inputs = _inputs()
    expected = model(inputs)
    adapted = attach(model, adapter(), at)
    assert torch.equal(adapted(inputs), expected)


@pytest.mark.parametrize("adapter", [lambda: MoRA(["tab", "seq"]), lambda: SSF(["tab", "seq"])], ids=["mora", "ssf"])
def test_a_samples_adaptation_depends_only_on_its_own_modality_pattern(adapter):
    model = attach(fuse(list(_blocks()), "stack").eval(), adapter())
    _randomise(model.adapters[0])
    inputs = _inputs()
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    out = model(inputs, modality_mask=mask)
    flipped = mask.clone()
    flipped[1:, 1] = ~flipped[1:, 1]  # change every other sample's pattern
    assert torch.equal(model(inputs, modality_mask=flipped)[0], out[0])
    assert not torch.allclose(out[1], model(inputs, modality_mask=flipped)[1])
    alone = {k: ModalityBatch(v.x[:1], None if v.mask is None else v.mask[:1]) for k, v in inputs.items()}
    assert torch.allclose(model(alone, modality_mask=mask[:1]), out[:1], atol=1e-5)


def test_mora_is_vectorised_and_equals_a_per_sample_loop():
    adapter = MoRA(["a", "b", "c"], rank=3, features=(6, 5))
    linear = nn.Linear(6, 5)
    adapted = attach(nn.Sequential(linear), adapter, ["0"])
    _randomise(adapter)
    x = torch.randn(7, 2, 6)
    mask = torch.rand(7, 3) > 0.5
    site = adapter.sites["0"]
    expected = torch.stack(
        [
            linear(x[i]) + sum(site.up[m] @ (site.down @ x[i].T) for m in range(3) if mask[i, m]).T
            if mask[i].any()
            else linear(x[i])
            for i in range(7)
        ]
    )
    assert torch.allclose(adapted(x, modality_mask=mask), expected, atol=1e-5)


def test_adapters_attach_to_any_module_given_a_mask():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True).eval()
    user_model = nn.Sequential(nn.Linear(4, 8), layer)
    x = torch.randn(3, 5, 4)
    before = user_model(x)
    adapted = attach(user_model, MoRA(["img", "txt"], rank=2, features=(8, 8)), ["1"])
    adapted = attach(adapted, SSF(["img", "txt"]), ["1.linear1", "1.norm1"])
    mask = torch.tensor([[True, False], [False, True], [True, True]])
    assert torch.equal(adapted(x, modality_mask=mask), before)
    for adapter in adapted.adapters:
        _randomise(adapter)
    assert not torch.allclose(adapted(x, modality_mask=mask), before)
    with pytest.raises(ShapeError, match="pass modality_mask="):
        adapted(x)
    assert torch.equal(detach(detach(adapted))(x), before)


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(3, 2, dtype=torch.bool), "modality mask is for 3 samples, the input here has 4"),
        (torch.ones(4, 3, dtype=torch.bool), r"must be bool \(batch, 2\)"),
        (torch.ones(4, 2), r"must be bool \(batch, 2\)"),
    ],
)
def test_masks_that_disagree_with_the_data_are_a_clear_error(mask, message):
    model = attach(fuse(list(_blocks()), "stack").eval(), MoRA(["tab", "seq"]))
    with pytest.raises(ShapeError, match=message):
        model(_inputs(), modality_mask=mask)


def test_unknown_sites_and_bad_settings_are_refused():
    model = fuse(list(_blocks()), "stack")
    with pytest.raises(ConfigError, match="no module 'blocks.tab.layer.0'"):
        attach(model, MoRA(["tab", "seq"]), "blocks.tab.layer.0")
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        MoRA(["tab", "seq"], rank=0)
    with pytest.raises(ConfigError, match="'tokens' is defined for legokit models"):
        attach(nn.Linear(2, 2), MoRA(["a", "b"]))
    with pytest.raises(ConfigError, match="'first' is defined for legokit models"):
        attach(nn.Linear(2, 2), MoRA(["a", "b"]), "first")


def test_save_attach_detach_round_trip_and_another_base_is_refused(tmp_path):
    blocks = _blocks()
    base_path = save(fuse(list(blocks), "stack"), tmp_path / "fused.st")
    base = load(base_path)
    adapted = attach(base, MoRA(["tab", "seq"]))
    _randomise(adapted.adapters[0])
    with torch.no_grad():
        adapted.base.head.linear.bias.add_(0.5)
    inputs = _inputs()
    expected = adapted(inputs)
    path = save_adapter(adapted, adapted.adapters[0], tmp_path / "fused.mora.st", base.source_sha256)
    again = attach_file(load(base_path), path)
    assert torch.equal(again(inputs), expected)
    ssf = attach(again, SSF(["tab", "seq"]))  # one base, several adapters
    assert torch.equal(ssf(inputs), expected)
    plain = detach(detach(ssf))
    assert isinstance(plain, nn.Module) and not isinstance(plain, Adapted)
    other = save(fuse(list(reversed(blocks)), "stack"), tmp_path / "other.st")
    with pytest.raises(ConfigError, match="this adapter was trained on base"):
        attach_file(load(other), path)


def test_missing_rates_make_zero_dummies_drawn_per_sample_and_seeded():
    rates = MissingRates.parse("seq=0.5", seed=3)
    batch = {
        "tab": ModalityBatch(torch.ones(200, 2)),
        "seq": ModalityBatch(torch.ones(200, 3, 2), torch.ones(200, 3, dtype=torch.bool), torch.arange(200) % 10 != 0),
    }
    ids = [f"p{i}" for i in range(200)]
    out = rates.apply(batch, ids, ["tab", "seq"])
    seq = out["seq"]
    assert seq.present.all() and out["tab"].observed.all()
    assert not seq.observed[::10].any()  # absent in the data: a dummy too
    dummies = ~seq.observed
    assert (seq.x[dummies] == 0).all() and (seq.x[~dummies] == 1).all()
    assert seq.mask[dummies].sum(dim=1).eq(1).all()
    assert 0.4 < dummies[torch.arange(200) % 10 != 0].float().mean() < 0.6
    assert torch.equal(rates.apply(batch, ids, ["tab", "seq"])["seq"].observed, seq.observed)
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        MissingRates.parse("seq=1.5")
    with pytest.raises(ConfigError, match="does not take"):
        MissingRates.parse("img=0.5").check(["tab", "seq"])


def test_only_the_adapter_and_the_head_train(tmp_path):
    from legokit.data.bundled import write_pbc
    from legokit.spec import BlockSpec
    from legokit.training.trainer import TrainConfig
    from legokit.training.workflows import adapt, train_block

    write_pbc(tmp_path / "pbc")
    blocks = [
        train_block(
            tmp_path / "pbc",
            BlockSpec(m, e, {"hidden": 16}, latent=(8, 16), dim_head=16).override(epochs=2),
            progress=False,
        )[0]
        for m, e in (("labs", "snn"), ("visits", "abmil"))
    ]
    model = fuse(blocks, "stack")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    adapted, result, counts = adapt(
        model,
        tmp_path / "pbc",
        "mora",
        train_missing="labs=0.7",
        config=TrainConfig(epochs=3, lr=1e-2, device="cpu"),
        progress=False,
    )
    state = adapted.base.state_dict()
    unwrapped = {k.replace(".inner", ""): v for k, v in state.items()}
    assert all(torch.equal(v, unwrapped[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, adapted.base.head.state_dict()[k]) for k, v in head.items())
    assert counts["trainable"] == sum(p.numel() for p in adapted.adapters.parameters()) + sum(
        v.numel() for v in head.values()
    )
    assert 0 < counts["percent"] < 5


def test_cli_adapt_prints_trainable_share_and_eval_uses_the_adapter(tmp_path):
    from legokit.data.bundled import write_pbc

    write_pbc(tmp_path / "pbc")
    flags = ["--latent", "8x16", "--epochs", "2", "--device", "cpu"]
    for modality, encoder in (("labs", "snn"), ("visits", "abmil")):
        result = cli_here(
            "train",
            str(tmp_path / "pbc"),
            "--modality",
            modality,
            "--encoder",
            encoder,
            *flags,
            "-o",
            str(tmp_path / f"{modality}.st"),
        )
        assert result.returncode == 0, result.stderr
    fused = cli_here(
        "fuse",
        str(tmp_path / "labs.st"),
        str(tmp_path / "visits.st"),
        "--data",
        str(tmp_path / "pbc"),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "fused.st"),
    )
    assert fused.returncode == 0, fused.stderr
    adapted = cli_here(
        "adapt",
        str(tmp_path / "fused.st"),
        "--adapter",
        "mora",
        "--data",
        str(tmp_path / "pbc"),
        "--missing",
        "labs=0.5",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "f.mora.st"),
    )
    assert adapted.returncode == 0, adapted.stderr
    assert "trainable parameters:" in adapted.stdout and "% of the" in adapted.stdout
    evaluated = cli_here(
        "eval",
        str(tmp_path / "fused.st"),
        str(tmp_path / "pbc"),
        "--adapter",
        str(tmp_path / "f.mora.st"),
        "--missing",
        "labs=0.5,visits=1.0",
    )
    assert evaluated.returncode == 0 and "c_index" in evaluated.stdout, evaluated.stderr
    wrong = cli_here("eval", str(tmp_path / "labs.st"), str(tmp_path / "pbc"), "--adapter", str(tmp_path / "f.mora.st"))
    assert wrong.returncode == 1 and "trained on base" in wrong.stderr
