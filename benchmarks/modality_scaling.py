"""Benchmark: cost against the number of modalities M = 2, 4, 8, 16 for LegoMerge, LegoFuse stack and weave,
beside a pairwise cross-attention fusion baseline (every ordered-free pair of modalities cross-attends: M(M-1)/2
cross-attentions, as many intermediate-fusion models do). legokit should grow linearly in M, the baseline
quadratically; the table shows milliseconds per forward+backward pass and growth relative to M = 2.

Every modality: a bag of 16 tokens of 32 features, a token-wise MLP encoder (hidden 64), latent 32x32, depth 2.

    python -m benchmarks.modality_scaling [--batch 64] [--json scaling.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from legokit.compose.fuse import fuse
from legokit.compose.merge import merge
from legokit.encoders import MLP
from legokit.nn.block import BlockConfig, EncoderSpec, LegoBlock
from legokit.nn.layers import CrossAttention
from legokit.tasks import TaskSpec

TOKENS, FEATURES, HIDDEN = 16, 32, 64


class PairwiseFusion(nn.Module):
    """Per modality an encoder; for every pair (i, j), i's tokens cross-attend to j's and j's to i's; the results
    are mean-pooled, concatenated and fed to a linear head. M(M-1)/2 pairs: quadratic in M."""

    def __init__(self, modalities: list[str], out: int = 4):
        super().__init__()
        self.modalities = modalities
        self.encoders = nn.ModuleDict({m: MLP(FEATURES, HIDDEN, 2, 0.0) for m in modalities})
        self.pairs = list(itertools.combinations(modalities, 2))
        self.attend = nn.ModuleList(
            CrossAttention(HIDDEN, HIDDEN, heads=1, dim_head=HIDDEN) for _ in range(2 * len(self.pairs))
        )
        self.head = nn.Linear(2 * len(self.pairs) * HIDDEN, out)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        pooled = []
        for k, (a, b) in enumerate(self.pairs):
            pooled.append(self.attend[2 * k](tokens[a], tokens[b]).mean(dim=1))
            pooled.append(self.attend[2 * k + 1](tokens[b], tokens[a]).mean(dim=1))
        return self.head(torch.cat(pooled, dim=1))


def blocks(count: int) -> list[LegoBlock]:
    torch.manual_seed(0)
    made = []
    for k in range(count):
        spec = EncoderSpec("mlp", {"in_features": FEATURES, "hidden": HIDDEN, "dropout": 0.0}, HIDDEN)
        config = BlockConfig(f"m{k:02d}", spec, (None, FEATURES), TaskSpec("survival", 4), (32, 32), 2, dim_head=32)
        made.append(LegoBlock(config))
    return made


def milliseconds(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int) -> float:
    def step() -> None:
        model(inputs).sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    rows = []
    for count in (2, 4, 8, 16):
        made = blocks(count)
        inputs = {b.modality: torch.randn(args.batch, TOKENS, FEATURES) for b in made}
        models = {
            "merge": merge(made),
            "stack": fuse(made, "stack"),
            "weave": fuse(made, "weave"),
            "pairwise cross-attention": PairwiseFusion([b.modality for b in made]),
        }
        rows.append(
            {"modalities": count, **{name: milliseconds(m.train(), inputs, args.repeats) for name, m in models.items()}}
        )
    names = [k for k in rows[0] if k != "modalities"]
    table = Table(title=f"ms per forward+backward, batch {args.batch} (growth vs M = 2 in brackets)")
    table.add_column("M", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(str(row["modalities"]), *(f"{row[n]:.1f} ({row[n] / rows[0][n]:.1f}x)" for n in names))
    Console(width=140).print(table)
    console = Console(width=140)
    last = rows[-1]
    console.print("M 2 -> 16 (8x the modalities): " + ", ".join(f"{n} {last[n] / rows[0][n]:.1f}x" for n in names))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
