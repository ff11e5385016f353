"""Small random Hugging Face BERT folders for tests (a word-level tokenizer.json over clinical words)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def bert_folder(folder: Path, seed: int, **config: int) -> Path:
    """A random BertModel saved with its tokenizer.json, as `benchmarks.encoder_families.bert` builds one; `config`
    overrides the small defaults (vocab 19 = the tokenizer's words, hidden 32, 2 layers)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from benchmarks.encoder_families import _tokenizer

    torch.manual_seed(seed)
    sizes = {
        "vocab_size": 19,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        **config,
    }
    transformers.BertModel(transformers.BertConfig(**sizes)).save_pretrained(folder)
    _tokenizer(folder / "tokenizer.json")
    return folder
