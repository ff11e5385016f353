"""Modality dropout during fine-tuning (`legokit.data.dropout`, `TrainConfig.modality_dropout`): never a sample's
last modality, nothing changed at rate 0, training batches only, seeded, from the CLI, specs and recipes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from legokit import ConfigError, load, save
from legokit.adapters.files import load_adapter
from legokit.cli.commands import _training, build_parser
from legokit.compose.fuse import fuse
from legokit.data import ModalityBatch
from legokit.data.bundled import write_pbc
from legokit.data.dropout import check_rate, drop_modalities
from legokit.data.training import SplitData
from legokit.recipe import Recipe
from legokit.spec import BlockSpec
from legokit.training.trainer import ADAPT_TRAINING, FUSE_TRAINING, TrainConfig, Trainer, evaluate
from legokit.training.workflows import adapt, build_block, fuse_blocks

from .conftest import cli_here

TINY = dict(latent=(8, 16), dim_head=16)


def _batches(presence: list[list[bool]], seed: int, observed: bool = False) -> dict[str, ModalityBatch]:
    """One modality per column of `presence` (b x M): tables and bags with padding masks, absent rows zero."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.tensor(presence, dtype=torch.bool).reshape(len(presence), -1)
    batches = {}
    for column in range(rows.shape[1]):
        present = rows[:, column].clone()
        if column % 2:  # a bag of up to 4 tokens
            lengths = torch.randint(1, 5, (len(presence),), generator=generator) * present
            mask = torch.arange(4).unsqueeze(0) < lengths.unsqueeze(1)
            x = torch.randn(len(presence), 4, 3, generator=generator) * mask.unsqueeze(2)
        else:
            mask, x = None, torch.randn(len(presence), 5, generator=generator) * present.unsqueeze(1)
        seen = (torch.rand(len(presence), generator=generator) < 0.8) if observed else None
        batches[f"m{column}"] = ModalityBatch(x, mask, present, seen)
    return batches


def _copy(batches: dict[str, ModalityBatch]) -> dict[str, ModalityBatch]:
    return {
        m: ModalityBatch(*(None if t is None else t.clone() for t in (b.x, b.mask, b.present, b.observed)))
        for m, b in batches.items()
    }


def _same(a: ModalityBatch, b: ModalityBatch) -> bool:
    return all(
        (s is None and t is None) or (s is not None and t is not None and torch.equal(s, t))
        for s, t in zip((a.x, a.mask, a.present, a.observed), (b.x, b.mask, b.present, b.observed))
    )


def _has(batches: dict[str, ModalityBatch]) -> torch.Tensor:
    return torch.stack([b.available() for b in batches.values()], dim=1)


# --- the function ---------------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda m: st.lists(st.lists(st.booleans(), min_size=m, max_size=m), min_size=1, max_size=12)
    ),
    st.floats(0.0, 0.99),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_a_sample_never_loses_its_last_modality_and_dropped_rows_are_empty(presence, rate, seed, observed):
    batches = _batches(presence, seed, observed)
    before = _copy(batches)
    out = drop_modalities(batches, rate, torch.Generator().manual_seed(seed))
    assert all(_same(batches[m], before[m]) for m in batches)  # the inputs are untouched
    had, has = _has(before), _has(out)
    assert bool((has <= had).all())  # nothing appears
    assert bool((has.any(dim=1) == had.any(dim=1)).all())  # a sample keeps at least one modality it had
    single = had.sum(dim=1) == 1
    for column, name in enumerate(batches):
        a, b = before[name], out[name]
        gone = had[:, column] & ~has[:, column]
        assert not bool((gone & single).any())  # a sample with one modality is never changed
        kept = ~gone
        assert torch.equal(b.x[kept], a.x[kept]) and torch.equal(b.presence()[kept], a.presence()[kept])
        assert not bool(b.presence()[gone].any()) and not bool(b.x[gone].any())
        if a.mask is not None:
            assert torch.equal(b.mask[kept], a.mask[kept]) and not bool(b.mask[gone].any())
        assert (b.observed is None) == (a.observed is None)
        if a.observed is not None:
            assert torch.equal(b.observed[kept], a.observed[kept]) and not bool(b.observed[gone].any())
            # a dummy (present, not observed) is not a modality the sample has: it stays as it is
            dummy = a.presence() & ~a.observed
            assert torch.equal(b.x[dummy], a.x[dummy]) and bool(b.presence()[dummy].all())


def test_rate_zero_returns_the_batches_unchanged_and_draws_nothing():
    batches = _batches([[True, True], [True, False], [False, True]], 0)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    out = drop_modalities(batches, 0.0, generator)
    assert out == batches and out is not batches and all(out[m] is batches[m] for m in batches)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_the_drop_frequency_of_samples_with_two_modalities_follows_the_rate(rate):
    """Each modality is drawn with probability `rate`; a sample whose both were drawn keeps one of the two at random,
    so each is dropped with probability rate - rate^2 / 2, and a sample loses one with probability
    1 - (1 - rate)^2."""
    samples = 20000
    batches = _batches([[True, True]] * samples, 1)
    out = drop_modalities(batches, rate, torch.Generator().manual_seed(5))
    has = _has(out)
    assert bool(has.any(dim=1).all())
    lost = (~has).float().mean(dim=0)
    tolerance = 4 * (rate * (1 - rate) / samples) ** 0.5 + 1e-3
    assert torch.allclose(lost, torch.full((2,), rate - rate**2 / 2), atol=tolerance), lost
    assert abs(float((~has).any(dim=1).float().mean()) - (1 - (1 - rate) ** 2)) < tolerance
    # a sample with a single modality is never changed, whatever the rate
    alone = _batches([[True, False]] * 500, 2)
    assert all(_same(a, b) for a, b in zip(alone.values(), drop_modalities(alone, rate, torch.Generator()).values()))


def test_the_draws_are_the_generators():
    batches = _batches([[True, True, True]] * 64, 4)
    first = drop_modalities(batches, 0.5, torch.Generator().manual_seed(11))
    again = drop_modalities(batches, 0.5, torch.Generator().manual_seed(11))
    other = drop_modalities(batches, 0.5, torch.Generator().manual_seed(12))
    assert torch.equal(_has(first), _has(again)) and not torch.equal(_has(first), _has(other))


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), 1.0, 1.5, -0.1, "0.3", None])
def test_bad_rates_are_a_config_error_naming_the_field_and_value(value):
    with pytest.raises(ConfigError, match=rf"modality_dropout must be a number in \[0, 1\), got {value!r}"):
        TrainConfig(modality_dropout=value)
    with pytest.raises(ConfigError, match="modality_dropout"):
        drop_modalities(_batches([[True, True]], 0), value, torch.Generator())  # type: ignore[arg-type]
    assert check_rate(0) == 0 and TrainConfig(modality_dropout=0.25).modality_dropout == 0.25


# --- training -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbc(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return folder


def _blocks() -> list:
    torch.manual_seed(0)
    labs = build_block(BlockSpec("labs", "snn", {"hidden": 16}, **TINY), (17,))
    visits = build_block(BlockSpec("visits", "abmil", {"hidden": 16, "attention": 8}, **TINY), (None, 13))
    return [labs, visits]


def _fused(pbc: Path, config: TrainConfig):
    return fuse_blocks(_blocks(), pbc, "stack", config, progress=False)


def _equal_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CONFIG = TrainConfig(epochs=2, device="cpu")


def test_rate_zero_trains_exactly_as_without_dropout(pbc, monkeypatch):
    plain, plain_result = _fused(pbc, CONFIG)
    monkeypatch.setattr(
        "legokit.training.trainer.drop_modalities", lambda *a, **k: pytest.fail("dropout ran at rate 0")
    )
    zero, zero_result = _fused(pbc, replace(CONFIG, modality_dropout=0.0))
    assert _equal_weights(plain, zero)
    assert [r["train_loss"] for r in plain_result.history] == [r["train_loss"] for r in zero_result.history]
    assert zero.provenance["fused"]["config"]["modality_dropout"] == 0.0


def test_dropout_training_is_seeded_and_changes_what_is_learned(pbc):
    config = replace(CONFIG, modality_dropout=0.5)
    first, result = _fused(pbc, config)
    again, _ = _fused(pbc, config)
    plain, _ = _fused(pbc, CONFIG)
    assert _equal_weights(first, again) and not _equal_weights(first, plain)
    assert first.provenance["fused"]["config"]["modality_dropout"] == 0.5
    other, _ = _fused(pbc, replace(config, seed=1))
    assert not _equal_weights(first, other)


def test_dropout_draws_do_not_depend_on_the_global_rng_and_skip_validation(pbc, monkeypatch):
    """The trainer's own generator decides what is dropped, whatever else draws from torch's global RNG; validation
    and the final scores see every modality (one epoch: the epoch's validation metrics are the final ones)."""
    seen: list[torch.Tensor] = []
    validating = []

    def noisy_inputs(batches, ids):
        torch.rand(7)  # another user of the global RNG
        return batches

    def spy(batches, rate, generator):
        assert not validating, "dropout during validation"
        out = drop_modalities(batches, rate, generator)
        seen.append(_has(out))
        return out

    monkeypatch.setattr("legokit.training.trainer.drop_modalities", spy)
    config = TrainConfig(epochs=1, modality_dropout=0.5, device="cpu")
    runs = []
    for noisy in (False, True):
        seen.clear()
        hook = noisy_inputs if noisy else None
        model = fuse(_blocks(), "stack")
        data = SplitData.load(pbc, {"labs": (17,), "visits": (None, 13)}, model.task, 0)
        trainer = Trainer(model, data, model.task, config, inputs=hook)
        validate = trainer.validate
        trainer.validate = lambda loss: validating.append(1) or validate(loss)  # noqa: B023 - this run's
        result = trainer.fit()
        validating.clear()
        runs.append(list(seen))
        assert len(seen) == -(-len(trainer.train_ids) // config.batch_size)  # one draw per training batch
        assert any(bool((~h).any()) for h in seen) and all(bool(h.any(dim=1).all()) for h in seen)
        assert result.history[0]["c_index"] == result.val["c_index"]
        assert result.val == evaluate(model, data, trainer.val_ids, model.task)
    assert len(runs[0]) == len(runs[1]) and all(torch.equal(a, b) for a, b in zip(*runs))


def test_an_adapter_trains_with_modality_dropout_over_the_missing_protocol(pbc):
    config = replace(ADAPT_TRAINING, epochs=1, modality_dropout=0.5, device="cpu")
    results = [adapt(fuse(_blocks(), "stack"), pbc, "mora", config=config, progress=False)[1] for _ in range(2)]
    assert [r["train_loss"] for r in results[0].history] == [r["train_loss"] for r in results[1].history]
    assert results[0].test == results[1].test


# --- where the setting is given: CLI, specs, recipes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command, defaults", [("train", TrainConfig()), ("fuse", FUSE_TRAINING), ("adapt", ADAPT_TRAINING)]
)
def test_the_flag_reaches_the_train_config_and_defaults_are_left_alone(command, defaults):
    required = {
        "train": ["DATA", "-o", "x.st"],
        "fuse": ["a.st", "--data", "D", "-o", "x.st"],
        "adapt": ["m.st", "--adapter", "mora", "--data", "D", "-o", "x.st"],
    }[command]
    assert _training(build_parser().parse_args([command, *required]), defaults).modality_dropout == 0.0
    given = _training(build_parser().parse_args([command, *required, "--modality-dropout", "0.3"]), defaults)
    assert given == replace(defaults, modality_dropout=0.3)
    assert FUSE_TRAINING.modality_dropout == ADAPT_TRAINING.modality_dropout == TrainConfig().modality_dropout == 0.0


def test_cli_fuse_records_the_rate_and_refuses_a_bad_one_in_one_line(pbc, tmp_path):
    paths = [save(block, tmp_path / f"{block.modality}.st") for block in _blocks()]
    common = ["fuse", "-q", *map(str, paths), "--data", str(pbc), "--epochs", "1", "--device", "cpu"]
    ran = cli_here(*common, "--modality-dropout", "0.3", "-o", str(tmp_path / "fused.st"))
    assert ran.returncode == 0, ran.stderr
    assert load(tmp_path / "fused.st").provenance["fused"]["config"]["modality_dropout"] == 0.3
    for bad in ("1.5", "nan", "-0.2"):
        refused = cli_here(*common, "--modality-dropout", bad, "-o", str(tmp_path / "bad.st"))
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "modality_dropout must be a number in [0, 1)" in refused.stderr and not (tmp_path / "bad.st").exists()
    adapted = cli_here(
        "adapt",
        "-q",
        str(tmp_path / "fused.st"),
        "--adapter",
        "mora",
        "--data",
        str(pbc),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--modality-dropout",
        "0.4",
        "-o",
        str(tmp_path / "mora.st"),
    )
    assert adapted.returncode == 0, adapted.stderr
    assert load_adapter(tmp_path / "mora.st")[3]["adapted"]["config"]["modality_dropout"] == 0.4


def test_specs_and_recipes_take_the_setting_and_refuse_typos(tmp_path):
    spec = tmp_path / "labs.yaml"
    spec.write_text("modality: labs\ntraining: {epochs: 3, modality_dropout: 0.2}\n")
    assert BlockSpec.from_yaml(spec).training.modality_dropout == 0.2
    recipe = tmp_path / "fuse.yaml"
    body = "blocks: {labs: {artifact: labs.st}, visits: {artifact: visits.st}}\ndata: data\noutput: fused.st\n"
    recipe.write_text(body + "operation: {kind: stack, epochs: 1, modality_dropout: 0.3}\n")
    assert Recipe.from_yaml(recipe).operation.training == {"epochs": 1, "modality_dropout": 0.3}
    recipe.write_text(body + "operation: {kind: weave, modality_drop: 0.3}\n")
    with pytest.raises(ConfigError, match="modality_drop"):
        Recipe.from_yaml(recipe)
    recipe.write_text(body + "operation: {kind: stack, modality_dropout: 1.2}\n")
    with pytest.raises(ConfigError, match=r"fuse.yaml.*operation.*modality_dropout must be .* got 1.2"):
        Recipe.from_yaml(recipe)
