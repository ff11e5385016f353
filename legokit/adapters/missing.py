"""The missing-modality protocol of MoRA (Table 2): per modality, a rate of samples whose input is missing; a
missing input is replaced by a zero dummy that the model still runs on, and only adapters are told."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..data.batch import ModalityBatch
from ..errors import ConfigError


@dataclass(frozen=True)
class MissingRates:
    """Fraction of samples (0..1) for which each modality is made missing, drawn per sample from a seed, so a
    sample's fate is the same in every epoch and every run. Samples already lacking a modality stay without it."""

    rates: Mapping[str, float]
    seed: int = 0

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ConfigError(f"missing rate of {name} must be in [0, 1], got {rate!r}")

    @classmethod
    def parse(cls, text: str | None, seed: int = 0) -> "MissingRates":
        """Read `tab=0.3,seq=1.0` (30% of tab missing, all seq missing)."""
        if not text:
            return cls({}, seed)
        rates = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            try:
                rates[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"--missing must look like tab=0.3,seq=1.0, got {text!r}") from None
            if not sep or not name.strip():
                raise ConfigError(f"--missing must look like tab=0.3,seq=1.0, got {text!r}")
        return cls(rates, seed)

    def check(self, modalities: Sequence[str]) -> None:
        unknown = sorted(set(self.rates) - set(modalities))
        if unknown:
            raise ConfigError(f"missing rate for {unknown[0]!r}, which the model does not take ({', '.join(modalities)})")

    def _missing(self, modality: str, sample: str) -> bool:
        rate = self.rates.get(modality, 0.0)
        if rate <= 0:
            return False
        draw = hashlib.sha256(f"{self.seed}|{modality}|{sample}".encode()).digest()
        return int.from_bytes(draw[:8], "little") / 2**64 < rate

    def apply(self, batches: Mapping[str, ModalityBatch], ids: Sequence[str],
              modalities: Sequence[str]) -> dict[str, ModalityBatch]:
        """Every modality of the model for these samples, missing ones (drawn, or absent in the data) as zero
        dummies: present for the model, not observed for the adapters."""
        size = len(ids)
        out: dict[str, ModalityBatch] = {}
        for modality in modalities:
            drawn = torch.tensor([self._missing(modality, i) for i in ids], dtype=torch.bool)
            batch = batches.get(modality)
            if batch is None:
                raise ConfigError(f"the data has no modality {modality!r}")
            observed = batch.presence() & ~drawn
            keep = observed.reshape(-1, *([1] * (batch.x.dim() - 1))).to(batch.x.dtype)
            mask = batch.mask
            if mask is not None:
                # a dummy is one zero token, so that attention has something to attend to
                dummy = torch.zeros_like(mask)
                dummy[:, 0] = True
                mask = torch.where(observed.unsqueeze(1), mask, dummy)
            out[modality] = ModalityBatch(batch.x * keep, mask, torch.ones(size, dtype=torch.bool), observed)
        return out
