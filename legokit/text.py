"""Text as a modality: a tokenizer that travels inside the block, and raw text turned into padded token ids.

The tokenizer is a Hugging Face `tokenizer.json` kept verbatim in the block's config: it is JSON, and the
`tokenizers` library (an optional extra, `pip install 'legokit[text]'`) builds it without running any code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .errors import ConfigError, LegoError, brief, positive_int

MAX_TOKENIZER_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class TextSpec:
    """How a text modality becomes token ids: the tokenizer (tokenizer.json text) and the most tokens a sample keeps
    (the encoder's position limit)."""

    tokenizer: str
    max_tokens: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip().startswith("{"):
            raise ConfigError("a text block's tokenizer must be the JSON text of a tokenizer.json")
        if len(self.tokenizer) > MAX_TOKENIZER_BYTES:
            raise ConfigError(f"the tokenizer is over {MAX_TOKENIZER_BYTES // 2**20} MiB")
        positive_int("max_tokens", self.max_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TextSpec":
        return cls(data["tokenizer"], data.get("max_tokens", 512))


class TextEncoder:
    """Raw strings -> (ids (b, n) int64, mask (b, n) bool), padded at the end to the longest sample of the batch;
    an empty string (or None, a missing sample) gives no token at all."""

    def __init__(self, spec: TextSpec):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LegoError("reading text needs the tokenizers library: pip install 'legokit[text]'") from exc
        try:
            json.loads(spec.tokenizer)
            self.tokenizer = Tokenizer.from_str(spec.tokenizer)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types on a bad file
            raise ConfigError(f"the block's tokenizer cannot be read ({brief(exc, 160)})") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(spec.max_tokens)

    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        present = [i for i, t in enumerate(texts) if t]
        encoded = self.tokenizer.encode_batch([texts[i] for i in present]) if present else []
        ids = [e.ids for e in encoded]
        width = max((len(i) for i in ids), default=1) or 1
        out = torch.zeros(len(texts), width, dtype=torch.int64)
        mask = torch.zeros(len(texts), width, dtype=torch.bool)
        for row, sample in zip(present, ids):
            out[row, : len(sample)] = torch.tensor(sample, dtype=torch.int64)
            mask[row, : len(sample)] = True
        return out, mask
