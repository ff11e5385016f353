"""The encoder contract: how legokit calls a user's encoder and reads what it returns.

legokit hands an encoder `x` (float features, or int64 token ids) and, for inputs with a variable token axis, a
padding mask under the keyword the encoder's `forward` names; it takes the first tensor of whatever comes back
(a tuple, a dict, a Hugging Face `ModelOutput`) unless told which, and reads feature maps as tokens:
(b, c, h, w) as h*w tokens of c features, (b, c, t) conv maps as t tokens. `EncoderCall` bakes those choices into
a module that torch.export turns into a program of the plain contract `(x[, mask]) -> (b, e) | (b, n, e)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from legokit.errors import ConfigError, EncoderError

# keyword -> what it means; the first one an encoder's forward names receives the padding mask
MASK_KEYWORDS: Mapping[str, str] = {
    "src_key_padding_mask": "True marks padding",
    "key_padding_mask": "True marks padding",
    "attention_mask": "1 marks a real token",
    "mask": "True marks a real token",
}
PADDING_TRUE = frozenset({"src_key_padding_mask", "key_padding_mask"})  # True marks padding, as torch's attention
LAYOUTS = ("tokens", "channels", "map")
INPUT_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@dataclass(frozen=True)
class Contract:
    """How to call one encoder: input dtype, the keyword of its padding mask (None: it takes none), which output
    to read (a key or an index into a tuple/dict output; None: the output is a tensor), and the output layout."""

    input_dtype: str = "float32"
    mask_keyword: str | None = None
    output: str | int | None = None
    layout: str = "tokens"

    def __post_init__(self) -> None:
        if self.input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"input dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.input_dtype!r}")
        if self.mask_keyword is not None and self.mask_keyword not in MASK_KEYWORDS:
            raise ConfigError(f"mask keyword must be one of {', '.join(MASK_KEYWORDS)}, got {self.mask_keyword!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def describe(self, variable: bool = True) -> str:
        """One line for the user: what legokit decided about this encoder (`variable`: its input has a token axis
        of any length)."""
        parts = ["integer token ids" if self.input_dtype == "int64" else "float inputs"]
        if variable:
            parts.append(
                f"padding mask as {self.mask_keyword} ({MASK_KEYWORDS[self.mask_keyword]})"
                if self.mask_keyword
                else "takes no padding mask, so samples run in groups of equal length, unpadded"
            )
        if self.output is not None:
            parts.append(f"output {self.output!r}")
        parts.append(
            {
                "tokens": "output read as tokens (b, n, e) or one token (b, e)",
                "channels": "output (b, c, t) read as t tokens of c features",
                "map": "output (b, c, h, w) read as h*w tokens of c features",
            }[self.layout]
        )
        return "; ".join(parts)


def mask_keyword(module: nn.Module) -> str | None:
    """The padding-mask keyword that the module's forward takes, if any (first of MASK_KEYWORDS)."""
    try:
        names = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in MASK_KEYWORDS if k in names), None)


def pick_output(out: Any, selector: str | int | None = None) -> tuple[torch.Tensor, str | int | None]:
    """The tensor an encoder's output holds at `selector` (default: the first tensor), and the selector used."""
    if isinstance(out, torch.Tensor):
        if selector is not None:
            raise EncoderError(f"--output-key {selector!r}: the encoder returns a single tensor, not a tuple or dict")
        return out, None
    if isinstance(out, Mapping):
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        if selector is None:
            if not keys:
                raise EncoderError(f"the encoder returns a {type(out).__name__} with no tensor in it")
            selector = keys[0]
        if str(selector) not in keys:
            raise EncoderError(
                f"--output-key {selector!r}: the encoder's {type(out).__name__} holds {', '.join(map(str, keys))}"
            )
        return out[str(selector)], str(selector)
    if isinstance(out, (tuple, list)):
        positions = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        if selector is None:
            if not positions:
                raise EncoderError(f"the encoder returns a {type(out).__name__} with no tensor in it")
            selector = positions[0]
        if not isinstance(selector, int) or selector not in positions:
            raise EncoderError(
                f"--output-key {selector!r}: the encoder's {type(out).__name__} has tensors at positions "
                f"{', '.join(map(str, positions))}"
            )
        return out[selector], selector
    raise EncoderError(f"the encoder returns a {type(out).__name__}; expected a tensor, a tuple or a dict of tensors")


def as_tokens(out: torch.Tensor, layout: str) -> torch.Tensor:
    """An encoder output in legokit's token layout: (b, e) or (b, n, e)."""
    if layout == "map":
        return rearrange(out, "b c h w -> b (h w) c")
    if layout == "channels":
        return rearrange(out, "b c t -> b t c")
    return out


def mask_value(mask: torch.Tensor, keyword: str) -> torch.Tensor:
    """legokit's mask (True = real token) in the convention of the encoder's keyword."""
    if keyword in PADDING_TRUE:
        return ~mask
    if keyword == "attention_mask":
        return mask.long()
    return mask


class EncoderCall(nn.Module):
    """A user's encoder behind the plain contract: `(x[, mask]) -> (b, e) | (b, n, e)`."""

    def __init__(self, module: nn.Module, contract: Contract):
        super().__init__()
        self.module = module
        self.contract = contract

    def raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        """What the user's module returns, called with the mask in its own convention (all real when None)."""
        keyword = self.contract.mask_keyword
        if keyword is None:
            return self.module(x)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if isinstance(self.module, torch.fx.GraphModule):  # an exported program: inputs are positional
            return self.module(x, mask_value(mask, keyword))
        return self.module(x, **{keyword: mask_value(mask, keyword)})

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = pick_output(self.raw(x, mask), self.contract.output)
        return as_tokens(out, self.contract.layout)
