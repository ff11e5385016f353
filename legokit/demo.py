"""`legokit demo`: the main job on bundled real data (Mayo PBC, 1-year landmark). Over repeated random 70/15/15
splits it trains a labs block and a visits block, merges them (no training), fuses them (stack, 2 epochs), and
compares them with baselines: each block alone, a naive ensemble (mean of the blocks' risks), a late-fusion
concatenation model trained end to end, Cox models on the labs table and on every modality's summary features (the
labs table plus each visit feature's last value, mean and slope, and the visit count), and LegoMerge of blocks
trained on disjoint halves of the training patients (MM-Lego Appendix F), and LegoMerge weighted by each block's
validation c-index (`weights="auto"`). Metric: c-index on the test split."""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import cast

import torch
from rich.console import Console
from rich.progress import Progress

from legokit.artifacts.files import save
from legokit.compose.merge import merge
from legokit.contract import Labelling
from legokit.data.bundled import write_pbc
from legokit.data.folder import Table, modality_shape
from legokit.data.training import SplitData
from legokit.errors import ConfigError, positive_int
from legokit.io.atomic import write_atomic
from legokit.io.inputs import read_input
from legokit.progress import log
from legokit.spec import BlockSpec
from legokit.training.baselines import LateFusion, cox_fit, summary_cox_risks
from legokit.training.metrics import concordance_index, risk_from_logits
from legokit.training.trainer import FUSE_TRAINING, predict_logits, train_model
from legokit.training.workflows import fuse_blocks, train_block

MODELS = (
    "LegoBlock labs",
    "LegoBlock visits",
    "Ensemble (mean risk)",
    "Late fusion (concat, end to end)",
    "Cox PH (labs table)",
    "Cox PH (labs + visit summaries)",
    "LegoMerge",
    "LegoMerge (auto weights)",
    "LegoMerge (unpaired halves)",
    "LegoFuse (stack, 2 epochs)",
)


MARKER = ".legokit-demo"  # in every folder the demo made: the only folders it writes into again


def claim_folder(out: Path) -> None:
    """Make `out` the demo's folder, refusing one it did not make that holds anything (the demo replaces files by
    name, so a user's data/labels.csv would be lost): new and empty folders get the marker, marked ones are reused."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder; choose another -o/--output")
        if (out / MARKER).is_file():
            return
        if any(out.iterdir()):
            raise ConfigError(
                f"{out}: a folder that legokit demo did not make, and not empty; the demo writes "
                "only into a new or empty folder (or one it made): choose another -o/--output"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot make the folder ({exc.strerror or exc})") from exc
    write_atomic(out / MARKER, b"made by legokit demo: it may replace its own files here\n")


def default_spec(name: str) -> BlockSpec:
    """The shipped spec of a demo block (blocks/NAME.yaml, also inside the package)."""
    with resources.as_file(resources.files("legokit").joinpath("specs").joinpath(f"{name}.yaml")) as path:
        return BlockSpec.from_yaml(path)


@dataclass
class DemoResult:
    """c-index per model and seed, on all test patients and on those with visits."""

    seeds: list[int]
    all_test: dict[str, list[float]] = field(default_factory=dict)
    with_visits: dict[str, list[float]] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, model: str, everyone: float | None, visits: float) -> None:
        if everyone is not None:
            self.all_test.setdefault(model, []).append(everyone)
        self.with_visits.setdefault(model, []).append(visits)

    @staticmethod
    def summary(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    def to_json(self) -> dict:
        return {
            "dataset": "Mayo PBC, 1-year landmark (legokit.data.bundled)",
            "metric": "c-index on the test split",
            "seeds": self.seeds,
            "data": self.data,
            "seconds": self.seconds,
            "models": {
                m: {
                    "all_test": self.summary(self.all_test[m]) if m in self.all_test else None,
                    "test_with_visits": self.summary(self.with_visits[m]),
                    "per_seed_all_test": self.all_test.get(m),
                    "per_seed_with_visits": self.with_visits[m],
                }
                for m in MODELS
                if m in self.with_visits
            },
        }


def _cindex(risk: dict[str, float], data: SplitData, ids: list[str]) -> float:
    targets = data.labels.select(ids)
    return concordance_index(torch.tensor([risk[i] for i in ids]), targets["time"], targets["event"])


def _risks(model: torch.nn.Module, data: SplitData, ids: list[str]) -> dict[str, float]:
    return dict(zip(ids, risk_from_logits(predict_logits(model, data, ids)).tolist())) if ids else {}


def _cox_risks(data: SplitData, train: list[str], test: list[str]) -> dict[str, float]:
    table = cast(Table, data.folder.modalities["labs"]).rows  # the demo's labs are a table (labs.csv)
    x_train = torch.stack([table[i] for i in train])
    mean, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    targets = data.labels.select(train)
    beta = cox_fit((x_train - mean) / sd, targets["time"], targets["event"])
    x_test = torch.stack([table[i] for i in test]).double()
    return dict(zip(test, (((x_test - mean.double()) / sd.double()) @ beta).tolist()))


def run_seed(
    folder: Path,
    seed: int,
    out: Path,
    labs_spec: BlockSpec,
    visits_spec: BlockSpec,
    result: DemoResult,
    step: Callable[[str], None],
) -> None:
    shapes = {name: modality_shape(folder, name) for name in ("labs", "visits")}
    data = SplitData.load(folder, shapes, labs_spec.task, seed)  # a seeded random 70/15/15 split
    splits = data.splits
    test = data.ids("test")
    test_visits = [i for i in test if i in data.folder.ids_of("visits")]
    labs_spec, visits_spec = labs_spec.override(seed=seed), visits_spec.override(seed=seed)

    step("labs block")
    labs, _ = train_block(folder, labs_spec, splits, progress=False)
    step("visits block")
    visits, _ = train_block(folder, visits_spec, splits, progress=False)
    labs_risk, visits_risk = _risks(labs, data, test), _risks(visits, data, test_visits)
    result.add("LegoBlock labs", _cindex(labs_risk, data, test), _cindex(labs_risk, data, test_visits))
    result.add("LegoBlock visits", None, _cindex(visits_risk, data, test_visits))
    ensemble = {i: (labs_risk[i] + visits_risk[i]) / 2 if i in visits_risk else labs_risk[i] for i in test}
    result.add("Ensemble (mean risk)", _cindex(ensemble, data, test), _cindex(ensemble, data, test_visits))

    step("merge")
    merged = merge([labs, visits])
    merged_risk = _risks(merged, data, test)
    result.add("LegoMerge", _cindex(merged_risk, data, test), _cindex(merged_risk, data, test_visits))
    auto_risk = _risks(merge([labs, visits], weights="auto"), data, test)
    result.add("LegoMerge (auto weights)", _cindex(auto_risk, data, test), _cindex(auto_risk, data, test_visits))

    step("fuse")
    fused, _ = fuse_blocks(
        [labs, visits],
        folder,
        "stack",
        replace(FUSE_TRAINING, seed=seed, device=labs_spec.training.device),
        splits,
        progress=False,
    )
    fused_risk = _risks(fused, data, test)
    result.add("LegoFuse (stack, 2 epochs)", _cindex(fused_risk, data, test), _cindex(fused_risk, data, test_visits))

    step("late fusion")
    train = data.ids("train")
    normalization = {m: data.normalization(m, train) for m in ("labs", "visits")}
    late = LateFusion(
        {
            "labs": (labs_spec.encoder, dict(labs_spec.encoder_kwargs)),
            "visits": (visits_spec.encoder, dict(visits_spec.encoder_kwargs)),
        },
        {"labs": labs.config.input_shape, "visits": visits.config.input_shape},
        labs_spec.task,
        normalization,
    )
    train_model(late, data, labs_spec.task, labs_spec.training, progress=False)
    late_risk = _risks(late.cpu(), data, test)
    result.add(
        "Late fusion (concat, end to end)", _cindex(late_risk, data, test), _cindex(late_risk, data, test_visits)
    )

    step("Cox")
    cox = _cox_risks(data, data.ids("train", ["labs"]), test)
    result.add("Cox PH (labs table)", _cindex(cox, data, test), _cindex(cox, data, test_visits))
    summaries = summary_cox_risks(data, ["labs", "visits"], train, test)
    result.add("Cox PH (labs + visit summaries)", _cindex(summaries, data, test), _cindex(summaries, data, test_visits))

    step("unpaired halves")
    halves = sorted(train)
    random.Random(seed + 1000).shuffle(halves)
    first, second = halves[: len(halves) // 2], halves[len(halves) // 2 :]
    labs_a, _ = train_block(folder, labs_spec, splits, ids=first, progress=False)
    # the second site trains on the first site's bins (`legokit train --bins-from`): blocks merge only with one set
    shared = replace(visits_spec, labelling=Labelling.from_contract(labs_a.config.contract, None))
    visits_b, _ = train_block(folder, shared, splits, ids=second, progress=False)
    unpaired = _risks(merge([labs_a, visits_b]), data, test)
    result.add("LegoMerge (unpaired halves)", _cindex(unpaired, data, test), _cindex(unpaired, data, test_visits))

    seed_dir = out / f"seed-{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name, model in (("labs", labs), ("visits", visits), ("merged", merged), ("fused", fused)):
        save(model, seed_dir / f"{name}.st")


def write_splits(folder: Path, spec: BlockSpec) -> Path:
    """splits.csv of seed 0 in the demo's data folder, the split the top-level artifacts were selected on, so that
    `legokit eval legokit-demo/labs.st legokit-demo/data` scores their test split."""
    shapes = {name: modality_shape(folder, name) for name in ("labs", "visits")}
    splits = SplitData.load(folder, shapes, spec.task, 0).splits
    rows = "".join(f"{sample},{split}\n" for sample, split in splits.items())
    write_atomic(folder / "splits.csv", f"id,split\n{rows}".encode())
    return folder / "splits.csv"


def run_demo(
    out: str | Path = "legokit-demo",
    seeds: int = 5,
    progress: bool = True,
    console: Console | None = None,
    device: str | None = None,
) -> DemoResult:
    """Run the demo; artifacts go to `out/seed-K/`, the first seed's also to `out/` (for recipes/merge.yaml) with
    their split in `out/data/splits.csv`, the table to `out/results.json`. `out` must be new, empty, or a folder an
    earlier demo made (`claim_folder`). `device`: where to train (default: the specs', auto). Progress goes to
    standard error, never among the results: a bar on a terminal (`console`, default standard error), else a logged
    line per finished step (logs, CI); `--quiet` (the log level) turns both off."""
    positive_int("--seeds", seeds)
    started = time.perf_counter()
    out = Path(out)
    claim_folder(out)
    folder = out / "data"
    counts = write_pbc(folder)
    (folder / "splits.csv").unlink(missing_ok=True)  # a previous run's: every seed draws its own split
    labs_spec = default_spec("labs").override(device=device)
    visits_spec = default_spec("visits").override(device=device)
    result = DemoResult(list(range(seeds)), data=counts)
    steps = 7  # the step() calls of run_seed
    console = console or Console(stderr=True)
    progress = progress and log.isEnabledFor(logging.INFO)
    lines = progress and not console.is_terminal
    with Progress(transient=True, disable=not progress or lines, console=console) as bar:
        job = bar.add_task("demo", total=seeds * steps)
        for seed in range(seeds):
            running: list[tuple[str, float]] = []  # the step under way, and when it started

            def finish(seed: int = seed, running: list[tuple[str, float]] = running) -> None:
                if lines and running:
                    name, began = running.pop()
                    log.info("seed %d/%d: %s done in %.1f s", seed + 1, seeds, name, time.perf_counter() - began)

            def step(name: str, seed: int = seed, running: list[tuple[str, float]] = running) -> None:
                finish(seed, running)
                running.append((name, time.perf_counter()))
                bar.update(job, advance=1, description=f"seed {seed + 1}/{seeds}: {name}")

            run_seed(folder, seed, out, labs_spec, visits_spec, result, step)
            finish()
    for name in ("labs", "visits", "merged", "fused"):
        write_atomic(out / f"{name}.st", read_input(out / "seed-0" / f"{name}.st"))
    write_splits(folder, labs_spec)
    result.seconds = time.perf_counter() - started
    write_atomic(out / "results.json", json.dumps(result.to_json(), indent=2).encode())
    return result
