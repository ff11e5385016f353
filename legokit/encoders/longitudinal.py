"""An encoder for irregular longitudinal measurements (a patient's tests up to a landmark, one token per test day):
each feature's last value, mean and slope over time plus the number of tokens (`legokit.encoders.summaries`), then a
self-normalising MLP. It reads at least what a practitioner's last-value summary gives a Cox model, which an
attention pool over the tokens (abmil) did not (docs/benchmarks.md, "Composed models vs practitioner baselines")."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from einops import rearrange
from torch import nn

from legokit.encoders.registry import register_encoder
from legokit.encoders.stack import MAX_FEATURES, bounded_int, layer_stack, stack_shapes, stack_sizes, within_budget
from legokit.encoders.summaries import KINDS, sequence_summaries, summary_width
from legokit.errors import ConfigError


@register_encoder("longitudinal")
class LongitudinalSummary(nn.Module):
    """Maps tokens (b, n, in_features) in time order with a padding mask (b, n) to one token (b, hidden). Feature
    `time_feature` is each token's time (e.g. years before the landmark); -1 means token position."""

    token_input = True
    keeps_tokens = False
    accepts_mask = True

    def __init__(self, in_features: int, hidden: int = 64, depth: int = 2, dropout: float = 0.1, time_feature: int = 0):
        super().__init__()
        within_budget(
            "longitudinal",
            self.weight_shapes(in_features, hidden, depth, dropout, time_feature),
            {"in_features": in_features, "hidden": hidden, "depth": depth},
        )
        if time_feature >= in_features:
            raise ConfigError(
                f"longitudinal encoder time_feature {time_feature} is outside tokens of {in_features} "
                "features; name a feature index in [0, in_features) or -1 (token position)"
            )
        self.time_feature = time_feature
        self.net = layer_stack(
            summary_width(in_features),
            hidden,
            depth,
            lambda n, h: [nn.Linear(n, h), nn.SELU(), nn.AlphaDropout(dropout)],
        )
        self.out_dim = hidden
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")  # LeCun normal for SELU
                nn.init.zeros_(module.bias)

    @staticmethod
    def weight_shapes(
        in_features: int, hidden: int = 64, depth: int = 2, dropout: float = 0.1, time_feature: int = 0
    ) -> dict[str, tuple[int, ...]]:
        """The parameter shapes these settings make, by arithmetic alone (checked before anything is allocated); a
        size over its cap, or a time feature that is not an index (-1 or more), is a ConfigError. Whether the index
        is inside the token is checked when the encoder is built: a spec names no in_features until the data does."""
        bounded_int("longitudinal encoder in_features", in_features, (MAX_FEATURES - 1) // len(KINDS))
        if isinstance(time_feature, bool) or not isinstance(time_feature, int) or not -1 <= time_feature < MAX_FEATURES:
            raise ConfigError(
                f"longitudinal encoder time_feature must be a feature index (0 or more) or -1 "
                f"(token position), got {repr(time_feature)[:40]}"
            )
        return stack_shapes(
            "longitudinal",
            summary_width(in_features),
            hidden,
            depth,
            dropout,
            lambda index, width, out: {f"net.{3 * index}.weight": (out, width), f"net.{3 * index}.bias": (out,)},
        )

    def summaries(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the MLP reads: `sequence_summaries` of the (standardised) tokens (b, summary_width(in_features))."""
        return sequence_summaries(x, mask, None if self.time_feature == -1 else self.time_feature)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.summaries(x, mask))

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict (the time feature is not in it: the default, 0, is assumed)."""
        sizes = stack_sizes([v for k, v in state_dict.items() if k.startswith("net.") and k.endswith(".weight")])
        if sizes:
            sizes["in_features"] = (sizes["in_features"] - 1) // 3
        return sizes


class BatchSamples(Protocol):
    """A split that tells which samples a batch tensor it built holds (`legokit.data.training.SplitData`)."""

    def samples_in(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[str] | None: ...


class SummaryTable:
    """A longitudinal block's token source for one training run (`LegoBlock.token_source`): each sample's summaries
    are computed the first time a batch holds it, then looked up by sample id; the MLP runs at every step as before.

    Summaries are a fixed function of a sample's tokens, the block's input standardisation and the time feature, and
    each row depends on its own sample alone (not on the batch or its padding), so looked-up rows equal recomputed
    ones bit for bit. Only a batch the split built and nobody changed is looked up (`samples_in`): rewritten inputs
    (modality dropout, missing-modality dummies), moved copies (CUDA) and inputs that need a gradient run the encoder
    as before. Memory: one row of `summary_width(in_features)` floats per sample seen (in a table that grows by
    doubling), and its id's place, kept until the run ends."""

    def __init__(self, data: BatchSamples):
        self.data = data
        self.place: dict[str, int] = {}  # each summarised sample's row in `table`
        self.table = torch.empty(0, 0)
        self.basis: tuple[Any, ...] | None = None  # what the rows were computed under

    @staticmethod
    def usable(block: Any, x: torch.Tensor) -> bool:
        """The block's encoder is a longitudinal summary called as is (no hook on it) on an input without gradient."""
        encoder = block.encoder
        hooked = encoder._forward_hooks or encoder._forward_pre_hooks
        return isinstance(encoder, LongitudinalSummary) and not hooked and not x.requires_grad

    def same_basis(self, block: Any, x: torch.Tensor) -> bool:
        """Whether the kept rows were computed under this standardisation, time feature, device and dtype."""
        if self.basis is None:
            return False
        shift, scale, time, device, dtype = self.basis
        return (
            (time, device, dtype) == (block.encoder.time_feature, x.device, x.dtype)
            and torch.equal(shift, block.input_shift)
            and torch.equal(scale, block.input_scale)
        )

    def keep(self, ids: Sequence[str], summaries: torch.Tensor) -> None:
        """Add the rows of samples not kept yet (each once), growing the table by doubling."""
        fresh = {i: k for k, i in enumerate(ids) if i not in self.place}
        used = len(self.place)
        if used + len(fresh) > self.table.shape[0]:
            grown = summaries.new_empty(max(used + len(fresh), 2 * self.table.shape[0]), summaries.shape[1])
            if used:
                grown[:used] = self.table[:used]
            self.table = grown
        self.table[used : used + len(fresh)] = summaries[list(fresh.values())]
        self.place.update((i, used + n) for n, i in enumerate(fresh))

    def __call__(self, block: Any, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, None] | None:
        ids = self.data.samples_in(x, mask)
        if not ids or not self.usable(block, x):
            return None
        if not self.same_basis(block, x):
            shift, scale = block.input_shift.detach().clone(), block.input_scale.detach().clone()
            self.place, self.table = {}, torch.empty(0, 0)
            self.basis = (shift, scale, block.encoder.time_feature, x.device, x.dtype)
        rows = [self.place.get(i) for i in ids]
        if None not in rows:
            summaries = self.table[torch.tensor(rows, device=self.table.device)]
        else:  # as `LegoBlock.encoder_tokens` standardises, then as the encoder summarises
            summaries = block.encoder.summaries((x - block.input_shift) / block.input_scale, mask).detach()
            self.keep(ids, summaries)
        return rearrange(block.encoder.net(summaries), "b e -> b 1 e"), None


@contextmanager
def summarised_once(model: nn.Module, data: BatchSamples) -> Iterator[list[str]]:
    """Give the model's blocks with a longitudinal encoder and no other token source a `SummaryTable` of `data` for
    the duration (a training run); yields their modalities."""
    blocks = getattr(model, "blocks", None)
    attached = [
        block
        for block in (dict(blocks).values() if blocks is not None else [])
        if isinstance(block.encoder, LongitudinalSummary) and getattr(block, "token_source", False) is None
    ]
    try:
        for block in attached:
            block.token_source = SummaryTable(data)
        yield [block.modality for block in attached]
    finally:
        for block in attached:
            block.token_source = None
