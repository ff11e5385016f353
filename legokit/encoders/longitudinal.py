"""An encoder for irregular longitudinal measurements (a patient's tests up to a landmark, one token per test day):
each feature's last value, mean and slope over time plus the number of tokens (`legokit.encoders.summaries`), then a
self-normalising MLP. It reads at least what a practitioner's last-value summary gives a Cox model, which an
attention pool over the tokens (abmil) did not (docs/benchmarks.md, "Composed models vs practitioner baselines")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        time = None if self.time_feature == -1 else self.time_feature
        return self.net(sequence_summaries(x, mask, time))

    @staticmethod
    def infer_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Sizes read off a saved state dict (the time feature is not in it: the default, 0, is assumed)."""
        sizes = stack_sizes([v for k, v in state_dict.items() if k.startswith("net.") and k.endswith(".weight")])
        if sizes:
            sizes["in_features"] = (sizes["in_features"] - 1) // 3
        return sizes
