"""SSF for missing modalities (Reza et al., arXiv:2310.03986): a per-channel scale and shift after every linear,
convolution and normalisation layer of the targeted modules, with one parameter set per combination of available
modalities, chosen per sample. Scale starts at 1 and shift at 0 (upstream SSF draws them around those values), so
the adapted model starts as the base, which stays frozen, its head too unless asked (`prepare_adaptation`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Adapter, Sited, canonical_modules, site_key

CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
CHANNELS_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def channels_of(module: nn.Module) -> tuple[int, int]:
    """(number of channels, channel dimension) after a layer SSF follows."""
    if isinstance(module, nn.Linear):
        return module.out_features, -1
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], -1
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.out_channels, 1
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return module.num_features, 1
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, 1
    raise ConfigError(f"SSF follows linear, convolution and normalisation layers, not a {type(module).__name__}")


class SSFSite(nn.Module):
    def __init__(self, channels: int, combinations: int, dim: int):
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(combinations, channels))
        self.shift = nn.Parameter(torch.zeros(combinations, channels))

    def forward(self, out: torch.Tensor, combination: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale[combination].to(out.dtype), self.shift[combination].to(out.dtype)
        if self.dim == -1:
            shape = (out.shape[0], *([1] * (out.dim() - 2)), -1)
        else:
            shape = (out.shape[0], -1, *([1] * (out.dim() - 2)))
        return out * scale.reshape(shape) + shift.reshape(shape)


class SSFWrapped(Sited):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner(x, *args, **kwargs)
        mask = self.adapter.mask_for(out)
        powers = 2 ** torch.arange(mask.shape[1], device=mask.device)
        return self.site(out, (mask.long() * powers).sum(dim=1))


class SSF(Adapter):
    """Scale-and-shift features per modality combination (2^M sets for M modalities), after every linear,
    convolution and normalisation layer inside the targeted modules (default: every update layer)."""

    kind = "ssf"
    default_at = "all"

    def expand(self, model: nn.Module, targets: list[str]) -> list[str]:
        modules = canonical_modules(model)
        layers = []
        for target in targets:
            if isinstance(modules[target], CHANNELS_LAST + CHANNELS_FIRST):
                layers.append(target)
                continue
            layers += [name for name, inner in modules.items()
                       if name.startswith(target + ".") and isinstance(inner, CHANNELS_LAST + CHANNELS_FIRST)]
        if not layers:
            raise ConfigError(f"no linear, convolution or normalisation layer inside {', '.join(targets)}")
        return layers

    def make_site(self, module: nn.Module) -> nn.Module:
        channels, dim = self.sizes_for(module)
        return SSFSite(channels, 2 ** len(self.modalities), dim)

    def sizes_for(self, module: nn.Module) -> list[int]:
        return list(channels_of(module.inner if isinstance(module, Sited) else module))

    def site_sizes(self, site: nn.Module) -> list[int]:
        return [site.scale.shape[1], site.dim]  # [channels, channel dim]

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return SSFWrapped(module, self, site_key(name))

    def config(self) -> dict[str, Any]:
        sites = {key: self.site_sizes(site) for key, site in self.sites.items()}
        return {**super().config(), "sites": sites}
