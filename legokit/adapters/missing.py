"""Missing-modality protocols. MoRA's own (Table 2, `MissingSplit`, the default): a total missing rate eta shared
between the modalities, each affected sample missing exactly one, the others complete, none empty; and independent
per-modality rates (`MissingRates`). A missing input is replaced by a dummy that the model still runs on and only
adapters are told of: the training mean, so that it is zero after the block's standardisation."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from legokit.data.batch import ModalityBatch
from legokit.errors import ConfigError


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
    def parse(cls, text: str | None, seed: int = 0) -> MissingRates:
        """Read `tab=0.3,seq=1.0` (30% of tab missing, all seq missing)."""
        if not text:
            return cls({}, seed)
        rates = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            try:
                rates[name.strip()] = float(value)
            except ValueError as exc:
                raise ConfigError(f"--missing must look like tab=0.3,seq=1.0, got {text!r}") from exc
            if not sep or not name.strip():
                raise ConfigError(f"--missing must look like tab=0.3,seq=1.0, got {text!r}")
        return cls(rates, seed)

    def check(self, modalities: Sequence[str]) -> None:
        unknown = sorted(set(self.rates) - set(modalities))
        if unknown:
            raise ConfigError(
                f"missing rate for {unknown[0]!r}, which the model does not take ({', '.join(modalities)})"
            )

    def _missing(self, modality: str, sample: str) -> bool:
        rate = self.rates.get(modality, 0.0)
        if rate <= 0:
            return False
        draw = hashlib.sha256(f"{self.seed}|{modality}|{sample}".encode()).digest()
        return int.from_bytes(draw[:8], "little") / 2**64 < rate

    def apply(
        self,
        batches: Mapping[str, ModalityBatch],
        ids: Sequence[str],
        modalities: Sequence[str],
        dummies: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, ModalityBatch]:
        """Every modality of the model for these samples, missing ones (drawn, or absent in the data) as dummies."""
        drawn = {m: [self._missing(m, i) for i in ids] for m in modalities}
        return with_dummies(batches, ids, modalities, drawn, dummies)


def with_dummies(
    batches: Mapping[str, ModalityBatch],
    ids: Sequence[str],
    modalities: Sequence[str],
    drawn: Mapping[str, Sequence[bool]],
    dummies: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, ModalityBatch]:
    """The batches with each drawn-missing (or absent) input replaced by its dummy, per-feature values that default
    to zeros (a bag becomes one dummy token): present for the model, not observed for the adapters."""
    size = len(ids)
    out: dict[str, ModalityBatch] = {}
    for modality in modalities:
        batch = batches.get(modality)
        if batch is None:
            raise ConfigError(f"the data has no modality {modality!r}")
        observed = batch.presence() & ~torch.tensor(list(drawn[modality]), dtype=torch.bool)
        keep = observed.reshape(-1, *([1] * (batch.x.dim() - 1)))
        dummy = torch.zeros(batch.x.shape[-1], dtype=batch.x.dtype)
        if dummies is not None and modality in dummies:
            dummy = dummies[modality].to(batch.x.dtype).reshape(-1).expand(batch.x.shape[-1])
        x = torch.where(keep, batch.x, dummy)
        mask = batch.mask
        if mask is not None:
            # a dummy bag is one dummy token, so that attention has something to attend to
            one = torch.zeros_like(mask)
            one[:, 0] = True
            mask = torch.where(observed.unsqueeze(1), mask, one)
        out[modality] = ModalityBatch(x, mask, torch.ones(size, dtype=torch.bool), observed)
    return out


DEFAULT_MISSING_RATE = 0.7  # eta, the missing rate MoRA's paper reports first
DEFAULT_MISSING_SPLIT = 0.5  # the first modality's share of the missing samples


@dataclass(frozen=True)
class MissingSplit:
    """MoRA's protocol (Table 2; "eta = 70%: 65% of samples have the image, 65% the text"): of the samples that have
    every modality, a share `rate` (eta) misses exactly one, split between the modalities (the first modality's
    share of them is `split` for two modalities; equal shares for more), the rest stay complete. Counts are exact
    (rounded) over the samples given; which samples is drawn from the seed. A sample that already lacks a modality
    is never made to miss another (the one it lacks is a dummy too), so no sample is left with none observed."""

    rate: float
    split: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for what, value in (("missing rate", self.rate), ("missing split", self.split)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{what} must be in [0, 1], got {value!r}")

    def check(self, modalities: Sequence[str]) -> None:
        if len(modalities) < 2 and self.rate > 0:
            raise ConfigError("a missing-modality protocol needs a model of at least 2 modalities")

    def shares(self, modalities: Sequence[str]) -> list[float]:
        if len(modalities) == 2:
            return [self.split, 1.0 - self.split]
        return [1.0 / len(modalities)] * len(modalities)

    def assign(self, ids: Sequence[str], complete: Sequence[str], modalities: Sequence[str]) -> dict[str, str]:
        """Which modality each affected sample misses: round(rate * n) of the n complete samples among `ids`."""
        keep = set(complete)
        pool = sorted(
            (i for i in ids if i in keep), key=lambda i: hashlib.sha256(f"{self.seed}|split|{i}".encode()).digest()
        )
        total = round(self.rate * len(pool))
        bounds, cumulative = [], 0.0
        for share in self.shares(modalities):
            cumulative += share
            bounds.append(round(total * cumulative))
        bounds[-1] = total
        chosen, start = {}, 0
        for modality, end in zip(modalities, bounds):
            chosen.update(dict.fromkeys(pool[start:end], modality))
            start = end
        return chosen

    def applier(
        self,
        data_ids: Mapping[str, Sequence[str]],
        complete: Sequence[str],
        modalities: Sequence[str],
        dummies: Mapping[str, torch.Tensor] | None = None,
    ):
        """A batch rewriter for the trainer: the assignment is drawn once per split (exact counts per split)."""
        chosen: dict[str, str] = {}
        for ids in data_ids.values():
            chosen.update(self.assign(ids, complete, modalities))

        def apply(batches: Mapping[str, ModalityBatch], ids: Sequence[str]) -> dict[str, ModalityBatch]:
            drawn = {m: [chosen.get(i) == m for i in ids] for m in modalities}
            return with_dummies(batches, ids, modalities, drawn, dummies)

        return apply
