"""Text as a modality: a tokenizer that travels inside the block, and raw text turned into padded token ids.

The tokenizer is a Hugging Face `tokenizer.json` kept verbatim in the block's config: it is JSON, and the
`tokenizers` library (an optional extra, `pip install 'legokit[text]'`) builds it without running any code, once
`tokenizer_check` has accepted every part of it (a regex or charsmap from a stranger could otherwise hang or panic
the library). Every call into the library turns its errors and Rust panics into one-line errors, and a long text is
read from its shortest prefix that fixes the tokens kept, so the work per sample follows the encoder's token limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from legokit.errors import ConfigError, LegoError, brief, positive_int
from legokit.text.tokenizer_check import checked_tokenizer

MAX_TOKENIZER_BYTES = 32 * 1024 * 1024
FIRST_PREFIX_CHARS = 4096  # the first prefix of a long text that is tokenized (at least 8 characters per token kept)
MAX_NORMALIZED_BYTES = 8 * 2**20  # UTF-8 bytes of a text read, times the tokenizer's growth bound
MAX_MODEL_WORK = 10_000_000  # characters of a text read, times the model's work per character
T = TypeVar("T")


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
    def from_dict(cls, data: Mapping[str, Any]) -> TextSpec:
        return cls(data["tokenizer"], data.get("max_tokens", 512))


class TextEncoder:
    """Raw strings -> (ids (b, n) int64, mask (b, n) bool), padded at the end to the longest sample of the batch;
    an empty string (or None, a missing sample) gives no token at all."""

    def __init__(self, spec: TextSpec):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LegoError("reading text needs the tokenizers library: pip install 'legokit[text]'") from exc
        checked = checked_tokenizer(spec.tokenizer)
        self.tokenizer = guarded("the block's tokenizer cannot be read", Tokenizer.from_str, json.dumps(checked.config))
        guarded("the block's tokenizer cannot be set up", self.tokenizer.no_padding)
        guarded("the block's tokenizer cannot be set up", self.tokenizer.enable_truncation, spec.max_tokens)
        added = guarded("the block's tokenizer cannot be set up", self.tokenizer.num_special_tokens_to_add, False)
        if added >= spec.max_tokens:
            raise ConfigError(
                f"the block's tokenizer adds {added} special tokens, leaving no room for text in "
                f"{spec.max_tokens} tokens"
            )
        self.max_tokens = spec.max_tokens
        self.most_bytes = max(1, int(MAX_NORMALIZED_BYTES / checked.growth))
        self.most_chars = max(1, MAX_MODEL_WORK // checked.cost)

    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        present = [i for i, t in enumerate(texts) if t]
        ids = self.token_ids([str(texts[i]) for i in present]) if present else []
        found: list[list[int] | None] = [None] * len(texts)
        for row, sample in zip(present, ids):
            found[row] = sample
        return padded(found)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids, special tokens added and truncated to max_tokens, read from its shortest prefix (of
        FIRST_PREFIX_CHARS or 8 per token, growing fourfold) whose kept tokens have settled, and never past the work
        budget: the work per sample follows the tokens kept, not the text's length."""
        found: dict[int, list[int]] = {}
        pending, limit = list(range(len(texts))), max(FIRST_PREFIX_CHARS, 8 * self.max_tokens)
        while pending:
            heads = [self._head(texts[i], limit) for i in pending]
            encodings = guarded(
                "the block's tokenizer failed on a text", self.tokenizer.encode_batch, heads, add_special_tokens=False
            )
            later = []
            for index, head, encoding in zip(pending, heads, encodings):
                whole = len(head) == len(texts[index]) or len(head) < limit  # all of it, or all the budget allows
                if whole or self._settled(encoding, len(head)):
                    found[index] = guarded(
                        "the block's tokenizer failed on a text", self.tokenizer.post_process, encoding
                    ).ids
                else:
                    later.append(index)
            pending, limit = later, limit * 4
        return [found[i] for i in range(len(texts))]

    def _head(self, text: str, limit: int) -> str:
        """The first `limit` characters of a text, cut shorter where reading them would pass the work budget (the
        model's cost per character, the tokenizer's growth per byte): a text too long for it is read that far."""
        head = text[: min(limit, self.most_chars)]
        data = head.encode("utf-8", "surrogatepass")
        if len(data) <= self.most_bytes:
            return head
        cut = self.most_bytes
        while cut and data[cut] & 0xC0 == 0x80:
            cut -= 1
        return data[:cut].decode("utf-8", "surrogatepass")

    def _settled(self, encoding: Any, length: int) -> bool:
        """Whether a prefix's first max_tokens tokens all end in its first seven eighths: text past the prefix
        only changes the tokens near its end (the word it cuts), so those are the full text's tokens."""
        offsets = encoding.offsets
        return len(offsets) >= self.max_tokens and max(end for _, end in offsets[: self.max_tokens]) <= length * 7 // 8


def padded(ids: Sequence[Sequence[int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (b, n) int64 padded at the end to the longest sample, and the mask of real tokens; None (a
    missing sample) gives no token."""
    width = max((len(i) for i in ids if i), default=1) or 1
    out = torch.zeros(len(ids), width, dtype=torch.int64)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for row, sample in enumerate(ids):
        if sample:
            out[row, : len(sample)] = torch.tensor(sample, dtype=torch.int64)
            mask[row, : len(sample)] = True
    return out, mask


def _is_panic(exc: BaseException) -> bool:
    """A Rust panic inside a pyo3 library: pyo3_runtime.PanicException, which derives from BaseException only (it
    cannot be imported by name)."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def guarded(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)` into the tokenizers library, its exceptions and Rust panics turned into one-line
    ConfigErrors that start with `what`; anything else (KeyboardInterrupt, SystemExit) passes."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exception and its own types
        raise ConfigError(f"{what} ({brief(exc, 160)})") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise ConfigError(f"{what}: the tokenizers library panicked ({brief(exc, 160)})") from exc
