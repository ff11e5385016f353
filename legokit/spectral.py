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


PHASE_MODES: tuple[str, ...] = ("paper", "circular")


def harmonic_magnitude(magnitudes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted harmonic mean over the first axis, sum(w) / sum(w / |L|) (MM-Lego Eq. 4, K blocks).

    A zero magnitude among the weighted ones gives 0 (the mean's limit), and zero total weight gives 0: never NaN.
    """
    weights = weights.to(magnitudes.dtype)
    zero = (magnitudes == 0) & (weights > 0)
    inverse = torch.where(weights > 0, weights / torch.where(zero, 1.0, magnitudes), 0.0)
    total = weights.sum(dim=0)
    mean = total / inverse.sum(dim=0).clamp_min(torch.finfo(magnitudes.dtype).tiny)
    return torch.where(zero.any(dim=0) | (total == 0), 0.0, mean)


def phase_mean(phases: torch.Tensor, weights: torch.Tensor, mode: str = "paper") -> torch.Tensor:
    """Weighted mean of angles over the first axis: arithmetic (`paper`, Eq. 4) or of unit phasors (`circular`).

    The arithmetic mean wraps badly (+pi and -pi average to 0); the circular one does not, and an empty or
    cancelling set of phasors has angle 0.
    """
    weights = weights.to(phases.dtype)
    if mode == "paper":
        total = weights.sum(dim=0)
        return torch.where(total > 0, (weights * phases).sum(dim=0) / total.clamp_min(torch.finfo(phases.dtype).tiny), 0.0)
    if mode == "circular":
        return torch.atan2((weights * torch.sin(phases)).sum(dim=0), (weights * torch.cos(phases)).sum(dim=0))
    raise ValueError(f"phase mode must be one of {PHASE_MODES}, got {mode!r}")


def merge_spectra(spectra: torch.Tensor, weights: torch.Tensor, present: torch.Tensor | None = None,
                  phase: str = "paper") -> torch.Tensor:
    """LegoMerge of K frequency-domain latents (K, b, c, d): harmonic mean of magnitudes, mean of phases (Eq. 4).

    `weights` (K,) weigh the blocks; `present` (K, b) drops, per sample, the blocks whose modality is missing.
    """
    w = weights.to(spectra.real.dtype).reshape(-1, 1)
    if present is not None:
        w = w * present.to(w.dtype)
    w = w.reshape(*w.shape, *([1] * (spectra.dim() - 2)))
    magnitude = harmonic_magnitude(spectra.abs(), w)
    angle = phase_mean(torch.angle(spectra), w, phase)
    return torch.polar(magnitude, angle)
