"""Benchmark: the MoRA missing-rate protocol (MoRA Table 2) on real data, for four ways of adapting a fused model.

Datasets: the bundled PBC landmark data (labs table, visits sequence) and GSE7390 (clinical table, 76 genes; needs
scikit-survival). For each seed a fused model (stack, 2 epochs) is trained on complete data; then, for each training
availability setting, it is adapted with: no adapter (only the head trains), MoRA (rank 4, first update layer),
SSF (all update layers), and full fine-tuning; each is tested under each test setting. A setting "A/B" is the
percentage of samples that HAVE modality 1 / modality 2 (MoRA's notation); the others get a zero dummy and only the
adapters are told. (PBC's 98 patients without visits never have them.) Metric: test c-index, mean over seeds.

    python -m benchmarks.missing_modality [--seeds 3] [--json missing.json]
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

from legokit.adapters import MissingRates
from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.gse7390 import write_gse7390
from legokit.data.training import SplitData
from legokit.metrics import task_loss
from legokit.spec import BlockSpec
from legokit.train import TrainConfig, run_model
from legokit.workflows import ADAPT_METHODS, adapt, evaluate_missing, fuse_blocks, train_block

SETTINGS = ((100, 30), (30, 100), (65, 65))
NAMES = {"head": "no adapter (head)", "mora": "MoRA", "ssf": "SSF", "full": "full fine-tuning"}
DATASETS = {
    "PBC": (write_pbc, ("labs", "snn"), ("visits", "abmil")),
    "GSE7390": (write_gse7390, ("clinical", "snn"), ("genes", "snn")),
}


def rates(setting: tuple[int, int], modalities: tuple[str, str]) -> str:
    return ",".join(f"{m}={1 - share / 100:g}" for m, share in zip(modalities, setting))


def training_memory(model: torch.nn.Module, data: SplitData, ids: list[str], missing: str, seed: int) -> int:
    """Bytes for one training step: parameters, gradients and AdamW's two moments of the trainable ones, and the
    activations autograd saves for the backward pass (counted by a saved-tensors hook; an estimate on CPU)."""
    modalities = list(model.modalities)
    batches, targets = data.batch(ids, data.survival_edges(data.ids("train", modalities)))
    batches = MissingRates.parse(missing, seed).apply(batches, ids, modalities)
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = task_loss(data.labels.task, run_model(model, batches), targets)
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
    shares: dict[str, list[float]] = {m: [] for m in ADAPT_METHODS}
    memory: dict[str, list[int]] = {m: [] for m in ADAPT_METHODS}
    for seed in range(seeds):
        blocks = []
        for modality, encoder in ((first, first_encoder), (second, second_encoder)):
            spec = BlockSpec(modality, encoder, {"hidden": 32}, latent=(16, 16), dim_head=16).override(
                seed=seed, epochs=30, patience=6)
            blocks.append(train_block(folder, spec, progress=False)[0])
        fused, _ = fuse_blocks(blocks, folder, "stack", TrainConfig(epochs=2, seed=seed), progress=False)
        for train_setting in SETTINGS:
            train_missing = rates(train_setting, modalities)
            for method in ADAPT_METHODS:
                model = copy.deepcopy(fused)  # adapters attach in place; each method starts from the same model
                adapted, _, counts = adapt(model, folder, method, train_missing=train_missing,
                                           config=TrainConfig(epochs=20, patience=5, seed=seed), progress=False)
                shares[method].append(counts["percent"])
                if train_setting == SETTINGS[0]:
                    data = SplitData.load(folder, {m: modality_shape(folder, m) for m in modalities}, fused.task, seed)
                    memory[method].append(training_memory(adapted, data, data.ids("train")[:32], train_missing, seed))
                for test_setting in SETTINGS:
                    metrics = evaluate_missing(adapted, folder, rates(test_setting, modalities), seed=seed)
                    key = f"{train_setting[0]}/{train_setting[1]} -> {test_setting[0]}/{test_setting[1]}"
                    cells.setdefault(key, {}).setdefault(method, []).append(metrics["c_index"])
    return {"modalities": list(modalities), "cells": cells,
            "trainable_percent": {m: statistics.fmean(v) for m, v in shares.items()},
            "training_memory_bytes": {m: statistics.fmean(v) for m, v in memory.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="repeated seeds (default 3)")
    parser.add_argument("--datasets", default="PBC,GSE7390", help="comma separated: PBC, GSE7390")
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
        table = Table(title=f"{name}: test c-index, mean over {args.seeds} seeds; A/B = % of samples with {m1} / {m2}")
        table.add_column("train A/B -> test A/B")
        for method in ADAPT_METHODS:
            table.add_column(NAMES[method], justify="right")
        for key, scores in result["cells"].items():
            table.add_row(key, *(f"{statistics.fmean(scores[m]):.3f}" for m in ADAPT_METHODS))
        table.add_row("trainable parameters", *(f"{result['trainable_percent'][m]:.2f}%" for m in ADAPT_METHODS))
        table.add_row("est. training memory", *(f"{result['training_memory_bytes'][m] / 1e6:.2f} MB" for m in ADAPT_METHODS))
        console.print(table)
    console.print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
