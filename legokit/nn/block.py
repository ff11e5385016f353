"""LegoBlock (MM-Lego Eq. 1-3): an encoder wrapped so that it writes its modality into a frequency-domain latent."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from legokit.contract import Contract, check_task_terms, tokenizer_digest
from legokit.data.batch import ModalityBatch, as_batches
from legokit.encoders import FOREIGN, ExportedEncoder, build_encoder, token_input
from legokit.encoders.contract import INPUT_DTYPES
from legokit.encoders.stack import MAX_DEPTH, MAX_FEATURES, MAX_PARAMETERS, MAX_WIDTH, bounded_int
from legokit.errors import ConfigError, ShapeError
from legokit.hub.pretrained import HubMixin
from legokit.nn.layers import TaskHead, UpdateLayer
from legokit.nn.spectral import (
    FFT_AXES,
    HEAD_FEATURES,
    UPDATE_PARTS,
    as_rows,
    from_rows,
    pool_spectrum,
    pooled_width,
    to_frequency,
    to_spatial,
)
from legokit.schema import SPEC, from_dict, option, stored, to_dict
from legokit.tasks import TaskSpec
from legokit.text.spec import TextSpec

TokensAndMask = tuple[torch.Tensor, "torch.Tensor | None"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder a block wraps: a built-in by name with its keyword arguments, or a foreign `export` program."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    out_dim: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"encoder name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"encoder kwargs must be a mapping, got {type(self.kwargs).__name__}")
        bounded_int("encoder out_dim", self.out_dim, CAPS["out_dim"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs), "out_dim": self.out_dim}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderSpec:
        return cls(data["name"], dict(data.get("kwargs", {})), data["out_dim"])


# defaults of new blocks, chosen on validation splits (docs/benchmarks.md, "Merge vs blocks")
DEFAULT_UPDATE = "real"
DEFAULT_HEAD_FEATURES = "real"
DEFAULT_SHARED_INIT = True
# what files written before these settings existed used: the paper's Re-only update, a Re+Im head, own init
LEGACY = {"update": "real", "head_features": "re-im", "shared_init": False}
SHARED_SEED = 20240613  # any fixed number: what matters is that every block uses the same one

# caps on what a config may ask for, so that a hostile file cannot make legokit allocate gigabytes or loop for hours;
# the encoders' caps (`legokit.encoders.stack`) are the same mechanism
CAPS = {
    "latent": 4096,
    "depth": MAX_DEPTH,
    "heads": 64,
    "dim_head": 1024,
    "ff_mult": 16,
    "input": MAX_FEATURES,
    "out_dim": MAX_WIDTH,
}


def parse_latent(text: str) -> tuple[int, int]:
    """Read a latent shape written `64x64` (channels x dimensions)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"latent shape must look like 64x64, got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_input_shape(text: str) -> tuple[int | None, ...]:
    """Read a per-sample input shape: `76` for a vector, `?x32` for a bag of any number of 32-feature tokens."""
    dims: list[int | None] = []
    for part in text.lower().split("x"):
        part = part.strip()
        if part in ("?", "n", "*"):
            dims.append(None)
        elif part.isdigit() and int(part) > 0:
            dims.append(int(part))
        else:
            raise ConfigError(f"input shape must look like 76 or ?x32, got {text!r}")
    return tuple(dims)


def format_shape(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def format_latent(latent: tuple[int, int]) -> str:
    return "x".join(map(str, latent))


def _text(value: Any) -> TextSpec | None:
    return None if value is None else TextSpec.from_dict(value)


def _contract(value: Any) -> Contract:
    return Contract.from_dict(value or {})


@dataclass(frozen=True)
class Architecture:
    """A block's latent, update steps and head: the settings that block specs, `legokit wrap` and `legokit train`
    share, declared once here; their flags, spec keys and stored keys derive from these fields (`legokit.schema`).
    `absent`: what files written before a setting existed used (LEGACY)."""

    latent: tuple[int, int] = option(
        (64, 64),
        "latent shape, channels x dims (default {default})",
        parse=parse_latent,
        show=format_latent,
        keys=(SPEC,),
        load=tuple,
    )
    depth: int = option(2, "number of update steps S (default {default})", type=int, keys=(SPEC,))
    fft_axes: str = option(
        "both", "FFT over latent channels only, or both axes (default {default})", choices=FFT_AXES, keys=(SPEC,)
    )
    heads: int = option(1, "attention heads of each update step (default {default})", type=int, keys=(SPEC,))
    dim_head: int = option(64, "width of each attention head (default {default})", type=int, keys=(SPEC,))
    ff_mult: int = option(
        4, "feed-forward width of each update step, in latent dimensions (default {default})", type=int, keys=(SPEC,)
    )
    dropout: float = option(
        0.0, "dropout in the update steps (default {default})", type=float, show="{:g}".format, keys=(SPEC,)
    )
    update: str = option(
        DEFAULT_UPDATE,
        "what each step updates: Re(FFT(L)) as the paper, or Re and Im (default {default})",
        choices=UPDATE_PARTS,
        keys=(SPEC,),
        absent=LEGACY["update"],
    )
    head_features: str = option(
        DEFAULT_HEAD_FEATURES,
        "what the head reads: Re channel means, Re and Im, or magnitude and phase (default {default})",
        choices=HEAD_FEATURES,
        keys=(SPEC,),
        absent=LEGACY["head_features"],
    )
    shared_init: bool = option(
        DEFAULT_SHARED_INIT,
        "start the latent, updates and head from the same values in every "
        "block of this shape, so that blocks merge as fine-tunes of one base model do (default "
        "{default})",
        show={True: "yes", False: "no"}.get,
        keys=(SPEC,),
        absent=LEGACY["shared_init"],
    )

    def __post_init__(self) -> None:
        self._check_architecture()

    def settings(self) -> dict[str, Any]:
        """The architecture's fields by name (what `BlockConfig` takes as keywords)."""
        return {item.name: getattr(self, item.name) for item in fields(Architecture)}

    def _check_architecture(self) -> None:
        if not isinstance(self.latent, tuple) or len(self.latent) != 2:
            raise ConfigError(f"latent must be (channels, dimensions), got {self.latent!r}")
        bounded_int("latent channels", self.latent[0], CAPS["latent"])
        bounded_int("latent dimensions", self.latent[1], CAPS["latent"])
        for what in ("depth", "heads", "dim_head", "ff_mult"):
            bounded_int(what, getattr(self, what), CAPS[what])
        if self.fft_axes not in FFT_AXES:
            raise ConfigError(f"fft axes must be one of {', '.join(FFT_AXES)}, got {self.fft_axes!r}")
        if self.update not in UPDATE_PARTS:
            raise ConfigError(f"update must be one of {', '.join(UPDATE_PARTS)}, got {self.update!r}")
        if self.head_features not in HEAD_FEATURES:
            raise ConfigError(f"head features must be one of {', '.join(HEAD_FEATURES)}, got {self.head_features!r}")
        if not isinstance(self.shared_init, bool):
            raise ConfigError(f"shared_init must be true or false, got {self.shared_init!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class _Wrapped:
    """What a block is for: its modality, encoder, per-sample input shape and task (a base class only so that these
    come first, positionally, before the architecture, as they always did)."""

    modality: str
    encoder: EncoderSpec = stored(load=EncoderSpec.from_dict)
    input_shape: tuple[int | None, ...] = stored(load=tuple)
    task: TaskSpec = stored(load=TaskSpec.from_dict)


@dataclass(frozen=True)
class BlockConfig(Architecture, _Wrapped):
    """Everything that rebuilds a LegoBlock's modules, validated once, here: what it wraps (`_Wrapped`), its
    `Architecture`, its input dtype, tokenizer and contract; stored by `to_dict` and read back by `from_dict`."""

    input_dtype: str = stored("float32", absent="float32")
    text: TextSpec | None = stored(None, absent=None, load=_text, omit_default=True)
    contract: Contract = stored(Contract(), absent=Contract(), load=_contract, omit_default=True)  # set by training

    def __post_init__(self) -> None:
        if not isinstance(self.modality, str) or not _NAME.match(self.modality):
            raise ConfigError(f"modality name must be letters, digits, '_' or '-' (up to 64), got {self.modality!r}")
        if not isinstance(self.input_shape, tuple) or not 1 <= len(self.input_shape) <= 4:
            raise ConfigError(f"input shape must have 1 to 4 dimensions, got {self.input_shape!r}")
        for d in self.input_shape:
            if d is not None:
                bounded_int("each input dimension", d, CAPS["input"])
        if self.input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"input dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.input_dtype!r}")
        if self.input_dtype == "int64" and self.input_shape != (None,):
            raise ConfigError(f"integer inputs are token ids of shape (n,), got {format_shape(self.input_shape)}")
        if self.input_shape[-1] is None and self.input_dtype != "int64":
            raise ConfigError("the last input dimension (features) must be fixed")
        if self.text is not None and self.input_dtype != "int64":
            raise ConfigError("a text modality takes integer token ids (input dtype int64)")
        self._check_architecture()
        self._check_budget()
        self._check_contract()

    def _check_contract(self) -> None:
        """The contract must describe this block: one feature name per input feature, the tokenizer it carries, bin
        edges, a time unit and class names as the task takes them (`contract.check_task_terms`)."""
        contract, task = self.contract, self.task
        if not isinstance(contract, Contract):
            raise ConfigError(f"a block's contract must be a Contract, got {type(contract).__name__}")
        if contract.features is not None and len(contract.features) != self.features:
            raise ConfigError(f"the contract names {len(contract.features)} features; the input has {self.features}")
        if contract.tokenizer is not None and (
            self.text is None or contract.tokenizer != tokenizer_digest(self.text.tokenizer)
        ):
            raise ConfigError("the contract's tokenizer is not the one the block carries")
        check_task_terms(task, contract.edges, contract.time_unit, contract.classes)

    def _check_budget(self) -> None:
        """Refuse, by arithmetic alone, a latent and update layers over MAX_PARAMETERS (each size is capped, their
        product is not): the latent, and per step the query, key/value and output projections and feed-forward."""
        channels, dim = self.latent
        inner = self.heads * self.dim_head
        step = dim * inner + 2 * inner * self.encoder.out_dim + inner * dim + 2 * dim * dim * self.ff_mult
        total = channels * dim + self.depth * step
        if total > MAX_PARAMETERS:
            raise ConfigError(
                f"latent {channels}x{dim}, depth {self.depth}, heads {self.heads} x dim_head "
                f"{self.dim_head}, ff_mult {self.ff_mult} and encoder width {self.encoder.out_dim} make "
                f"about {total:,} parameters; legokit caps a block at {MAX_PARAMETERS:,}"
            )

    @property
    def tokens_in(self) -> bool:
        """True when a sample is a sequence of tokens (a token axis, variable or fixed, or token ids)."""
        return len(self.input_shape) > 1 or self.input_shape[0] is None

    @property
    def features(self) -> int:
        """The width of the per-feature input standardisation: the last input axis (0 for token ids)."""
        return self.input_shape[-1] or 0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockConfig:
        """A stored config; settings a file predates take the values such files were written with (LEGACY)."""
        return from_dict(cls, data)


class LegoBlock(HubMixin, nn.Module):
    """A unimodal encoder plus S frequency-domain latent updates and a task head (MM-Lego Eq. 1-3).

    Each step transforms the latent with an FFT, updates its real part (or, with `update: complex`, both
    parts) by cross-attention to the encoder's tokens and a feed-forward, keeps the rest, and inverts the
    FFT for the next step; the last step stays in the frequency domain, where merging happens. The encoder
    runs once.
    """

    input_shift: torch.Tensor  # buffers (set_normalization): per-feature standardisation of the inputs
    input_scale: torch.Tensor

    def __init__(self, config: BlockConfig, encoder: nn.Module | None = None, program: bytes | None = None):
        super().__init__()
        self.config = config
        if encoder is None:
            if config.encoder.name == FOREIGN:
                if program is None:
                    raise ConfigError("a block with a foreign encoder needs its program bytes")
                takes_mask = bool(config.encoder.kwargs.get("mask_keyword"))
                encoder = ExportedEncoder(program, config.encoder.out_dim, takes_mask)
            else:
                encoder = build_encoder(config.encoder.name, config.encoder.kwargs)
        wants_tokens = token_input(encoder)
        if wants_tokens is not None and wants_tokens != config.tokens_in:
            kind = "a bag of tokens (?xF)" if wants_tokens else "a feature vector (F)"
            raise ConfigError(
                f"encoder {config.encoder.name} takes {kind}, but the input shape is {format_shape(config.input_shape)}"
            )
        self.encoder = encoder
        channels, dim = config.latent
        self.latent = nn.Parameter(torch.empty(channels, dim))
        nn.init.trunc_normal_(self.latent, std=0.02)
        self.layers = nn.ModuleList(
            UpdateLayer(dim, config.encoder.out_dim, config.heads, config.dim_head, config.ff_mult, config.dropout)
            for _ in range(config.depth)
        )
        self.task_head = TaskHead(pooled_width(dim, config.head_features), config.task.out_features)
        features = config.features
        # per-feature standardisation of the input, set from the training split, so it travels with the block
        self.register_buffer("input_shift", torch.zeros(features))
        self.register_buffer("input_scale", torch.ones(features))
        self.provenance: dict[str, Any] = {}
        # where tokens come from instead of the encoder, while a frozen encoder's outputs are cached (`legokit.cache`)
        self.token_source: Callable[[LegoBlock, torch.Tensor, torch.Tensor | None], TokensAndMask | None] | None = None
        if config.shared_init:
            self.initialize_shared()

    def initialize_shared(self) -> None:
        """Give the latent, update layers and head the same initial values in every block of this shape, whatever
        its encoder or the global seed: blocks then merge as fine-tunes of one base model do (beyond the paper)."""
        for name, module in self.named_modules():
            if name.startswith("encoder") or not hasattr(module, "reset_parameters"):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SHARED_SEED + zlib.crc32(name.encode()))
                module.reset_parameters()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(SHARED_SEED)
            nn.init.trunc_normal_(self.latent, std=0.02)

    def set_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Inputs become (x - shift) / scale, per feature, before the encoder; a scale of 0 is taken as 1."""
        self.input_shift.copy_(shift.to(self.input_shift))
        self.input_scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)).to(self.input_scale))

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def data_input(self) -> tuple[int | None, ...] | TextSpec:
        """What a dataset folder must supply for this block: raw text (read through its tokenizer) or tensors of
        its per-sample input shape."""
        return self.config.text if self.config.text is not None else self.config.input_shape

    def check_input(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Raise a ShapeError naming the modality unless x (and mask) fit the block's input shape."""
        expected = self.config.input_shape
        shown = f"(batch, {', '.join('n' if d is None else str(d) for d in expected)})"
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"modality {self.modality}: input must be a tensor, got {type(x).__name__}")
        if x.dim() != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
            raise ShapeError(f"modality {self.modality}: expected input of shape {shown}, got {tuple(x.shape)}")
        if self.config.input_dtype == "int64":
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise ShapeError(f"modality {self.modality}: input must be integer token ids, got {x.dtype}")
        elif not x.is_floating_point():
            raise ShapeError(f"modality {self.modality}: input must be floating point, got {x.dtype}")
        if mask is not None:
            if not self.config.tokens_in:
                raise ShapeError(f"modality {self.modality}: a mask is only for token inputs, this one is a vector")
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ShapeError(
                    f"modality {self.modality}: mask must be bool of shape {tuple(x.shape[:2])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> TokensAndMask:
        """The encoder's tokens (b, n, e) and their padding mask (or None when every token is real): from the token
        source when one is attached and applies (a frozen encoder's cached outputs), else from running the encoder."""
        self.check_input(x, mask)
        if self.token_source is not None:
            found = self.token_source(self, x, mask)
            if found is not None:
                return found
        return self.encoder_tokens(x, mask)

    def encoder_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> TokensAndMask:
        """Run the encoder once on a checked input: standardise it, then read its output as tokens and mask."""
        if self.config.input_dtype == "int64":
            x = x.long()
        else:
            x = (x - self.input_shift) / self.input_scale
        if isinstance(self.encoder, ExportedEncoder):
            return self.encoder.encode_tokens(x, mask)
        out = self.encoder(x, mask) if getattr(self.encoder, "accepts_mask", False) else self.encoder(x)
        if out.dim() == 2:
            return rearrange(out, "b e -> b 1 e"), None
        if out.dim() != 3:
            raise ShapeError(
                f"modality {self.modality}: encoder returned shape {tuple(out.shape)}; expected (b, e) or (b, n, e)"
            )
        keeps = getattr(self.encoder, "keeps_tokens", False) and mask is not None and out.shape[1] == mask.shape[1]
        return out, mask if keeps else None

    def start(self, batch: int) -> torch.Tensor:
        """The learned spatial latent, repeated over the batch (the parameter itself is never overwritten)."""
        return repeat(self.latent, "c d -> b c d", b=batch)

    def step(
        self,
        index: int,
        latent: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update step `index` on a spatial latent (b, c, d); returns the complex spectrum after the update."""
        spectrum = to_frequency(latent, self.config.fft_axes)
        if self.config.update == "complex":
            return from_rows(self.layers[index](as_rows(spectrum), tokens, mask, present))
        real = self.layers[index](spectrum.real, tokens, mask, present)
        return torch.complex(real.float(), spectrum.imag)

    def encode(
        self,
        x: torch.Tensor | Mapping[str, ModalityBatch | torch.Tensor],
        mask: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The block's frequency-domain latent (b, c, d), complex, of its input `x` (or of its modality's batch in a
        mapping of modalities, as every legokit model takes); `start` replaces the learned initial latent."""
        if isinstance(x, Mapping):
            x, mask = self._own_input(x)
        tokens, token_mask = self.tokens(x, mask)
        latent = self.start(x.shape[0]) if start is None else start
        spectrum = latent
        for index in range(self.config.depth):
            if index:
                latent = to_spatial(spectrum, self.config.fft_axes)
            spectrum = self.step(index, latent, tokens, token_mask)
        return spectrum

    def _own_input(
        self, inputs: Mapping[str, ModalityBatch | torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.modality not in inputs:
            raise ShapeError(f"no input for modality {self.modality!r} (given: {', '.join(inputs) or 'none'})")
        batch = as_batches({self.modality: inputs[self.modality]})[self.modality]
        return batch.x, batch.mask

    def decode(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Task logits from a frequency-domain latent (b, c, d)."""
        return self.task_head(pool_spectrum(spectrum, self.config.head_features))

    def forward(
        self, x: torch.Tensor | Mapping[str, ModalityBatch | torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Task logits of an input (b, ...) with its padding mask, or of `{modality: batch}` like every model."""
        return self.decode(self.encode(x, mask))

    @property
    def head(self) -> nn.Module:
        """The task head module (stored as `task_head` in files)."""
        return self.task_head

    @property
    def modalities(self) -> list[str]:
        return [self.modality]

    @property
    def task(self) -> TaskSpec:
        return self.config.task

    @property
    def blocks(self) -> dict[str, LegoBlock]:
        return {self.modality: self}

    @property
    def head_features(self) -> str:
        return self.config.head_features

    @property
    def block_prefixes(self) -> dict[str, str]:
        return {self.modality: ""}

    @property
    def first_blocks(self) -> list[str]:
        return [self.modality]

    def program(self) -> bytes | None:
        """The foreign encoder's program bytes, or None for a built-in encoder."""
        return self.encoder.program if isinstance(self.encoder, ExportedEncoder) else None
