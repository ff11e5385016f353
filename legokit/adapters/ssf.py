"""SSF for missing modalities (Reza et al., arXiv:2310.03986, Sec. 3.2): a per-channel scale gamma and shift beta
after every linear, convolution and normalisation layer of the targeted modules, h' = gamma * h + beta, with one
(gamma, beta) set per combination of available modalities, chosen per sample. Scale starts at 1 and shift at 0
(upstream SSF draws them around those values), so the adapted model starts as the base, which stays frozen, its
head too unless asked (`prepare_adaptation`).

The paper pretrains the network on all modalities, freezes it, and learns SSF parameters for the combinations with
modalities missing: the model for complete samples is the pretrained one. So by default the all-present combination
is the identity (scale 1, shift 0), not a parameter: complete samples pass through every site unchanged and their
predictions stay the base's exactly, whatever training does. `SSF(modalities, train_complete=True)` trains a set for
that combination too (what legokit did before; adapter files without the `train_complete` key load that way). An
adapter file always holds one row per combination (2^M); without `train_complete` its complete row is the identity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from legokit.adapters.base import MAX_SITE_WIDTH, Adapter, Sited, canonical_modules, site_key
from legokit.adapters.registry import register_adapter
from legokit.encoders.stack import bounded_int
from legokit.errors import ConfigError

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
    """The (gamma, beta) sets of one site, a row per combination of available modalities (bit m of a combination's
    index: modality m is there). Unless `train_complete`, the last combination (all present) has no row: it is the
    identity, outside every gradient and every optimiser step; `state_dict` still lists one row per combination
    (the identity in the last), so that an adapter file has the same tensors either way."""

    no_weight_decay = ("scale",)  # a scale's identity is 1: weight decay would pull it to 0 (`train.parameter_groups`)

    def __init__(self, channels: int, combinations: int, dim: int, train_complete: bool = False):
        super().__init__()
        self.dim = dim
        self.train_complete = train_complete
        rows = combinations if train_complete else combinations - 1
        self.scale = nn.Parameter(torch.ones(rows, channels))
        self.shift = nn.Parameter(torch.zeros(rows, channels))

    def forward(self, out: torch.Tensor, combination: torch.Tensor) -> torch.Tensor:
        rows = self.scale.shape[0]
        complete = None if self.train_complete else combination == rows  # all present: index 2^M - 1 == rows
        if complete is not None:
            combination = combination.clamp(max=rows - 1)  # any row; complete samples take `out` below
        scale, shift = self.scale[combination].to(out.dtype), self.shift[combination].to(out.dtype)
        if self.dim == -1:
            shape = (out.shape[0], *([1] * (out.dim() - 2)), -1)
        else:
            shape = (out.shape[0], -1, *([1] * (out.dim() - 2)))
        adapted = out * scale.reshape(shape) + shift.reshape(shape)
        if complete is None:
            return adapted
        return torch.where(complete.reshape(out.shape[0], *([1] * (out.dim() - 1))), out, adapted)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.train_complete:  # one row per combination, as a file holds them: the complete one is the identity
            for name, value in (("scale", 1.0), ("shift", 0.0)):
                rows = destination[prefix + name]
                destination[prefix + name] = torch.cat([rows, rows.new_full((1, rows.shape[1]), value)])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if not self.train_complete:  # the complete combination's row (the identity, as saved) is not a parameter
            for name in ("scale", "shift"):
                table = state_dict.get(prefix + name)
                if isinstance(table, torch.Tensor) and table.dim() == 2 and table.shape[0] == self.scale.shape[0] + 1:
                    state_dict[prefix + name] = table[:-1]
        super()._load_from_state_dict(state_dict, prefix, *args)


class SSFWrapped(Sited):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner(x, *args, **kwargs)
        mask = self.adapter.mask_for(out)
        powers = 2 ** torch.arange(mask.shape[1], device=mask.device)
        return self.site(out, (mask.long() * powers).sum(dim=1))


@register_adapter("ssf")
class SSF(Adapter):
    """Scale-and-shift features per modality combination, after every linear, convolution and normalisation layer
    inside the targeted modules (default: every update layer). As in Reza et al. (arXiv:2310.03986), the sets are
    learned for the combinations with modalities missing (2^M - 1 for M modalities) and complete samples keep the
    pretrained model; `train_complete=True` learns a set for the complete combination too (2^M sets)."""

    summary = "scale and shift"
    options = ("train_complete",)
    trains_head = False  # head and base frozen, as the SSF paper does
    default_at = "all"

    def __init__(self, modalities: Sequence[str], train_complete: bool = False):
        super().__init__(modalities)
        if not isinstance(train_complete, bool):
            raise ConfigError(f"SSF train_complete must be True or False, got {train_complete!r}")
        self.train_complete = train_complete

    @property
    def trained_combinations(self) -> int:
        """How many (gamma, beta) sets train: 2^M, or 2^M - 1 when the complete combination is the identity."""
        return 2 ** len(self.modalities) - (0 if self.train_complete else 1)

    def expand(self, model: nn.Module, targets: list[str]) -> list[str]:
        modules = canonical_modules(model)
        layers = []
        for target in targets:
            if isinstance(modules[target], CHANNELS_LAST + CHANNELS_FIRST):
                layers.append(target)
                continue
            layers += [
                name
                for name, inner in modules.items()
                if name.startswith(target + ".") and isinstance(inner, CHANNELS_LAST + CHANNELS_FIRST)
            ]
        if not layers:
            raise ConfigError(f"no linear, convolution or normalisation layer inside {', '.join(targets)}")
        return layers

    def build_site(self, sizes: Sequence[int]) -> nn.Module:
        channels, dim = sizes
        return SSFSite(channels, 2 ** len(self.modalities), dim, self.train_complete)

    def sizes_for(self, module: nn.Module) -> list[int]:
        return list(channels_of(module.inner if isinstance(module, Sited) else module))

    def site_sizes(self, site: nn.Module) -> list[int]:
        ssf = cast(SSFSite, site)  # `build_site` makes every site
        return [ssf.scale.shape[1], ssf.dim]  # [channels, channel dim]

    def site_shapes(self, sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
        channels = sizes[0]  # scale and shift (2^M, channels): the complete row the identity or trained
        return {"scale": (2 ** len(self.modalities), channels), "shift": (2 ** len(self.modalities), channels)}

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return SSFWrapped(module, self, site_key(name))

    @classmethod
    def check_sizes(cls, key: str, sizes: Sequence[Any]) -> None:
        """[channels, channel dim]: the dim is -1 (channels last) or 1 (channels first)."""
        channels, dim = sizes
        bounded_int(f"site {key} width", channels, MAX_SITE_WIDTH)
        if dim not in (-1, 1) or isinstance(dim, bool):
            raise ConfigError(f"site {key} channel dim must be -1 or 1, got {repr(dim)[:20]}")

    @classmethod
    def read_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """A file without `train_complete` was written before the setting existed, when the complete set trained."""
        value = config.get("train_complete", True)
        if not isinstance(value, bool):
            raise ConfigError(f"train_complete must be a bool, got {repr(value)[:40]}")
        return {"train_complete": value}

    def check_stored(self, sites: Iterable[str], state: Mapping[str, torch.Tensor]) -> None:
        """Without `train_complete` the complete row is the identity: a file holding another is refused, never
        silently dropped."""
        if self.train_complete:
            return
        for key in sites:
            for name, identity in (("scale", 1.0), ("shift", 0.0)):
                if not bool((state[f"sites.{key}.{name}"][-1] == identity).all()):
                    raise ConfigError(
                        f"train_complete is false, but site {key[:80]!r} holds a {name} other than the "
                        f"identity ({identity:g}) for complete samples"
                    )

    @property
    def sets(self) -> int:
        return 2 ** len(self.modalities)

    @property
    def trained_sets(self) -> int:
        return self.trained_combinations
