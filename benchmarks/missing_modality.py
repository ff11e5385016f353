"""Benchmark: MoRA's missing-modality grid (MoRA Table 2, its protocol) on real data, for four ways of adapting a
fused model, with MoRA at its new default placement and at the previous one for the comparison on validation.

Datasets: the bundled PBC landmark data (labs table, visits sequence), GSE7390 (clinical table, 76 genes; needs
scikit-survival) and ACTG 175 (clinical table, CD4/CD8 counts; needs lifelines). For each seed a fused model (stack,
2 epochs) is trained on complete data; then, for each training missing rate eta in {0.3, 0.7} (MoRA's protocol: of
the complete samples, a share eta misses exactly one modality, half of them each; dummies are the training means),
it is adapted with: only the head, MoRA (rank 4, each block's first key/value projection, head trains), SSF (every
update layer, head frozen as its paper does), and full fine-tuning; each is tested at eta in {0.3, 0.7} (test draws
independent of the training ones). Metric: test c-index, mean ± s.d. over seeds; validation c-index for the MoRA
placements; trainable shares (one modality set, all sets) and estimated training memory.

    python -m benchmarks.missing_modality [--seeds 5] [--datasets PBC,GSE7390,ACTG175] [--json missing.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from legokit.data.actg175 import write_actg175
from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.gse7390 import write_gse7390
from legokit.data.training import SplitData
from legokit.spec import BlockSpec
from legokit.training.metrics import task_loss
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import adapt, evaluate_missing, fuse_blocks, train_block

RATES = (0.3, 0.7)
METHODS = ("head", "mora", "ssf", "full")
NAMES = {"head": "head only", "mora": "MoRA", "ssf": "SSF", "full": "full fine-tuning"}
DATASETS = {
    "PBC": (write_pbc, ("labs", "snn"), ("visits", "abmil")),
    "GSE7390": (write_gse7390, ("clinical", "snn"), ("genes", "snn")),
    "ACTG175": (write_actg175, ("clinical", "snn"), ("immune", "snn")),
}


def training_memory(model: torch.nn.Module, data: SplitData, ids: list[str]) -> int:
    """Bytes for one training step: parameters, gradients and AdamW's two moments of the trainable ones, and the
    activations autograd saves for the backward pass (counted by a saved-tensors hook; an estimate on CPU)."""
    modalities = list(model.modalities)
    batches, targets = data.batch(ids, data.survival_edges(data.ids("train", modalities)))
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = task_loss(data.labels.task, model(batches), targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return params + 3 * trainable + saved


def run(name: str, seeds: int, folder: Path) -> dict:
    writer, (first, first_encoder), (second, second_encoder) = DATASETS[name]
    writer(folder)
    modalities = (first, second)
    cells: dict[str, dict[str, list[float]]] = {}
    placement: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, list[dict]] = {m: [] for m in METHODS}
    memory: dict[str, list[int]] = {m: [] for m in METHODS}
    for seed in range(seeds):
        blocks = []
        for modality, encoder in ((first, first_encoder), (second, second_encoder)):
            spec = BlockSpec(modality, encoder, {"hidden": 32}, latent=(16, 16), dim_head=16).override(
                seed=seed, epochs=30, patience=6
            )
            blocks.append(train_block(folder, spec, progress=False)[0])
        fused, _ = fuse_blocks(blocks, folder, "stack", TrainConfig(epochs=2, seed=seed), progress=False)
        config = TrainConfig(epochs=20, patience=5, seed=seed)
        for train_rate in RATES:
            for at in ("tokens", "first"):  # the MoRA placements, compared on validation
                _, result, _ = adapt(
                    copy.deepcopy(fused), folder, "mora", at=at, missing_rate=train_rate, config=config, progress=False
                )
                placement.setdefault(f"eta {train_rate:g}", {}).setdefault(at, []).append(result.val["c_index"])
            for method in METHODS:
                model = copy.deepcopy(fused)  # adapters attach in place; each method starts from the same model
                adapted, _, found = adapt(model, folder, method, missing_rate=train_rate, config=config, progress=False)
                counts[method].append(found)
                if train_rate == RATES[-1]:
                    data = SplitData.load(folder, {m: modality_shape(folder, m) for m in modalities}, fused.task, seed)
                    memory[method].append(training_memory(adapted, data, data.ids("train")[:32]))
                for test_rate in RATES:
                    metrics = evaluate_missing(adapted, folder, None, seed=seed, missing_rate=test_rate)
                    key = f"{train_rate:g} -> {test_rate:g}"
                    cells.setdefault(key, {}).setdefault(method, []).append(metrics["c_index"])
    share = {
        m: {
            k: statistics.fmean(c[k] for c in v)
            for k in ("percent", "percent_one_set", "percent_all_sets")
            if k in v[0]
        }
        for m, v in counts.items()
    }
    return {
        "modalities": list(modalities),
        "cells": cells,
        "mora_placement_val": placement,
        "trainable": share,
        "training_memory_bytes": {m: statistics.fmean(v) for m, v in memory.items()},
    }


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="repeated seeds (default 5)")
    parser.add_argument("--datasets", default="PBC,GSE7390,ACTG175", help="comma separated: PBC, GSE7390, ACTG175")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {}
    console = Console(width=160)
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run(name, args.seeds, Path(tmp))
        result = results[name]
        m1, m2 = result["modalities"]
        table = Table(
            title=f"{name} ({m1} / {m2}): test c-index, mean ± s.d. over {args.seeds} seeds; "
            "train eta -> test eta (MoRA's protocol)"
        )
        table.add_column("train eta -> test eta")
        for method in METHODS:
            table.add_column(NAMES[method], justify="right")
        for key, scores in result["cells"].items():
            table.add_row(key, *(_cell(scores[m]) for m in METHODS))
        table.add_row("trainable parameters", *(f"{result['trainable'][m]['percent']:.2f}%" for m in METHODS))
        table.add_row(
            "adapter, one modality set / all sets",
            "—",
            *(
                f"{result['trainable'][m]['percent_one_set']:.2f}% / {result['trainable'][m]['percent_all_sets']:.2f}%"
                for m in ("mora", "ssf")
            ),
            "—",
        )
        table.add_row("est. training memory", *(f"{result['training_memory_bytes'][m] / 1e6:.2f} MB" for m in METHODS))
        console.print(table)
        for key, found in result["mora_placement_val"].items():
            console.print(
                f"{name}, MoRA placement, validation c-index at train {key}: "
                + ", ".join(f"{at} {_cell(values)}" for at, values in found.items())
            )
    console.print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
