"""A frozen pretrained encoder runs once per sample: across epochs, validation passes, re-training, fuse and eval
on the same folder; a changed sample or encoder is encoded again; a fine-tuned encoder is never cached; results
match the uncached run; the cache can be listed and cleared, and a damaged shard is recomputed, not trusted."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch

import legokit
from legokit.artifacts.files import load_block, save_block
from legokit.cache import TokenCache, list_cache
from legokit.cli.commands import main
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import evaluate_model, fuse_blocks, train_wrapped_block

from .textmodels import bert_folder

WORDS = [
    "bilirubin",
    "albumin",
    "prothrombin",
    "high",
    "low",
    "ascites",
    "edema",
    "spiders",
    "present",
    "absent",
    "stage",
    "1",
    "2",
    "3",
    "4",
]
SAMPLES = 48


def _texts(seed: int) -> dict[str, str]:
    """Distinct short notes, so that every sample has its own cache entry."""
    rng, seen, texts = random.Random(seed), set(), {}
    while len(texts) < SAMPLES:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        if text not in seen:
            seen.add(text)
            texts[f"p{len(texts):03d}"] = text
    return texts


def _write_folder(folder: Path, views: dict[str, dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts in views.items():
        rows = "".join(f'{i},"{t}"\n' for i, t in texts.items())
        (folder / f"{name}.csv").write_text("id,text\n" + rows, encoding="utf-8")
    ids = sorted(next(iter(views.values())))
    first = next(iter(views.values()))
    (folder / "labels.csv").write_text("id,label\n" + "".join(f"{i},{int('high' in first[i])}\n" for i in ids))
    return folder


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    """Two wrapped BERT blocks (notes, reports) as files, and a folder with both views."""
    root = tmp_path_factory.mktemp("cache")
    paths = {}
    for seed, modality in enumerate(("notes", "reports")):
        block = legokit.wrap_file(
            bert_folder(root / f"bert-{modality}", seed),
            modality=modality,
            task="binary",
            latent=(8, 8),
            depth=1,
            device="cpu",
        )
        paths[modality] = save_block(block, root / f"{modality}.wrapped.st")
    data = _write_folder(root / "data", {"notes": _texts(0), "reports": _texts(1)})
    return paths, data


class Counter:
    """Counts the samples an encoder really runs on (the cost check's fake runs are not runs)."""

    def __init__(self, block):
        self.samples = 0
        forward = block.encoder.forward

        def counted(x, mask=None):
            self.samples += int(x.shape[0])
            return forward(x, mask)

        block.encoder.forward = counted


def _train(path, data, cache, epochs=3, **config):
    block = load_block(path)
    counter = Counter(block)
    trained, result = train_wrapped_block(
        data, block, TrainConfig(epochs=epochs, patience=epochs, device="cpu", **config), progress=False, cache=cache
    )
    return trained, result, counter


def test_a_frozen_encoder_runs_once_per_sample_across_epochs_and_runs(wrapped, tmp_path):
    paths, data = wrapped
    cache = TokenCache(tmp_path / "c")
    _, result, counter = _train(paths["notes"], data, cache)
    assert counter.samples == SAMPLES  # train, val and test, each once, whatever the epochs
    assert result.encoding["notes"]["encoded"] == SAMPLES and result.encoding["notes"]["cached"] == 0
    _, again, counter = _train(paths["notes"], data, TokenCache(tmp_path / "c"))
    assert counter.samples == 0 and again.encoding["notes"]["cached"] == SAMPLES
    assert [c.samples for c in list_cache(tmp_path / "c")] == [SAMPLES]


def test_without_the_disk_cache_a_run_still_encodes_each_sample_once(wrapped, tmp_path):
    paths, data = wrapped
    _, _, counter = _train(paths["notes"], data, False)
    assert counter.samples == SAMPLES
    _, _, counter = _train(paths["notes"], data, False)
    assert counter.samples == SAMPLES  # nothing was kept on disk


def test_cached_tokens_are_the_encoder_tokens_and_training_follows(wrapped):
    from legokit.cache import cached_encoders
    from legokit.data.folder import DatasetFolder

    paths, data = wrapped
    block = load_block(paths["notes"]).eval()
    batch = DatasetFolder(data, {"notes": block.data_input}).batch(sorted(_texts(0)))["notes"]
    with torch.no_grad():
        want, want_mask = block.tokens(batch.x, batch.mask)
        with cached_encoders(block, TokenCache(None)):
            block.tokens(batch.x[::2], batch.mask[::2])  # half of them cached first, in another batch
            got, got_mask = block.tokens(batch.x, batch.mask)
    assert torch.equal(got_mask, want_mask[:, : got_mask.shape[1]]) and not want_mask[:, got_mask.shape[1] :].any()
    assert torch.allclose(got[got_mask], want[want_mask], atol=1e-5)
    cached, with_cache, _ = _train(paths["notes"], data, False)
    plain, without, counter = _train(paths["notes"], data, None)
    assert counter.samples > 2 * SAMPLES  # the encoder ran in every epoch and validation pass
    assert with_cache.best_epoch == without.best_epoch
    assert [round(r["train_loss"], 4) for r in with_cache.history] == [
        round(r["train_loss"], 4) for r in without.history
    ]


def test_a_changed_sample_or_encoder_is_encoded_again(wrapped, tmp_path):
    paths, data = wrapped
    root = tmp_path / "c"
    _train(paths["notes"], data, TokenCache(root), epochs=1)
    changed = _write_folder(tmp_path / "changed", {"notes": {**_texts(0), "p000": "albumin low ascites present"}})
    _, _, counter = _train(paths["notes"], changed, TokenCache(root), epochs=1)
    assert counter.samples == 1
    block = load_block(paths["notes"])
    with torch.no_grad():
        next(block.encoder.parameters()).add_(0.01)
    other = save_block(block, tmp_path / "other.st")
    _, _, counter = _train(other, data, TokenCache(root), epochs=1)
    assert counter.samples == SAMPLES
    assert len(list_cache(root)) == 2


def test_a_fine_tuned_encoder_is_never_cached(wrapped, tmp_path):
    paths, data = wrapped
    trained, result, counter = _train(paths["notes"], data, TokenCache(tmp_path / "c"), epochs=2, encoders="finetune")
    assert counter.samples > SAMPLES and result.encoding == {}  # every epoch ran it
    assert trained.provenance["trained"]["encoder"] == "fine-tuned"
    assert list_cache(tmp_path / "c") == []


def test_fine_tuned_pretrained_encoders_get_their_own_smaller_learning_rate(wrapped):
    from legokit.training.trainer import parameter_groups, set_encoders

    paths, _ = wrapped
    block = load_block(paths["notes"])
    set_encoders(block, "finetune")
    groups = parameter_groups(block, TrainConfig(lr=1e-3, encoders="finetune"))
    encoder = {id(p) for p in block.encoder.parameters()}
    assert [g.get("lr") for g in groups] == [None, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == encoder
    assert set_encoders(block, "auto") == [block] and not any(p.requires_grad for p in block.encoder.parameters())


def test_fuse_and_eval_reuse_what_training_encoded(wrapped, tmp_path):
    paths, data = wrapped
    root = tmp_path / "c"
    notes, _, _ = _train(paths["notes"], data, TokenCache(root), epochs=1)
    reports, _, _ = _train(paths["reports"], data, TokenCache(root), epochs=1)
    counters = [Counter(notes), Counter(reports)]
    fused, _ = fuse_blocks(
        [notes, reports], data, config=TrainConfig(epochs=2, device="cpu"), progress=False, cache=TokenCache(root)
    )
    assert [c.samples for c in counters] == [0, 0]  # fuse keeps wrapped encoders frozen, as train does
    assert all(not p.requires_grad for b in fused.blocks.values() for p in b.encoder.parameters())
    metrics = evaluate_model(fused, data, cache=TokenCache(root), allow_overlap=True)
    assert [c.samples for c in counters] == [0, 0] and metrics["samples"] > 0


class Logged:
    """The legokit logger's messages while in use (its handlers may not propagate to pytest's)."""

    def __enter__(self) -> list[str]:
        from legokit.progress import log

        self.seen: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.seen.append(record.getMessage())
        self.level = log.level
        log.addHandler(self.handler)
        log.setLevel(logging.INFO)
        return self.seen

    def __exit__(self, *exc) -> None:
        from legokit.progress import log

        log.removeHandler(self.handler)
        log.setLevel(self.level)


def test_a_damaged_shard_is_skipped_with_a_warning_and_recomputed(wrapped, tmp_path):
    paths, data = wrapped
    root = tmp_path / "c"
    _train(paths["notes"], data, TokenCache(root), epochs=1)
    (shard,) = list((root / "encoder-tokens").glob("*/*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with Logged() as seen:
        _, _, counter = _train(paths["notes"], data, TokenCache(root), epochs=1)
    assert counter.samples == SAMPLES
    assert any(line.startswith("skipping a cache shard") for line in seen)


def test_the_cache_command_lists_and_clears(wrapped, tmp_path, monkeypatch, capsys):
    paths, data = wrapped
    monkeypatch.setenv("LEGOKIT_CACHE", str(tmp_path / "c"))
    out = tmp_path / "notes.st"
    assert main(["train", str(data), "--block", str(paths["notes"]), "--epochs", "1", "-o", str(out), "-q"]) == 0
    assert main(["cache", "list", "--json", str(tmp_path / "list.json")]) == 0
    listed = __import__("json").loads((tmp_path / "list.json").read_text())
    assert [e["samples"] for e in listed["encoders"]] == [SAMPLES] and listed["encoders"][0]["modality"] == "notes"
    assert main(["cache", "clear", "ffff"]) == 1
    assert "no cached encoder with a key starting 'ffff'" in capsys.readouterr().err
    assert main(["cache", "clear", listed["encoders"][0]["key"][:8]]) == 0
    assert list_cache(tmp_path / "c") == []
    assert (
        main(["train", str(data), "--block", str(paths["notes"]), "--epochs", "1", "-o", str(out), "-q", "--no-cache"])
        == 0
    )
    assert list_cache(tmp_path / "c") == []


def test_the_old_flags_still_work_with_a_warning(wrapped, tmp_path, capsys):
    paths, data = wrapped
    out = tmp_path / "notes.st"
    assert (
        main(
            [
                "train",
                str(data),
                "--block",
                str(paths["notes"]),
                "--epochs",
                "1",
                "-o",
                str(out),
                "--finetune-encoder",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    assert "--finetune-encoder is deprecated: use --encoders finetune" in capsys.readouterr().err
    assert load_block(out).provenance["trained"]["encoder"] == "fine-tuned"


def test_threads_count_a_large_encoder():
    from legokit.threads import choose_threads

    small = choose_threads(latent_cells=64, environ={}, cpus=4, busy=0.0)
    large = choose_threads(latent_cells=64, environ={}, cpus=4, busy=0.0, encoder_parameters=22_000_000)
    assert (small.threads, large.threads) == (1, 4)


def test_progress_off_a_terminal_says_rate_and_time_left_at_least_every_ten_seconds():
    from legokit.progress import progress_bar

    now = [0.0]
    with Logged() as seen, progress_bar("encoding notes", 1000, unit="samples", clock=lambda: now[0]) as advance:
        for _ in range(30):
            now[0] += 4.0  # 16 samples every 4 s: a tenth of the work takes 250 s, lines come every 10 s
            advance(16, "")
    assert seen[0] == "encoding notes: 48/1000, 4.0 samples/s, ETA 3:58"
    assert len(seen) == 10 and seen[-1] == "encoding notes: 480/1000, 4.0 samples/s, ETA 2:10"


# ---- what an entry is keyed by, and when the cache applies ----------------------------------------------------------


def _notes_batch(block, data, count=8):
    from legokit.data.folder import DatasetFolder

    folder = DatasetFolder(data, {"notes": block.data_input})
    return folder.batch(sorted(_texts(0))[:count])["notes"]


def test_sample_keys_tell_padding_from_real_zeros_ints_from_floats_and_shapes_apart():
    from legokit.cache.keys import sample_keys

    ids = torch.tensor([[5, 0, 0]])
    padded, real_zero = torch.tensor([[True, False, False]]), torch.tensor([[True, True, False]])
    assert sample_keys(ids, padded) != sample_keys(ids, real_zero)
    assert sample_keys(ids, padded) == sample_keys(torch.tensor([[5, 7, 9]]), padded)  # padding is not the sample
    assert sample_keys(ids, padded) == sample_keys(torch.tensor([[5]]), torch.tensor([[True]]))
    holes = torch.tensor([[True, False, True]])
    assert sample_keys(ids, holes) != sample_keys(ids, torch.tensor([[True, True, True]]))
    zeros = torch.zeros(1, 4)
    assert sample_keys(zeros.int(), None) != sample_keys(zeros, None)  # the same bytes, another dtype
    assert sample_keys(zeros.long(), None) != sample_keys(zeros.int(), None)
    assert sample_keys(torch.zeros(1, 2, 3), None) != sample_keys(torch.zeros(1, 3, 2), None)
    assert sample_keys(torch.tensor([[0.0]]), None) != sample_keys(torch.tensor([[-0.0]]), None)


def test_the_encoder_key_covers_weights_standardisation_device_kind_and_legokit_version(monkeypatch):
    from legokit.cache import keys

    block = _vector_block()
    first = keys.encoder_key(block)
    assert keys.encoder_key(_vector_block()) == first
    with torch.no_grad():
        block.input_scale.mul_(2)
    assert keys.encoder_key(block) != first
    block = _vector_block()
    monkeypatch.setattr(keys, "__version__", "99.0")
    assert keys.encoder_key(block) != first
    monkeypatch.undo()
    hashed = keys.tensor_bytes
    monkeypatch.setattr(keys, "tensor_bytes", lambda t: hashed(torch.zeros(t.shape)) if t.is_meta else hashed(t))
    block.input_shift = torch.zeros_like(block.input_shift, device="meta")  # as a block on another kind of device
    assert keys.encoder_key(block) != first


def test_an_encoder_changed_in_place_while_cached_is_keyed_again(wrapped):
    from legokit.cache import cached_encoders

    paths, data = wrapped
    block = load_block(paths["notes"]).eval()
    batch = _notes_batch(block, data)
    with torch.no_grad(), cached_encoders(block, TokenCache(None)):
        before, _ = block.tokens(batch.x, batch.mask)
        next(block.encoder.parameters()).mul_(3.0)  # weights loaded or stepped meanwhile
        after, after_mask = block.tokens(batch.x, batch.mask)
        want, want_mask = block.encoder_tokens(batch.x, batch.mask)
    assert not torch.allclose(before, after)
    assert torch.allclose(after[after_mask], want[want_mask], atol=1e-5)


def test_an_entry_is_full_precision_whatever_the_callers_autocast(wrapped):
    from legokit.cache import cached_encoders

    paths, data = wrapped
    block = load_block(paths["notes"]).eval()
    batch = _notes_batch(block, data)
    with torch.no_grad():
        want, want_mask = block.encoder_tokens(batch.x, batch.mask)
        with cached_encoders(block, TokenCache(None)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                block.tokens(batch.x, batch.mask)  # encoded (and kept) under the caller's bf16 autocast
            got, got_mask = block.tokens(batch.x, batch.mask)
    assert torch.equal(got[got_mask], want[:, : got.shape[1]][got_mask])


def _vector_block():
    from torch import nn

    from legokit.wrap import wrap_module

    torch.manual_seed(0)
    return (
        wrap_module(
            nn.Sequential(nn.Linear(4, 8), nn.Tanh()), "vitals", "binary", (4,), latent=(4, 8), depth=1, device="cpu"
        )
        .eval()
        .requires_grad_(False)
    )


def test_a_gradient_that_reaches_the_input_bypasses_the_cache():
    from legokit.cache import cached_encoders

    block = _vector_block()
    x = torch.randn(3, 4)
    with cached_encoders(block, TokenCache(None)):
        with torch.no_grad():
            block(x)  # cached
        probe = x.clone().requires_grad_(True)
        block(probe).sum().backward()  # a saliency map: the gradient must flow through the encoder
    assert probe.grad is not None and probe.grad.abs().sum() > 0


def test_a_program_that_draws_random_numbers_is_not_cached_and_an_eval_export_is(wrapped):
    from torch import nn

    from legokit.cache.frozen import cacheable
    from legokit.wrap import WrapOptions, wrap_module

    paths, _ = wrapped
    assert cacheable(load_block(paths["notes"]))  # its eval-mode graph keeps dropout (off) and attention (no dropout)
    noisy = wrap_module(
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.01)),
        "vitals",
        "binary",
        (4,),
        latent=(4, 8),
        depth=1,
        device="cpu",
        how=WrapOptions(train_mode=True),
    )
    assert not cacheable(noisy)
    noisy.provenance.pop("exported_in_train_mode")  # the mark lost (a program exported so by its author)
    assert not cacheable(noisy)


def test_an_adapter_inside_the_encoder_turns_its_cache_off():
    from legokit.adapters.base import attach
    from legokit.adapters.ssf import SSF
    from legokit.cache.frozen import cacheable
    from legokit.encoders import build_encoder
    from legokit.wrap import wrap_builtin

    encoder = build_encoder("mlp", {"in_features": 4, "hidden": 8, "depth": 1})
    block = wrap_builtin(
        "mlp", encoder.state_dict(), "vitals", "binary", input_shape=(4,), latent=(4, 8), depth=1, device="cpu"
    )
    assert cacheable(block)
    assert not cacheable(attach(block, SSF(["vitals"]), "encoder").base)


def test_samples_repeated_in_a_batch_are_encoded_once(wrapped):
    from legokit.cache import cached_encoders

    paths, data = wrapped
    block = load_block(paths["notes"]).eval()
    counter = Counter(block)
    batch = _notes_batch(block, data, 2)
    x, mask = batch.x[[0, 1, 0, 0, 1]], batch.mask[[0, 1, 0, 0, 1]]  # as the dummies of missing inputs repeat
    with torch.no_grad(), cached_encoders(block, TokenCache(None)):
        got, got_mask = block.tokens(x, mask)
        want, want_mask = block.encoder_tokens(x, mask)
    assert counter.samples == 2 + 5
    assert torch.allclose(got[got_mask], want[want_mask], atol=1e-5)


@pytest.mark.parametrize("method", ["mora", "ssf"])
def test_missing_modality_adaptation_gives_the_same_numbers_with_the_cache(wrapped, method):
    import copy

    from legokit.training.workflows import adapt

    paths, data = wrapped
    fused, _ = fuse_blocks(
        [load_block(paths["notes"]), load_block(paths["reports"])],
        data,
        config=TrainConfig(epochs=1, device="cpu"),
        progress=False,
        cache=False,
    )
    runs = {}
    for cache in (None, False):  # every batch runs the encoders; the encoders' outputs kept (dummies too)
        _, result, _ = adapt(
            copy.deepcopy(fused),
            data,
            method,
            config=TrainConfig(epochs=2, patience=2, device="cpu"),
            progress=False,
            cache=cache,
            allow_overlap=True,
        )
        runs[cache] = result
    assert runs[False].encoding and not runs[None].encoding
    for a, b in zip(runs[None].history, runs[False].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert runs[None].test == pytest.approx(runs[False].test, abs=1e-5)


def test_buffers_rewritten_with_the_same_values_keep_the_key(monkeypatch):
    from legokit.cache import cached_encoders, frozen

    block, x = _vector_block(), torch.randn(3, 4)
    hashed = []
    real = frozen.encoder_key
    monkeypatch.setattr(frozen, "encoder_key", lambda b: hashed.append(1) or real(b))
    with torch.no_grad(), cached_encoders(block, TokenCache(None)):
        for _ in range(3):
            block.input_shift.copy_(block.input_shift.clone())  # as DistributedDataParallel broadcasts buffers
            block.tokens(x)
        assert len(hashed) == 1  # the encoder is not hashed again at every step
        block.input_shift.add_(1.0)
        changed, _ = block.tokens(x)
        assert len(hashed) == 2
        want, _ = block.encoder_tokens(x)
    assert torch.allclose(changed, want)
