"""Passes over a whole split that hold one chunk at a time: running per-feature moments (Chan et al.'s parallel
update of Welford's algorithm, in float64) and the plan that cuts samples into chunks under a token budget."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Moments:
    """Per-feature count, mean and sum of squared deviations over the rows seen so far (float64)."""

    count: int = 0
    mean: torch.Tensor | None = None
    squares: torch.Tensor | None = field(default=None)

    def add(self, rows: torch.Tensor) -> None:
        """Merge a chunk of rows (n, features) into the running moments."""
        if rows.shape[0] == 0:
            return
        rows = rows.double()
        mean = rows.mean(dim=0)
        self.merge(Moments(rows.shape[0], mean, ((rows - mean) ** 2).sum(dim=0)))

    def merge(self, other: Moments) -> None:
        """Merge another set of moments (of other rows: a chunk, or another process's share) into these."""
        if other.mean is None or other.squares is None:
            return
        n, mean, squares = other.count, other.mean, other.squares
        if self.mean is None or self.squares is None:
            self.count, self.mean, self.squares = n, mean, squares
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.squares = self.squares + squares + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and population standard deviation, float32 (as `Tensor.mean` and `.std(unbiased=False)` give)."""
        if self.mean is None or self.squares is None:
            raise ValueError("no rows were seen")
        return self.mean.float(), (self.squares / self.count).sqrt().float()


def budget_chunks(ids: Sequence[str], lengths: Sequence[int], budget: int, most: int | None = None) -> list[list[str]]:
    """Consecutive chunks of `ids` whose padded size (samples x the longest) stays within `budget` tokens and
    `most` samples; a sample longer than the budget is a chunk of its own. Order is kept."""
    chunks: list[list[str]] = []
    current: list[str] = []
    longest = 0
    for sample, length in zip(ids, lengths):
        wider = max(longest, length)
        if current and ((len(current) + 1) * wider > budget or (most is not None and len(current) >= most)):
            chunks.append(current)
            current, wider = [], length
        current.append(sample)
        longest = wider
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class Subsample:
    """At most `most` tokens of each bag in a training step, drawn at random without replacement and kept in their
    order; the draw depends only on `seed` and the sample's id (the same with or without loader workers, in any
    batch), and the trainer changes `seed` every epoch."""

    most: int
    seed: int

    def rows(self, sample: str, tokens: int) -> torch.Tensor | None:
        """Which of a bag's `tokens` rows to keep (sorted), or None to keep them all."""
        if tokens <= self.most:
            return None
        seed = (self.seed * 1_000_003 + zlib.crc32(sample.encode("utf-8"))) % (1 << 63)
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(tokens, generator=generator)[: self.most].sort().values


SPAN_GAP_BYTES = 16 << 10  # drawn rows closer than this are read in one span, the gap read and dropped


def row_spans(rows: torch.Tensor, row_bytes: int) -> list[tuple[int, int, int, int]]:
    """The reads that fetch sorted `rows` of a bag whose rows take `row_bytes` each: (first row, end row, first and
    end index into `rows`) per span, a span running on while the gap to the next drawn row is within SPAN_GAP_BYTES
    (one read of a few pages costs less than two; a gap wider than that is skipped)."""
    if len(rows) == 0:
        return []
    gap = max(1, SPAN_GAP_BYTES // max(1, row_bytes))
    breaks = (((rows[1:] - rows[:-1]) > gap).nonzero().flatten() + 1).tolist()
    starts, ends = [0, *breaks], [*breaks, len(rows)]
    return [(int(rows[s]), int(rows[e - 1]) + 1, s, e) for s, e in zip(starts, ends)]
