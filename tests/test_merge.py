"""LegoMerge: the math of Eq. 4 and of head SLERP, and the behaviour of merged models."""

from __future__ import annotations

import math

import pytest
import torch

import legokit
from legokit import ArtifactError, ConfigError, ShapeError
from legokit.artifacts.files import load, save, save_block
from legokit.artifacts.merging import merge_files
from legokit.cli import main
from legokit.compose.merge import merge
from legokit.data import ModalityBatch
from legokit.data.bundled import write_pbc
from legokit.nn.block import BlockConfig, LegoBlock
from legokit.nn.spectral import harmonic_magnitude, merge_spectra, phase_mean
from legokit.nn.sphere import slerp, spherical_mean
from legokit.spec import BlockSpec
from legokit.training.workflows import train_block
from legokit.wrap import wrap_builtin

from .conftest import SMALL


def _snn(modality: str, seed: int, task: str = "survival:4", latent=(8, 16)) -> LegoBlock:
    torch.manual_seed(seed)
    options = {**SMALL, "latent": latent}
    return wrap_builtin("snn", None, modality, task, {"in_features": 10, "hidden": 16}, **options).eval()


def _renamed(block: LegoBlock, modality: str) -> LegoBlock:
    """The same weights under another modality name: a block 'merged with itself'."""
    config = BlockConfig.from_dict({**block.config.to_dict(), "modality": modality})
    twin = LegoBlock(config)
    twin.load_state_dict(block.state_dict())
    return twin.eval()


# --- the math ------------------------------------------------------------------------------------------------------


def test_two_block_merge_is_the_papers_equation_4():
    a = torch.polar(torch.tensor([2.0, 1.0]), torch.tensor([0.4, -1.0]))
    b = torch.polar(torch.tensor([6.0, 3.0]), torch.tensor([1.0, 0.2]))
    merged = merge_spectra(torch.stack([a, b]), torch.ones(2))
    expected = 2 * a.abs() * b.abs() / (a.abs() + b.abs()) * torch.exp(1j * (torch.angle(a) + torch.angle(b)) / 2)
    assert torch.allclose(merged, expected, atol=1e-6)


def test_harmonic_mean_is_the_full_mean_not_half_of_it():
    assert torch.allclose(harmonic_magnitude(torch.tensor([[4.0], [4.0]]), torch.ones(2, 1)), torch.tensor([4.0]))


def test_zero_magnitudes_and_zero_latents_merge_to_zero_not_nan():
    zeros = torch.zeros(3, 2, 4, 4, dtype=torch.complex64)
    assert torch.equal(merge_spectra(zeros, torch.ones(3)), torch.zeros(2, 4, 4, dtype=torch.complex64))
    mixed = torch.stack([torch.zeros(2, 3, dtype=torch.complex64), torch.ones(2, 3, dtype=torch.complex64)])
    for phase in ("paper", "circular"):
        out = merge_spectra(mixed, torch.ones(2), phase=phase)
        assert torch.isfinite(torch.view_as_real(out)).all() and torch.equal(out.abs(), torch.zeros(2, 3))


def test_circular_phase_mean_does_not_wrap_where_the_arithmetic_one_does():
    phases = torch.tensor([[math.pi - 0.1], [-math.pi + 0.1]])
    assert torch.allclose(phase_mean(phases, torch.ones(2, 1), "paper"), torch.tensor([0.0]), atol=1e-6)
    assert abs(abs(phase_mean(phases, torch.ones(2, 1), "circular").item()) - math.pi) < 1e-5


def test_a_latent_and_its_noisy_negation_keep_their_energy_where_the_plain_mean_cancels():
    """MM-Lego Appendix E: x and -x + noise. Averaging in the spatial domain cancels the signal; the merge of
    their spectra (harmonic mean of magnitudes) keeps it."""
    torch.manual_seed(0)
    x = torch.randn(1, 64, 64)
    y = -x + 0.1 * torch.randn(1, 64, 64)
    plain = (x + y) / 2
    spectra = torch.stack([torch.fft.fftn(x, dim=(-2, -1)), torch.fft.fftn(y, dim=(-2, -1))])
    merged = merge_spectra(spectra, torch.ones(2))
    energy = lambda t: t.abs().pow(2).sum().item()  # noqa: E731 - Parseval: spectral energy = N * spatial energy
    assert energy(plain) < 0.01 * energy(x)
    assert energy(merged) / 64**2 > 0.9 * energy(x)


def test_slerp_follows_its_formula_and_falls_back_to_linear_for_colinear_tensors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    t = math.pi / 2
    expected = math.sin(0.7 * t) / math.sin(t) * a + math.sin(0.3 * t) / math.sin(t) * b
    assert torch.allclose(slerp(a, b, 0.3), expected)
    ones = torch.ones(5)
    assert torch.equal(slerp(ones, ones, 0.5), ones)
    assert torch.equal(slerp(torch.zeros(3), torch.ones(3), 0.5), torch.full((3,), 0.5))


def test_spherical_mean_of_many_is_independent_of_their_order():
    torch.manual_seed(0)
    tensors = list(torch.randn(4, 3, 5).unbind(0))
    weights = [1.0, 2.0, 0.5, 1.5]
    forward = spherical_mean(tensors, weights)
    backward = spherical_mean(tensors[::-1], weights[::-1])
    assert torch.allclose(forward, backward, atol=1e-6)
    assert torch.allclose(spherical_mean(tensors[:2], [1, 1]), slerp(tensors[0], tensors[1], 0.5))


# --- merged models -------------------------------------------------------------------------------------------------


def test_merging_a_block_with_itself_reproduces_its_predictions():
    block = _snn("tab", 0)
    x = torch.randn(6, 10)
    model = merge([block, _renamed(block, "tab2")])
    assert torch.allclose(model({"tab": x, "tab2": x}), block(x), atol=1e-5)


def test_merge_is_invariant_to_block_order():
    blocks = [_snn("a", 1), _snn("b", 2), _snn("c", 3)]
    inputs = {m: torch.randn(4, 10) for m in "abc"}
    assert torch.equal(merge(blocks)(inputs), merge(blocks[::-1])(inputs))


@pytest.mark.parametrize("changed", ["a", "b", "c"])
def test_a_three_block_merge_changes_when_any_one_block_changes(changed):
    blocks = {m: _snn(m, i) for i, m in enumerate("abc")}
    inputs = {m: torch.randn(4, 10, generator=torch.Generator().manual_seed(9)) for m in "abc"}
    before = merge(list(blocks.values()))(inputs)
    blocks[changed] = _snn(changed, 42)
    assert not torch.allclose(before, merge(list(blocks.values()))(inputs))


def test_fresh_identical_heads_and_zero_inputs_give_no_nan():
    a = _snn("a", 0)
    b = _renamed(_snn("b", 0), "b")
    out = merge([a, b])({"a": torch.zeros(3, 10), "b": torch.zeros(3, 10)})
    assert torch.isfinite(out).all()


def test_per_sample_missing_modalities_merge_only_what_is_present():
    a, b = _snn("a", 0), _snn("b", 1)
    model = merge([a, b])
    xa, xb = torch.randn(3, 10), torch.randn(3, 10)
    present_b = torch.tensor([True, False, True])
    mixed = model({"a": ModalityBatch(xa), "b": ModalityBatch(xb, present=present_b)})
    only_a = model({"a": xa[1:2]})
    both = model({"a": xa, "b": xb})
    assert torch.allclose(mixed[1:2], only_a, atol=1e-6)
    assert torch.allclose(mixed[[0, 2]], both[[0, 2]], atol=1e-6)


def test_a_sample_with_no_modality_is_named():
    model = merge([_snn("a", 0), _snn("b", 1)])
    absent = torch.tensor([True, False])
    with pytest.raises(ShapeError, match="sample 1 has none of the modalities"):
        model(
            {
                "a": ModalityBatch(torch.randn(2, 10), present=absent),
                "b": ModalityBatch(torch.randn(2, 10), present=absent),
            }
        )


def test_blocks_with_other_latent_shapes_or_tasks_are_refused():
    with pytest.raises(ConfigError, match="latent shapes disagree"):
        merge([_snn("a", 0), _snn("b", 1, latent=(8, 8))])
    with pytest.raises(ConfigError, match="tasks disagree"):
        merge([_snn("a", 0), _snn("b", 1, task="binary")])
    with pytest.raises(ConfigError, match="at least 2 blocks"):
        merge([_snn("a", 0)])
    with pytest.raises(ConfigError, match="appears twice"):
        merge([_snn("a", 0), _snn("a", 1)])


def test_merged_model_reloads_bit_identical_and_matches_the_streamed_file_merge(tmp_path):
    blocks = [_snn("a", 1), _snn("b", 2), _snn("c", 3)]
    paths = [save_block(b, tmp_path / f"{b.modality}.st") for b in blocks]
    inputs = {m: torch.randn(5, 10) for m in "abc"}
    in_memory = merge(blocks, weights=[1.0, 2.0, 0.5], phase="circular")
    saved = load(save(in_memory, tmp_path / "memory.st"))
    streamed = load(merge_files(paths, tmp_path / "streamed.st", weights=[1.0, 2.0, 0.5], phase="circular"))
    expected = in_memory(inputs)
    assert torch.equal(saved(inputs), expected)
    assert torch.equal(streamed(inputs), expected)


def test_growing_a_model_by_one_block_equals_merging_all_at_once(tmp_path):
    paths = [save_block(_snn(m, i), tmp_path / f"{m}.st") for i, m in enumerate("abc")]
    merge_files(paths[:2], tmp_path / "ab.st")
    grown = load(merge_files([tmp_path / "ab.st", paths[2]], tmp_path / "grown.st"))
    at_once = load(merge_files(paths, tmp_path / "abc.st"))
    inputs = {m: torch.randn(4, 10) for m in "abc"}
    assert torch.equal(grown(inputs), at_once(inputs))
    assert grown.modalities == ["a", "b", "c"]


def test_streamed_merge_refuses_a_corrupted_input_and_leaves_no_output(tmp_path):
    paths = [save_block(_snn(m, i), tmp_path / f"{m}.st") for i, m in enumerate("ab")]
    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    from legokit import ArtifactError

    with pytest.raises(ArtifactError, match=r"b\.st: tensor data does not match the checksum"):
        merge_files(paths, tmp_path / "out.st")
    assert not (tmp_path / "out.st").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.st", "b.st"]


def test_merge_names_a_modality_found_in_two_files(tmp_path):
    a = save_block(_snn("a", 0), tmp_path / "a.st")
    a2 = save_block(_snn("a", 1), tmp_path / "a2.st")
    with pytest.raises(ConfigError, match="modality 'a' is in both"):
        merge_files([a, a2], tmp_path / "out.st")


def test_a_half_precision_block_is_refused_by_merge(snn_block, tmp_path):
    from legokit.artifacts.format import write_artifact
    from legokit.artifacts.kinds.block import block_tensors
    from legokit.artifacts.registry import BLOCK

    tensors = block_tensors(snn_block)
    tensors["latent"] = tensors["latent"].half()
    half = write_artifact(tmp_path / "half.st", BLOCK, snn_block.config.to_dict(), tensors)
    other = snn_block.config.to_dict() | {"modality": "other"}
    second = write_artifact(tmp_path / "b.st", BLOCK, other, block_tensors(snn_block))
    with pytest.raises(ArtifactError, match="half.st: tensor 'latent' is F16; legokit merges float32 blocks"):
        merge_files([half, second], tmp_path / "m.st")


# --- two blocks, unequal weights: the merged head, pinned against the paper's SLERP --------------------------------


@pytest.fixture(scope="module")
def pbc_pair(tmp_path_factory):
    """Labs and visits blocks trained (2 epochs) on the bundled PBC data: heads that differ in every tensor."""
    data = tmp_path_factory.mktemp("pbc") / "data"
    write_pbc(data)
    blocks = {}
    encoders = (("labs", "snn", {"hidden": 16}), ("visits", "abmil", {"hidden": 16, "attention": 8}))
    for modality, encoder, kwargs in encoders:
        spec = BlockSpec(modality, encoder, kwargs, latent=(8, 16), dim_head=16).override(epochs=2, seed=5)
        blocks[modality], _ = train_block(data, spec, progress=False)
    return blocks["labs"], blocks["visits"]


def _paper_slerp(a: torch.Tensor, b: torch.Tensor, mu: float) -> torch.Tensor:
    """The head rule of DESIGN.md / MM-Lego, written out independently of `legokit.nn.sphere`:
    sin((1-mu) t) / sin(t) * a + sin(mu t) / sin(t) * b, t the angle between the flattened tensors, and for
    weights w_a, w_b (a the first modality by name) mu = w_b / (w_a + w_b)."""
    fa, fb = a.reshape(-1).double(), b.reshape(-1).double()
    t = math.acos(float(torch.dot(fa, fb) / (fa.norm() * fb.norm())))
    assert t > 1e-3, "the heads must not be colinear, or the rule falls back to a linear mix"
    mixed = (math.sin((1.0 - mu) * t) * fa + math.sin(mu * t) * fb) / math.sin(t)
    return mixed.reshape(a.shape).float()


def _expected_head(labs: LegoBlock, visits: LegoBlock, w_labs: float, w_visits: float) -> dict[str, torch.Tensor]:
    a, b = labs.head.state_dict(), visits.head.state_dict()
    return {name: _paper_slerp(a[name], b[name], w_visits / (w_labs + w_visits)) for name in a}


def _assert_head_is(head: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = head.state_dict()
    assert sorted(state) == sorted(expected) == ["linear.bias", "linear.weight", "norm.bias", "norm.weight"]
    for name, tensor in expected.items():
        assert torch.allclose(state[name], tensor, rtol=0, atol=1e-6), name


@pytest.mark.parametrize(
    "weights, w_labs, w_visits",
    [
        ([0.75, 0.25], 0.25, 0.75),  # a list follows the order of the blocks given: visits, then labs
        ([0.25, 0.75], 0.75, 0.25),
        ({"labs": 1.0, "visits": 3.0}, 1.0, 3.0),
    ],
    ids=["visits-heavy", "labs-heavy", "by-name"],
)
def test_a_two_block_merge_with_unequal_weights_slerps_each_head_tensor_by_those_weights(
    pbc_pair, weights, w_labs, w_visits
):
    labs, visits = pbc_pair
    merged = legokit.merge([visits, labs], weights=weights)
    _assert_head_is(merged.head, _expected_head(labs, visits, w_labs, w_visits))


def test_the_heavier_block_pulls_the_merged_head_and_swapping_the_weights_swaps_the_pull(pbc_pair):
    labs, visits = pbc_pair
    visits_heavy = legokit.merge([labs, visits], weights=[0.25, 0.75]).head.state_dict()
    labs_heavy = legokit.merge([labs, visits], weights=[0.75, 0.25]).head.state_dict()
    for name, a in labs.head.state_dict().items():
        b = visits.head.state_dict()[name]
        assert (visits_heavy[name] - b).norm() < (visits_heavy[name] - a).norm(), name
        assert (labs_heavy[name] - a).norm() < (labs_heavy[name] - b).norm(), name
        assert not torch.allclose(visits_heavy[name], labs_heavy[name], rtol=0, atol=1e-4), name


@pytest.mark.parametrize(
    "given, w_labs, w_visits",
    [
        ("0.75,0.25", 0.25, 0.75),  # one weight per file, in the order the files are named: visits.st, labs.st
        ("0.25,0.75", 0.75, 0.25),
        ("labs=0.25,visits=0.75", 0.25, 0.75),
    ],
    ids=["visits-heavy", "labs-heavy", "by-name"],
)
def test_the_streamed_file_merge_weighs_the_heads_as_the_cli_weights_say(pbc_pair, tmp_path, given, w_labs, w_visits):
    labs, visits = pbc_pair
    paths = [legokit.save_block(visits, tmp_path / "visits.st"), legokit.save_block(labs, tmp_path / "labs.st")]
    assert main(["merge", *map(str, paths), "--weights", given, "-o", str(tmp_path / "cli.st")]) == 0
    _assert_head_is(legokit.load(tmp_path / "cli.st").head, _expected_head(labs, visits, w_labs, w_visits))


def test_the_streamed_file_merge_and_the_in_memory_merge_give_the_same_weighted_head(pbc_pair, tmp_path):
    labs, visits = pbc_pair
    paths = [legokit.save_block(visits, tmp_path / "visits.st"), legokit.save_block(labs, tmp_path / "labs.st")]
    streamed = legokit.load(legokit.merge_files(paths, tmp_path / "streamed.st", weights=[0.75, 0.25])).head
    in_memory = legokit.merge([visits, labs], weights=[0.75, 0.25]).head
    _assert_head_is(streamed, _expected_head(labs, visits, 0.25, 0.75))
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name
