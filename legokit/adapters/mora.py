"""MoRA, modality-aware low-rank adaptation (Shi et al., MICCAI 2024, arXiv:2408.09064, Eq. 2-4). Not the
high-rank LoRA variant also called MoRA (arXiv:2405.12130) that PEFT and torchtune users may know.

A site wraps a module f: the output becomes f(x) + sum over the modalities m a sample has of B_m A x, with one
shared down-projection A (d_in -> r, A ~ N(0, 1/r)) and one up-projection B_m (r -> d_out) per modality, all zero at
the start so that the adapted model equals the base. Vectorised over the batch with the availability mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from legokit.adapters.base import Adapter, Sited, site_key
from legokit.adapters.registry import register_adapter
from legokit.encoders.stack import bounded_int
from legokit.errors import ConfigError
from legokit.nn.layers import UpdateLayer


def features_of(module: nn.Module) -> tuple[int, int]:
    """(input width, output width) of a module MoRA can wrap."""
    if isinstance(module, UpdateLayer):
        width = module.attention.norm_query.normalized_shape[0]
        return width, width
    if isinstance(module, Sited):
        return features_of(module.inner)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):  # read as nn.Linear has them
        linear = cast(nn.Linear, module)
        return int(linear.in_features), int(linear.out_features)
    raise ConfigError(
        f"cannot tell the input and output width of a {type(module).__name__}; give MoRA(features=(in, out))"
    )


class MoRASite(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, modalities: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, in_features) / rank**0.5)  # A ~ N(0, 1/r)
        self.up = nn.Parameter(torch.zeros(modalities, out_features, rank))  # B_m = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("b...i,ri->b...r", x, self.down.to(x.dtype))
        return torch.einsum("b...r,mor,bm->b...o", low, self.up.to(x.dtype), mask.to(x.dtype))


class MoRAWrapped(Sited):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner(x, *args, **kwargs)
        return out + self.site(x, self.adapter.mask_for(x)).to(out.dtype)


DEFAULT_RANK = 4  # the MoRA paper's
MAX_RANK = 4096


@register_adapter("mora")
class MoRA(Adapter):
    """Modality-aware LoRA over `modalities`, rank `rank` (the paper: 4). Placed by default where the input enters
    (`tokens`: the key/value projection of each block's first update step, which reads the encoder's tokens; the
    paper puts MoRA in the first block because that block sees the input), or at the `first` update layer (whose
    input, the learned latent, is the same for every sample), `all` update layers, or named modules."""

    summary = "modality-aware LoRA"
    options = ("rank",)
    trains_head = True  # the paper trains the head with the adapter
    default_at = "tokens"

    def __init__(self, modalities: Sequence[str], rank: int = DEFAULT_RANK, features: tuple[int, int] | None = None):
        super().__init__(modalities)
        self.rank = bounded_int("MoRA rank", rank, MAX_RANK)
        self.features = features

    def build_site(self, sizes: Sequence[int]) -> nn.Module:
        in_features, out_features = sizes
        return MoRASite(in_features, out_features, self.rank, len(self.modalities))

    def sizes_for(self, module: nn.Module) -> list[int]:
        return list(self.features or features_of(module))

    def site_sizes(self, site: nn.Module) -> list[int]:
        mora = cast(MoRASite, site)  # `build_site` makes every site
        return [mora.down.shape[1], mora.up.shape[1]]  # [in, out]

    def site_shapes(self, sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
        in_features, out_features = sizes  # down (r, in), up (M, out, r)
        return {"down": (self.rank, in_features), "up": (len(self.modalities), out_features, self.rank)}

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return MoRAWrapped(module, self, site_key(name))

    @classmethod
    def read_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"rank": bounded_int("MoRA rank", config.get("rank"), MAX_RANK)}

    def shared_parameters(self) -> int:
        return sum(cast(MoRASite, site).down.numel() for site in self.sites.values())  # `build_site` makes every site
