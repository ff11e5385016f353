"""Pure tensor math of the frequency domain: FFT helpers for LegoBlock (MM-Lego Eq. 2). No modules, no I/O."""

from __future__ import annotations

from typing import Literal

import torch

FFTAxes = Literal["channels", "both"]
FFT_AXES: tuple[str, ...] = ("channels", "both")


def _dims(axes: FFTAxes) -> tuple[int, ...]:
    """The latent (b, c, d) dimensions an FFT runs over: c only, or c and d (the paper's 2-D transform)."""
    if axes == "channels":
        return (-2,)
    if axes == "both":
        return (-2, -1)
    raise ValueError(f"fft axes must be one of {FFT_AXES}, got {axes!r}")


def to_frequency(latent: torch.Tensor, axes: FFTAxes) -> torch.Tensor:
    """Complex spectrum of a real latent (b, c, d), computed in float32 whatever the autocast state (Eq. 2)."""
    with torch.autocast(device_type=latent.device.type, enabled=False):
        return torch.fft.fftn(latent.float(), dim=_dims(axes))


def to_spatial(spectrum: torch.Tensor, axes: FFTAxes) -> torch.Tensor:
    """Real latent from a complex spectrum: the inverse FFT, keeping its real part as the next step's state."""
    with torch.autocast(device_type=spectrum.device.type, enabled=False):
        return torch.fft.ifftn(spectrum, dim=_dims(axes)).real


def pool_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    """Head features of a frequency-domain latent (b, c, d): real and imaginary parts averaged over channels, (b, 2d)."""
    return torch.cat([spectrum.real.mean(dim=-2), spectrum.imag.mean(dim=-2)], dim=-1)
