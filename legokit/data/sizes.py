"""What one sample and one batch of a dataset folder may take, and the error a dataset file's problem raises:
shared by the readers of tables, safetensors samples and HDF5 bags."""

from __future__ import annotations

from collections.abc import Sequence

from legokit.errors import LegoError

MAX_BATCH_BYTES = 1 << 30  # one modality's padded inputs for one batch
MAX_SAMPLE_BYTES = MAX_BATCH_BYTES  # one sample's tensor, stored and as float32: a larger one fits no batch


class DataError(LegoError, ValueError):
    """A dataset file is missing, malformed, or holds values a model cannot take (NaN, wrong width)."""


def shown(dims: Sequence[int]) -> str:
    """A shape from a file, as at most 80 characters."""
    return str(tuple(dims))[:80]


def gib(count: int) -> str:
    """A byte count in GiB (huge ones said so, not printed)."""
    return f"{count / 2**30:,.1f} GiB" if count < 1 << 80 else "over 2^50 GiB"
