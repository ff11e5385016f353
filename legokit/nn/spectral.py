"""Pure tensor math of the frequency domain: FFT helpers for LegoBlock (MM-Lego Eq. 2). No modules, no I/O."""

from __future__ import annotations

import torch
from einops import rearrange

FFT_AXES: tuple[str, ...] = ("channels", "both")


def _dims(axes: str) -> tuple[int, ...]:
    """The latent (b, c, d) dimensions an FFT runs over: c only, or c and d (the paper's 2-D transform)."""
    if axes == "channels":
        return (-2,)
    if axes == "both":
        return (-2, -1)
    raise ValueError(f"fft axes must be one of {FFT_AXES}, got {axes!r}")


def to_frequency(latent: torch.Tensor, axes: str) -> torch.Tensor:
    """Complex spectrum of a real latent (b, c, d), computed in float32 whatever the autocast state (Eq. 2)."""
    with torch.autocast(device_type=latent.device.type, enabled=False):
        return torch.fft.fftn(latent.float(), dim=_dims(axes))


def to_spatial(spectrum: torch.Tensor, axes: str) -> torch.Tensor:
    """Real latent from a complex spectrum: the inverse FFT, keeping its real part as the next step's state."""
    with torch.autocast(device_type=spectrum.device.type, enabled=False):
        return torch.fft.ifftn(spectrum, dim=_dims(axes)).real


HEAD_FEATURES: tuple[str, ...] = ("real", "re-im", "polar")
UPDATE_PARTS: tuple[str, ...] = ("real", "complex")


def pool_spectrum(spectrum: torch.Tensor, features: str = "re-im") -> torch.Tensor:
    """Head features of a frequency-domain latent (b, c, d), averaged over channels: Re only (`real`, (b, d), as the
    public code), Re and Im (`re-im`, (b, 2d)), or magnitude and phase (`polar`, (b, 2d))."""
    if features == "real":
        return spectrum.real.mean(dim=-2)
    if features == "re-im":
        return torch.cat([spectrum.real.mean(dim=-2), spectrum.imag.mean(dim=-2)], dim=-1)
    if features == "polar":
        return torch.cat([spectrum.abs().mean(dim=-2), torch.angle(spectrum).mean(dim=-2)], dim=-1)
    raise ValueError(f"head features must be one of {HEAD_FEATURES}, got {features!r}")


def pooled_width(dim: int, features: str) -> int:
    """Width of `pool_spectrum`'s output for a latent of `dim` dimensions."""
    return dim if features == "real" else 2 * dim


def as_rows(spectrum: torch.Tensor) -> torch.Tensor:
    """A complex spectrum (b, c, d) as real rows (b, 2c, d): Re rows, then Im rows, so one update reads and writes
    both parts (the `complex` update; the paper's update touches Re only)."""
    return rearrange(torch.view_as_real(spectrum), "b c d part -> b (part c) d")


def from_rows(rows: torch.Tensor) -> torch.Tensor:
    """Inverse of `as_rows`: real rows (b, 2c, d) back to a complex spectrum (b, c, d)."""
    return torch.view_as_complex(rearrange(rows.float(), "b (part c) d -> b c d part", part=2).contiguous())


PHASE_MODES: tuple[str, ...] = ("paper", "circular")
DEFAULT_PHASE = PHASE_MODES[0]  # the paper's arithmetic mean of phases


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


def phase_mean(phases: torch.Tensor, weights: torch.Tensor, mode: str = DEFAULT_PHASE) -> torch.Tensor:
    """Weighted mean of angles over the first axis: arithmetic (`paper`, Eq. 4) or of unit phasors (`circular`).

    The arithmetic mean wraps badly (+pi and -pi average to 0); the circular one does not, and an empty or
    cancelling set of phasors has angle 0.
    """
    weights = weights.to(phases.dtype)
    if mode == "paper":
        total = weights.sum(dim=0)
        return torch.where(
            total > 0, (weights * phases).sum(dim=0) / total.clamp_min(torch.finfo(phases.dtype).tiny), 0.0
        )
    if mode == "circular":
        return torch.atan2((weights * torch.sin(phases)).sum(dim=0), (weights * torch.cos(phases)).sum(dim=0))
    raise ValueError(f"phase mode must be one of {PHASE_MODES}, got {mode!r}")


def merge_spectra(
    spectra: torch.Tensor, weights: torch.Tensor, present: torch.Tensor | None = None, phase: str = DEFAULT_PHASE
) -> torch.Tensor:
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
