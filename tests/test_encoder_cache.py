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
from legokit.cache import TokenCache, list_cache
from legokit.cli import main
from legokit.persist import load_block, save_block
from legokit.train import TrainConfig
from legokit.workflows import evaluate_model, fuse_blocks, train_wrapped_block

WORDS = ["bilirubin", "albumin", "prothrombin", "high", "low", "ascites", "edema", "spiders", "present", "absent",
         "stage", "1", "2", "3", "4"]
SAMPLES = 48


def _bert_folder(folder: Path, seed: int) -> Path:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from benchmarks.encoder_families import _tokenizer

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=19, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    _tokenizer(folder / "tokenizer.json")
    return folder


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
        block = legokit.wrap_file(_bert_folder(root / f"bert-{modality}", seed), modality=modality, task="binary",
                                  latent=(8, 8), depth=1, device="cpu")
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
    trained, result = train_wrapped_block(data, block, TrainConfig(epochs=epochs, patience=epochs, device="cpu",
                                                                   **config), progress=False, cache=cache)
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
    assert torch.equal(got_mask, want_mask[:, : got_mask.shape[1]]) and not want_mask[:, got_mask.shape[1]:].any()
    assert torch.allclose(got[got_mask], want[want_mask], atol=1e-5)
    cached, with_cache, _ = _train(paths["notes"], data, False)
    plain, without, counter = _train(paths["notes"], data, None)
    assert counter.samples > 2 * SAMPLES  # the encoder ran in every epoch and validation pass
    assert with_cache.best_epoch == without.best_epoch
    assert [round(r["train_loss"], 4) for r in with_cache.history] == [round(r["train_loss"], 4) for r in without.history]


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
    from legokit.train import parameter_groups, set_encoders

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
    fused, _ = fuse_blocks([notes, reports], data, config=TrainConfig(epochs=2, device="cpu"), progress=False,
                           cache=TokenCache(root))
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
    assert main(["train", str(data), "--block", str(paths["notes"]), "--epochs", "1", "-o", str(out), "-q",
                 "--no-cache"]) == 0
    assert list_cache(tmp_path / "c") == []


def test_the_old_flags_still_work_with_a_warning(wrapped, tmp_path, capsys):
    paths, data = wrapped
    out = tmp_path / "notes.st"
    assert main(["train", str(data), "--block", str(paths["notes"]), "--epochs", "1", "-o", str(out),
                 "--finetune-encoder", "--json", str(tmp_path / "r.json")]) == 0
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
