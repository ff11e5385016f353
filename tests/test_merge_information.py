"""What makes a merge able to add information: a head that reads only what varies with the sample, blocks that
share their initialisation, a table encoder that gives cross-attention one token per feature, and merge weights
from the blocks' validation metrics (`--weights auto`)."""

from __future__ import annotations

import pytest
import torch

import legokit
from legokit import ConfigError
from legokit.cli.commands import main
from legokit.compose.merge import auto_weights, merge
from legokit.data.bundled import write_pbc
from legokit.data.training import SplitData
from legokit.encoders import FeatureTokens, build_encoder
from legokit.nn.block import DEFAULT_HEAD_FEATURES, BlockConfig, EncoderSpec, LegoBlock
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.workflows import train_block

from .hostile import resealed

TASK = TaskSpec("survival", 4)


@pytest.fixture(scope="module")
def pbc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pbc") / "data"
    write_pbc(folder)
    return folder


@pytest.fixture(scope="module")
def labs(pbc):
    """The PBC registration table, standardised: 17 real features per patient."""
    data = SplitData.load(pbc, {"labs": (17,)}, TASK)
    x = data.folder.batch(data.ids("train"))["labs"].x
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)


def block(encoder: str = "snn", features: int = 17, modality: str = "tab", seed: int = 0, **config) -> LegoBlock:
    torch.manual_seed(seed)
    kwargs = {"in_features": features}
    module = build_encoder(encoder, kwargs)
    spec = EncoderSpec(encoder, kwargs, module.out_dim)
    return LegoBlock(BlockConfig(modality, spec, (features,), TASK, (8, 16), 3, **config), encoder=module).eval()


def imag_spread(model: LegoBlock, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.encode(x).imag.std(dim=0).max())


def test_the_default_head_reads_im_only_if_im_depends_on_the_sample(labs):
    model = block()
    reads_im = DEFAULT_HEAD_FEATURES != "real"
    assert not reads_im or imag_spread(model, labs) > 1e-3
    assert model.task_head.linear.in_features == (32 if reads_im else 16)


def test_the_papers_real_update_leaves_im_the_same_for_every_sample(labs):
    assert imag_spread(block(update="real"), labs) < 1e-5
    assert imag_spread(block(update="complex"), labs) > 1e-3


def test_settings_that_change_the_latent_or_the_head_must_agree_to_merge():
    for key, a, b in (
        ("update", "real", "complex"),
        ("head_features", "real", "re-im"),
        ("fft_axes", "both", "channels"),
    ):
        first, second = block(modality="a", **{key: a}), block(modality="b", **{key: b})
        with pytest.raises(ConfigError, match=key.replace("_", " ").replace("fft axes", "FFT axes")):
            merge([first, second])


def test_files_written_before_these_settings_load_with_the_v01_math():
    data = block(update="complex", head_features="real").config.to_dict()
    for key in ("update", "head_features", "shared_init"):
        data.pop(key)
    legacy = BlockConfig.from_dict(data)
    assert (legacy.update, legacy.head_features, legacy.shared_init) == ("real", "re-im", False)


def test_blocks_share_their_initialisation_whatever_the_encoder_and_seed():
    first, second = block("snn", 17, seed=0), block("tokens", 7, seed=5)
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    shared = [n for n in a if not n.startswith("encoder") and "context" not in n and "to_kv" not in n]
    assert shared and all(torch.equal(a[n], b[n]) for n in shared)
    unshared = block("snn", 17, seed=1, shared_init=False)
    assert not torch.equal(unshared.latent, first.latent)


def test_shared_initialisation_leaves_the_global_random_stream_alone():
    torch.manual_seed(11)
    block(shared_init=False)
    without = torch.rand(4)
    torch.manual_seed(11)
    block(shared_init=True)
    assert torch.equal(torch.rand(4), without)


def test_feature_tokens_give_one_token_per_feature_and_group_wide_tables():
    small = FeatureTokens(20, dim=8)
    assert small(torch.randn(3, 20)).shape == (3, 20, 8)
    wide = FeatureTokens(1000, dim=8, max_tokens=256)
    assert wide.group == 4 and wide(torch.randn(2, 1000)).shape == (2, 250, 8)
    x = torch.zeros(1, 20)
    x[0, 4] = 2.0
    tokens = small(x)
    assert torch.allclose(tokens[0, 4], 2.0 * small.weight[4, 0] + small.bias[4])
    assert torch.allclose(tokens[0, 5], small.bias[5])


def test_a_feature_token_block_trains_saves_and_reloads_bit_identically(pbc, tmp_path, labs):
    spec = BlockSpec("labs", "tokens", {"dim": 16}, latent=(8, 16), dim_head=16).override(epochs=2)
    trained, result = train_block(pbc, spec, progress=False)
    assert 0.5 < result.val["c_index"] <= 1.0
    path = legokit.save_block(trained, tmp_path / "labs.st")
    loaded = legokit.load_block(path)
    with torch.no_grad():
        assert torch.equal(loaded(labs[:7]), trained(labs[:7]))


@pytest.fixture(scope="module")
def trained_pair(pbc, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    paths = []
    for modality, encoder, kwargs in (
        ("labs", "snn", {"hidden": 16}),
        ("visits", "abmil", {"hidden": 16, "attention": 8}),
    ):
        spec = BlockSpec(modality, encoder, kwargs, latent=(8, 16), dim_head=16).override(epochs=3, seed=1)
        trained, _ = train_block(pbc, spec, progress=False)
        paths.append(legokit.save_block(trained, root / f"{modality}.st"))
    return root, paths


def test_auto_weights_are_the_blocks_validation_c_index_above_chance(trained_pair):
    _, paths = trained_pair
    blocks = [legokit.load_block(p) for p in paths]
    merged = merge(blocks, weights="auto")
    margins = {b.modality: max(b.provenance["trained"]["val"]["c_index"] - 0.5, 0.01) for b in blocks}
    weights = dict(merged.config.weights)
    assert weights["labs"] / weights["visits"] == pytest.approx(margins["labs"] / margins["visits"], rel=1e-6)


def test_cli_merge_with_auto_weights_matches_the_in_memory_merge(trained_pair):
    root, paths = trained_pair
    out = root / "auto.st"
    assert main(["merge", *map(str, paths), "-o", str(out), "--weights", "auto"]) == 0
    from_file = dict(legokit.load(out).config.weights)
    in_memory = dict(merge([legokit.load_block(p) for p in paths], weights="auto").config.weights)
    assert from_file == pytest.approx(in_memory)
    assert from_file["labs"] != pytest.approx(from_file["visits"])


def test_auto_weights_need_a_recorded_validation_metric():
    with pytest.raises(ConfigError, match="no validation c_index"):
        auto_weights({"tab": TASK}, {"tab": {"wrapped_from": "x.pt"}})
    with pytest.raises(ConfigError, match="no validation c_index"):
        merge([block(modality="a"), block(modality="b")], weights="auto")


def test_a_block_no_better_than_chance_barely_moves_the_merge():
    weights = auto_weights(
        {"good": TASK, "useless": TASK},
        {"good": {"trained": {"val": {"c_index": 0.8}}}, "useless": {"trained": {"val": {"c_index": 0.42}}}},
    )
    assert weights == {"good": pytest.approx(0.3), "useless": 0.01}


def test_a_recipe_merges_with_auto_weights(trained_pair):
    from legokit.recipe import Recipe

    root, paths = trained_pair
    recipe = root / "auto.yaml"
    recipe.write_text(
        f"name: auto\nblocks:\n  labs: {{artifact: {paths[0].name}}}\n  visits: {{artifact: {paths[1].name}}}\n"
        "operation: {kind: merge, weights: auto}\noutput: recipe-auto.st\n"
    )
    merged = legokit.load(Recipe.from_yaml(recipe).run())
    expected = merge([legokit.load_block(p) for p in paths], weights="auto")
    assert dict(merged.config.weights) == pytest.approx(dict(expected.config.weights))


def test_actg175_is_a_landmark_cohort_without_post_landmark_columns(tmp_path):
    from legokit.data.actg175 import LANDMARK_DAYS, write_actg175

    folder = write_actg175(tmp_path / "actg")
    labels = (folder / "labels.csv").read_text().splitlines()
    clinical = (folder / "clinical.csv").read_text().splitlines()
    immune = (folder / "immune.csv").read_text().splitlines()
    assert len(labels) == len(clinical) == len(immune) == 2091  # 2,090 patients followed past the landmark + header
    assert all(float(line.split(",")[1]) > 0 for line in labels[1:])
    assert sum(int(line.split(",")[2]) for line in labels[1:]) == 490
    assert not {"cd496", "r", "offtrt", "days", "cens"} & set(clinical[0].split(",") + immune[0].split(","))
    assert immune[0] == "id,cd40,cd420,cd80,cd820"
    assert LANDMARK_DAYS >= (20 + 5) * 7  # after the window of the week-20 counts


@pytest.mark.parametrize("metric", [10**400, float("nan"), True, "0.8", [0.8], 3.0, -1.0])
def test_auto_weights_refuse_a_recorded_metric_that_is_not_a_c_index(metric):
    with pytest.raises(ConfigError, match="not a number in"):
        auto_weights({"tab": TASK}, {"tab": {"trained": {"val": {"c_index": metric}}}})


@pytest.mark.parametrize("record", [[], "x", None, {"trained": []}, {"trained": {"val": 0.7}}])
def test_auto_weights_read_a_malformed_provenance_as_missing(record):
    with pytest.raises(ConfigError, match="no validation c_index"):
        auto_weights({"tab": TASK}, {"tab": record})


def test_a_loaded_merged_model_keeps_its_blocks_records_for_auto_weights(trained_pair, tmp_path):
    _, paths = trained_pair
    loaded = legokit.load(legokit.merge_files(paths, tmp_path / "pair.st"))
    assert loaded.blocks["labs"].provenance["trained"]["val"]["c_index"] > 0
    again = merge([loaded], weights="auto")
    direct = merge([legokit.load_block(p) for p in paths], weights="auto")
    assert dict(again.config.weights) == pytest.approx(dict(direct.config.weights))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"in_features": 2**24}, "config asks for"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"in_features": 2**40}, "in_features"),
        ({"dim": "wide"}, "dim"),
    ],
)
def test_a_tokens_config_that_does_not_fit_its_tensors_is_refused_before_building(tmp_path, change, message):
    path = legokit.save_block(block("tokens", 17), tmp_path / "tokens.st")
    hostile = tmp_path / "hostile.st"
    resealed(path, hostile, lambda config: config["encoder"]["kwargs"].update(change))
    with pytest.raises(legokit.ArtifactError, match=message):
        legokit.load_block(hostile)


def test_wrap_arch_tokens_with_a_state_dict_of_other_sizes_is_one_clean_error(tmp_path):
    from legokit.errors import EncoderError
    from legokit.wrap import wrap_builtin

    state = FeatureTokens(30, dim=8, max_tokens=10).state_dict()
    with pytest.raises(EncoderError, match="does not fit encoder tokens"):
        wrap_builtin("tokens", state, "tab", "survival:4", {"in_features": 30}, latent=(8, 16), depth=1, device="cpu")
