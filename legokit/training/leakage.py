"""Which samples a model has seen: salted hashes of the ids it was trained and validated on, recorded in its
provenance, so that no command scores a model on its own training patients.

The ids themselves are never stored. (A salt does not anonymise a small, guessable id space such as 1..418: the
record says which of the ids you hold a model has seen, not who they are.)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legokit.errors import ConfigError


def _digest(salt: str, sample: str) -> str:
    return hashlib.sha256(f"{salt}|{sample}".encode()).hexdigest()[:16]


def sample_record(train: Sequence[str], val: Sequence[str]) -> dict[str, Any]:
    """The record of one training run: a fresh salt and the salted hashes of its training and validation ids."""
    salt = secrets.token_hex(8)
    return {
        "salt": salt,
        "train": sorted(_digest(salt, s) for s in train),
        "val": sorted(_digest(salt, s) for s in val),
    }


def _records(provenance: Any, where: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every sample record inside a provenance tree (a block's, a fused model's, each block of a merged one)."""
    if isinstance(provenance, Mapping):
        record = provenance.get("samples")
        if isinstance(record, Mapping) and isinstance(record.get("salt"), str):
            yield where or "model", record
        for key, value in provenance.items():
            if key != "samples":
                yield from _records(value, f"{where}.{key}" if where else str(key))


def has_record(provenance: Any) -> bool:
    """Whether a provenance tree holds any sample record (files written before records existed hold none)."""
    return any(True for _ in _records(provenance))


def summarized(provenance: Any) -> Any:
    """A copy of a provenance tree with each sample record shown as its counts, for people to read."""
    if isinstance(provenance, Mapping):
        return {
            k: (
                f"{len(v.get('train', ()))} training and {len(v.get('val', ()))} validation ids (salted hashes)"
                if k == "samples" and isinstance(v, Mapping)
                else summarized(v)
            )
            for k, v in provenance.items()
        }
    if isinstance(provenance, list):
        return [summarized(v) for v in provenance]
    return provenance


@dataclass(frozen=True)
class Overlap:
    """How many of the scored samples one training run saw (in its training or validation split)."""

    where: str
    seen: int

    def __str__(self) -> str:
        return f"{self.seen} in the training/validation samples of {self.where}"


def overlaps(
    provenance: Mapping[str, Any], ids: Sequence[str], parts: Sequence[str] = ("train", "val")
) -> list[Overlap]:
    """The training runs recorded in `provenance` that saw any of `ids` (in their `parts`: training, validation)."""
    found = []
    for where, record in _records(provenance):
        seen = {digest for part in parts for digest in record.get(part, ())}
        count = sum(_digest(record["salt"], sample) in seen for sample in ids)
        if count:
            found.append(Overlap(where.removesuffix(".trained").removesuffix(".fused"), count))
    return found


def refuse_overlap(provenance: Mapping[str, Any], ids: Sequence[str], split: str, allow: bool = False) -> list[str]:
    """Refuse to score samples that a model (or one of its blocks) was trained or validated on; with `allow`, return
    the warnings instead."""
    found = overlaps(provenance, ids)
    if not found:
        return []
    text = f"{max(o.seen for o in found)} of the {len(ids)} {split} samples were seen in training: " + "; ".join(
        map(str, found)
    )
    if not allow:
        raise ConfigError(
            f"{text}. Score it on samples none of its blocks saw (a splits.csv, or the seed they were "
            "trained with), or pass --allow-overlap to score anyway"
        )
    return [text]


def training_seed(provenance: Mapping[str, Any]) -> int | None:
    """The split seed a model was trained with: its own, or the one all its blocks share; None when they differ."""
    for key in ("fused", "trained"):
        record = provenance.get(key)
        if isinstance(record, Mapping) and isinstance(record.get("config"), Mapping):
            seed = record["config"].get("seed")
            return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    blocks = provenance.get("blocks")
    if isinstance(blocks, Mapping):
        seeds = {training_seed(b) for b in blocks.values() if isinstance(b, Mapping)}
        if len(seeds) == 1:
            return seeds.pop()
    return None
