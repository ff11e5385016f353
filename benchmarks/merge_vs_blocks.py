"""Does LegoMerge add information? Each block, Cox models, an ensemble, late fusion, LegoMerge under three
settings and LegoFuse, on three real survival datasets that install from the package registries, over seeded random
70/15/15 splits. Prints c-index mean ± s.d. and writes JSON.

    python -m benchmarks.merge_vs_blocks [--datasets pbc gse7390 actg175] [--seeds 5] [--json merge_vs_blocks.json]
    python -m benchmarks.merge_vs_blocks --study heads|training [--seeds 5]   # candidates, VALIDATION c-index only

The study is how the defaults were chosen: it never reads a test split. The main run reads the test splits once,
with the defaults fixed beforehand. Datasets: Mayo PBC (bundled; labs table + visit sequence, visits missing for
non-trial patients), GSE7390 (scikit-survival; clinical table + 76 genes), ACTG 175 (lifelines; clinical table +
CD4/CD8 counts, 25-week landmark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from einops import rearrange, reduce
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from legokit.baselines import LateFusion, cox_fit
from legokit.block import DEFAULT_HEAD_FEATURES, DEFAULT_SHARED_INIT, DEFAULT_UPDATE, LegoBlock
from legokit.compose.merge import merge
from legokit.data.actg175 import write_actg175
from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.gse7390 import write_gse7390
from legokit.data.training import SplitData
from legokit.metrics import concordance_index, risk_from_logits
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.train import TrainConfig, predict_logits, train_model
from legokit.workflows import fuse_blocks, train_block

TASK = TaskSpec("survival", 4)


@dataclass(frozen=True)
class Dataset:
    """A cohort: how to write its dataset folder, and its modalities (tables or sequences)."""

    title: str
    write: Callable[[Path], object]
    modalities: Mapping[str, str]  # modality -> "table" or "sequence"


DATASETS = {
    "pbc": Dataset("Mayo PBC, 1-year landmark", write_pbc, {"labs": "table", "visits": "sequence"}),
    "gse7390": Dataset("GSE7390 breast cancer", write_gse7390, {"clinical": "table", "genes": "table"}),
    "actg175": Dataset("ACTG 175 HIV trial, 25-week landmark", write_actg175, {"clinical": "table", "immune": "table"}),
}


@dataclass(frozen=True)
class Settings:
    """How every block of a run is built and trained."""

    table: tuple[str, dict]
    sequence: tuple[str, dict]
    update: str
    head_features: str
    shared_init: bool = True
    training: TrainConfig = TrainConfig()

    def spec(self, modality: str, kind: str, seed: int) -> BlockSpec:
        encoder, kwargs = self.table if kind == "table" else self.sequence
        return BlockSpec(modality, encoder, kwargs, latent=(32, 32), depth=2, task=TASK, dim_head=32,
                         update=self.update, head_features=self.head_features, shared_init=self.shared_init,
                         training=replace(self.training, seed=seed))


SNN = ("snn", {"hidden": 64, "depth": 2, "dropout": 0.1})
ABMIL = ("abmil", {"hidden": 64, "attention": 32, "dropout": 0.1})
TOKENS = ("tokens", {"dim": 64})
MLP_TOKENS = ("mlp", {"hidden": 64, "depth": 1, "dropout": 0.1})
# v0.1: the paper's Re-only update, a head on Re and Im channel means, each block its own initialisation
V01_TRAINING = TrainConfig(epochs=40, batch_size=32, lr=1e-3, weight_decay=1e-2, patience=8)
PAPER = Settings(SNN, ABMIL, "real", "re-im", shared_init=False, training=V01_TRAINING)
# the first study (block math), with v0.1 training settings
HEADS = {
    "v0.1: snn, Re update, Re+Im head": PAPER,
    **{name: Settings(table, sequence, update, head, shared_init=shared, training=V01_TRAINING)
       for name, (table, sequence, update, head, shared) in {
           "snn, Re head": (SNN, ABMIL, "real", "real", False),
           "snn, |F|+phase head": (SNN, ABMIL, "real", "polar", False),
           "snn, complex update": (SNN, ABMIL, "complex", "re-im", False),
           "snn, shared init": (SNN, ABMIL, "real", "re-im", True),
           "snn, shared init, Re head": (SNN, ABMIL, "real", "real", True),
           "snn, shared init, complex update": (SNN, ABMIL, "complex", "re-im", True),
           "tokens, shared init": (TOKENS, MLP_TOKENS, "real", "re-im", True),
           "tokens, shared init, Re head": (TOKENS, MLP_TOKENS, "real", "real", True),
           "tokens, shared init, complex update": (TOKENS, MLP_TOKENS, "complex", "re-im", True),
       }.items()},
}
# the second study (training settings), with the block math the first one chose
CHOSEN = Settings(SNN, ABMIL, "real", "real", training=V01_TRAINING)
TRAINING = {
    "v0.1 training: lr 1e-3, wd 0.01, patience 8, 40 epochs": CHOSEN,
    **{f"lr {lr}, wd {wd}, patience 15, 60 epochs": replace(CHOSEN, training=TrainConfig(
        epochs=60, lr=float(lr), weight_decay=float(wd), patience=15)) for lr, wd in (("1e-3", "0.1"), ("3e-4", "0.1"),
                                                                                      ("3e-4", "0.01"))},
}
STUDIES = {"heads": HEADS, "training": TRAINING}


def new_defaults() -> Settings:
    """The library's defaults: `legokit.block`'s update, head and initialisation, `TrainConfig`'s training."""
    return Settings(SNN, ABMIL, DEFAULT_UPDATE, DEFAULT_HEAD_FEATURES, DEFAULT_SHARED_INIT, TrainConfig())


def _risks(model: torch.nn.Module, data: SplitData, ids: list[str]) -> dict[str, float]:
    return dict(zip(ids, risk_from_logits(predict_logits(model, data, ids)).tolist())) if ids else {}


def _cindex(risk: Mapping[str, float], data: SplitData, ids: Sequence[str]) -> float:
    ids = [i for i in ids if i in risk]
    targets = data.labels.select(ids)
    return concordance_index(torch.tensor([risk[i] for i in ids]), targets["time"], targets["event"])


def _summary(data: SplitData, modality: str, ids: Sequence[str]) -> torch.Tensor:
    """A modality as a fixed row per sample for Cox: the table row, or a sequence's mean and last token."""
    batch = data.folder.batch(list(ids))[modality]
    if batch.x.dim() == 2:
        return batch.x
    mask = batch.mask if batch.mask is not None else torch.ones(batch.x.shape[:2], dtype=torch.bool)
    count = reduce(mask.float(), "b n -> b 1", "sum").clamp_min(1)
    mean = reduce(batch.x * rearrange(mask, "b n -> b n 1"), "b n f -> b f", "sum") / count
    last = batch.x[torch.arange(len(ids)), rearrange(count, "b 1 -> b").long() - 1]  # tokens are padded at the end
    return torch.cat([mean, last], dim=1)


def _features(data: SplitData, modalities: Sequence[str], ids: Sequence[str], train: Sequence[str]) -> torch.Tensor:
    """Columns of these modalities for Cox; a missing modality is its training mean plus a missing flag."""
    parts = []
    for m in modalities:
        having = [i for i in ids if i in data.folder.ids_of(m)]
        train_having = [i for i in train if i in data.folder.ids_of(m)]
        fill = _summary(data, m, train_having).mean(0)
        rows = dict(zip(having, _summary(data, m, having))) if having else {}
        parts.append(torch.stack([rows.get(i, fill) for i in ids]))
        if len(train_having) < len(train):
            parts.append(torch.tensor([[0.0 if i in rows else 1.0] for i in ids]))
    return torch.cat(parts, dim=1)


def _cox(data: SplitData, modalities: Sequence[str], train: list[str], test: list[str]) -> dict[str, float]:
    train = [i for i in train if any(i in data.folder.ids_of(m) for m in modalities)]
    test = [i for i in test if all(i in data.folder.ids_of(m) for m in modalities) or len(modalities) > 1]
    x = _features(data, modalities, train, train)
    mean, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    targets = data.labels.select(train)
    beta = cox_fit((x - mean) / sd, targets["time"], targets["event"])
    x_test = (_features(data, modalities, test, train).double() - mean.double()) / sd.double()
    return dict(zip(test, (x_test @ beta).tolist()))


def _blocks(folder: Path, dataset: Dataset, settings: Settings, seed: int, splits: dict[str, str]) -> dict[str, LegoBlock]:
    return {m: train_block(folder, settings.spec(m, kind, seed), splits, progress=False)[0]
            for m, kind in dataset.modalities.items()}


def _ensemble(risks: Sequence[Mapping[str, float]], ids: Sequence[str]) -> dict[str, float]:
    return {i: statistics.fmean([r[i] for r in risks if i in r]) for i in ids if any(i in r for r in risks)}


def run_seed(folder: Path, dataset: Dataset, seed: int, scores: dict[str, list[float]], step: Callable[[], None]) -> None:
    """Every column of the table for one seed, on the test split."""
    shapes = {m: modality_shape(folder, m) for m in dataset.modalities}
    data = SplitData.load(folder, shapes, TASK, seed)
    train, test = data.ids("train"), data.ids("test")
    settings = new_defaults()

    def add(column: str, risk: Mapping[str, float]) -> None:
        scores.setdefault(column, []).append(_cindex(risk, data, test))

    blocks = _blocks(folder, dataset, settings, seed, data.splits)
    step()
    risks = {m: _risks(b, data, data.ids("test", [m])) for m, b in blocks.items()}
    for m in dataset.modalities:
        add(f"block {m}", risks[m])
    for m in dataset.modalities:
        add(f"Cox {m}", _cox(data, [m], train, test))
    add("Cox all features", _cox(data, list(dataset.modalities), train, test))
    add("ensemble (mean risk)", _ensemble(list(risks.values()), test))
    step()
    late = LateFusion({m: settings.table if k == "table" else settings.sequence for m, k in dataset.modalities.items()},
                      shapes, TASK, {m: data.normalization(m, data.ids("train", [m])) for m in dataset.modalities})
    torch.manual_seed(seed)
    train_model(late, data, TASK, replace(settings.training, seed=seed), progress=False)
    add("late fusion", _risks(late.cpu(), data, test))
    step()
    paper_blocks = _blocks(folder, dataset, PAPER, seed, data.splits)
    for m, paper_block in paper_blocks.items():
        add(f"block {m} (v0.1 settings)", _risks(paper_block, data, data.ids("test", [m])))
    add("merge (v0.1 settings)", _risks(merge(list(paper_blocks.values())), data, test))
    add("merge (new defaults)", _risks(merge(list(blocks.values())), data, test))
    add("merge (auto weights)", _risks(merge(list(blocks.values()), weights="auto"), data, test))
    step()
    for mode in ("stack", "weave"):
        fused, _ = fuse_blocks(list(blocks.values()), folder, mode, TrainConfig(epochs=2, seed=seed), data.splits,
                               progress=False)
        add(f"fuse {mode}", _risks(fused, data, test))
    step()


STEPS = 5


def study_seed(candidates: Mapping[str, Settings], folder: Path, dataset: Dataset, seed: int,
               scores: dict[str, dict[str, list[float]]], step: Callable[[], None]) -> None:
    """Validation c-index of each candidate's blocks and merges (the test split is not read)."""
    shapes = {m: modality_shape(folder, m) for m in dataset.modalities}
    data = SplitData.load(folder, shapes, TASK, seed)
    val = data.ids("val")
    for name, settings in candidates.items():
        blocks = _blocks(folder, dataset, settings, seed, data.splits)
        row = scores.setdefault(name, {})
        best = max(_cindex(_risks(b, data, data.ids("val", [m])), data, val) for m, b in blocks.items()
                   if dataset.modalities[m] == "table")
        row.setdefault("best table block", []).append(best)
        for label, weights in (("merge", None), ("merge auto", "auto")):
            value = _cindex(_risks(merge(list(blocks.values()), weights=weights), data, val), data, val)
            row.setdefault(label, []).append(value)
            row.setdefault(f"{label} - best block", []).append(value - best)
        step()


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--study", choices=sorted(STUDIES), help="compare candidate settings on validation splits")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    console = Console(width=200)
    results: dict[str, dict] = {}
    per_seed = len(STUDIES[args.study]) if args.study else STEPS
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True, console=console) as bar:
        job = bar.add_task("merge vs blocks", total=len(args.datasets) * args.seeds * per_seed)
        for name in args.datasets:
            dataset = DATASETS[name]
            folder = Path(tmp) / name
            dataset.write(folder)
            scores: dict = {}
            for seed in range(args.seeds):
                bar.update(job, description=f"{name} seed {seed + 1}/{args.seeds}")
                if args.study:
                    study_seed(STUDIES[args.study], folder, dataset, seed, scores, lambda: bar.advance(job))
                else:
                    run_seed(folder, dataset, seed, scores, lambda: bar.advance(job))
            results[name] = scores
    if args.study:
        for name, scores in results.items():
            table = Table(title=f"{DATASETS[name].title}: validation c-index, mean ± s.d. over {args.seeds} seeds")
            columns = list(next(iter(scores.values())))
            table.add_column("settings")
            for column in columns:
                table.add_column(column, justify="right")
            for settings, row in scores.items():
                table.add_row(settings, *(_cell(row[c]) for c in columns))
            console.print(table)
    else:
        for name, scores in results.items():
            table = Table(title=f"{DATASETS[name].title}: test c-index, mean ± s.d. over {args.seeds} seeds")
            table.add_column("model")
            table.add_column("c-index", justify="right")
            for column, values in scores.items():
                table.add_row(column, _cell(values))
            console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"study": args.study, "seeds": args.seeds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
