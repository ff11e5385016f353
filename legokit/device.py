"""Choosing the torch device: `auto` is CUDA when present, else CPU."""

from __future__ import annotations

import torch

from legokit.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch.device from `auto`, `cpu`, `cuda` or `cuda:N`; asking for CUDA without one is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto")
    return resolved
