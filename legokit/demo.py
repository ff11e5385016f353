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
import os
import random
import re
import secrets
import stat
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
from legokit.cache import CACHE_ENV, cache_root
from legokit.compose.merge import merge
from legokit.contract import Labelling
from legokit.data.bundled import write_pbc
from legokit.data.folder import Table, modality_shape
from legokit.data.training import SplitData
from legokit.errors import ConfigError, LegoError, positive_int
from legokit.interface import LegoModel, model_contract
from legokit.io.atomic import write_atomic
from legokit.io.inputs import read_input
from legokit.io.outputs import refuse_links_below, refuse_links_on_the_way, refuse_system_path
from legokit.progress import log
from legokit.spec import BlockSpec
from legokit.training.baselines import LateFusion, cox_fit, summary_cox
from legokit.training.calibrating import calibrate_on
from legokit.training.metrics import concordance_index, risk_from_logits
from legokit.training.survival_scores import split_report, survival_scores
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
REGISTRY = "demo-folders"  # in the user's legokit cache folder: one file per folder the demo made, named by its token
_TOKEN = re.compile(r"[0-9a-f]{32}")
_AGAIN = "the demo reuses only a folder it made itself: remove the folder or choose another -o/--output"


def claim_folder(out: str | os.PathLike[str]) -> None:
    """Make `out` the demo's folder before anything is written: a new or empty folder gets a marker (`_mark`); a
    marked one is reused only when its marker is its own (`_check_marker`) and nothing below it is a link."""
    # the demo replaces files by name: a user's folder, or one reached through a link, would lose its files
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another -o/--output")
    refuse_system_path(out)
    if out.is_dir():
        try:
            marked, listed = os.path.lexists(out / MARKER), any(out.iterdir())
        except OSError as exc:
            raise ConfigError(f"{out}: cannot list it ({exc.strerror or exc}); choose another -o/--output") from exc
        if marked:
            _check_marker(out)
            refuse_links_below(out)
            return
        if listed:
            raise ConfigError(
                f"{out}: a folder that legokit demo did not make, and not empty; the demo writes "
                "only into a new or empty folder (or one it made): choose another -o/--output"
            )
    record = _record_folder()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot make the folder ({exc.strerror or exc})") from exc
    refuse_links_below(out)
    _mark(out, record)


def _identity(out: Path) -> tuple[int, int]:
    """The folder's device and inode: a copy (cp -a) or another folder has others."""
    info = os.stat(out)
    return info.st_dev, info.st_ino


def _record_folder() -> Path:
    """The user's own record of the demo's folders (in the legokit cache folder), made private if new; a ConfigError
    when it cannot be kept, before anything is written."""
    record = cache_root() / REGISTRY
    try:
        record.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{record}: cannot keep the demo's record there ({exc.strerror or exc}); set {CACHE_ENV}"
        ) from exc
    trouble = _private_trouble(record)
    if trouble:
        raise ConfigError(f"{trouble}; the demo keeps the tokens of its folders there (set {CACHE_ENV} to move it)")
    return record


def _mark(out: Path, record: Path) -> None:
    """Write the marker of a folder the demo now owns (its device, inode and a random token), after keeping the token
    in the user's own record, which a copy of the folder cannot carry."""
    (dev, ino), token = _identity(out), secrets.token_hex(16)
    write_atomic(record / token, f"{dev} {ino}\n".encode())
    marker = {"made_by": "legokit demo", "dev": dev, "ino": ino, "token": token}
    write_atomic(out / MARKER, (json.dumps(marker) + "\n").encode())


def _check_marker(out: Path) -> None:
    """Refuse a marked folder unless its marker is the demo's own for this very folder: a regular file naming the
    folder's device and inode (a copy has others) and a token this user's record keeps for that folder."""
    marker = out / MARKER
    try:
        mode, info = os.lstat(marker).st_mode, os.stat(out)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot check its {MARKER} ({exc.strerror or exc}); {_AGAIN}") from exc
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{out}: its {MARKER} is not a regular file; {_AGAIN}")
    try:
        record = json.loads(read_input(marker, ConfigError, limit=4096))
        dev, ino, token = record["dev"], record["ino"], record["token"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{out}: its {MARKER} is not one this legokit wrote; {_AGAIN}") from exc
    if not isinstance(token, str) or not _TOKEN.fullmatch(token) or [dev, ino] != [info.st_dev, info.st_ino]:
        raise ConfigError(f"{out}: its {MARKER} was made for another folder (a copy?); {_AGAIN}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigError(f"{out}: belongs to another user; {_AGAIN}")
    kept = cache_root() / REGISTRY / token
    try:
        if _private_trouble(kept.parent) or not stat.S_ISREG(os.lstat(kept).st_mode):
            raise OSError("not a regular file of a private folder")
        known = read_input(kept, ConfigError, limit=64).decode("ascii").split()
    except (OSError, LegoError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{out}: its {MARKER} is not in this user's record ({kept.parent}); {_AGAIN}") from exc
    if known != [str(dev), str(ino)]:
        raise ConfigError(f"{out}: its {MARKER} does not match this user's record ({kept}); {_AGAIN}")


def _private_trouble(folder: Path) -> str | None:
    """Why the user's record folder cannot be trusted (None: it can, or it is not made yet): a link, not a folder,
    another user's, or writable by others (who could then record folders of theirs)."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a folder"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{folder} belongs to another user"
    return f"{folder} is writable by other users" if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None


def _safe(out: Path, path: Path) -> Path:
    """`path`, below the demo's folder `out`, once no part of it is a link or a special file (checked just before
    it is written or read)."""
    refuse_links_on_the_way(out, path)
    return path


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
    brier: dict[str, list[float]] = field(default_factory=dict)  # integrated Brier score, all test patients
    calibration: dict[str, list[float]] = field(default_factory=dict)  # worst |mean S - KM| at the bin edges

    def add(self, model: str, everyone: float | None, visits: float) -> None:
        if everyone is not None:
            self.all_test.setdefault(model, []).append(everyone)
        self.with_visits.setdefault(model, []).append(visits)

    def add_survival(self, model: str, report: dict[str, float]) -> None:
        """A model's integrated Brier score and worst calibration error on the test split (`split_report`)."""
        self.brier.setdefault(model, []).append(report["integrated_brier"])
        worst = max(v for k, v in report.items() if k.startswith("calibration@"))
        self.calibration.setdefault(model, []).append(worst)

    @staticmethod
    def summary(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    def to_json(self) -> dict:
        return {
            "dataset": "Mayo PBC, 1-year landmark (legokit.data.bundled)",
            "metric": "c-index on the test split; integrated Brier score and the worst calibration error at the "
            "bin edges (|mean predicted S(t) - Kaplan-Meier S(t)|) on all test patients",
            "seeds": self.seeds,
            "data": self.data,
            "seconds": self.seconds,
            "models": {
                m: {
                    "all_test": self.summary(self.all_test[m]) if m in self.all_test else None,
                    "test_with_visits": self.summary(self.with_visits[m]),
                    "per_seed_all_test": self.all_test.get(m),
                    "per_seed_with_visits": self.with_visits[m],
                    "integrated_brier": self.summary(self.brier[m]) if m in self.brier else None,
                    "calibration_error": self.summary(self.calibration[m]) if m in self.calibration else None,
                    "per_seed_integrated_brier": self.brier.get(m),
                    "per_seed_calibration_error": self.calibration.get(m),
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


def _survival_report(model: torch.nn.Module, data: SplitData, ids: list[str]) -> dict[str, float]:
    """A legokit model's survival metrics on these samples at its bin edges (`survival_scores`)."""
    logits = predict_logits(model, data, ids)
    return survival_scores(cast(LegoModel, model), data, ids, logits)[0]


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
    result.add_survival("LegoBlock labs", _survival_report(labs, data, test))
    result.add("LegoBlock visits", None, _cindex(visits_risk, data, test_visits))
    ensemble = {i: (labs_risk[i] + visits_risk[i]) / 2 if i in visits_risk else labs_risk[i] for i in test}
    result.add("Ensemble (mean risk)", _cindex(ensemble, data, test), _cindex(ensemble, data, test_visits))

    step("merge")
    merged = merge([labs, visits])
    calibrate_on(merged, data, ["labs", "visits"], seed)  # on the validation split, as merge --calibrate-on does
    merged_risk = _risks(merged, data, test)
    result.add("LegoMerge", _cindex(merged_risk, data, test), _cindex(merged_risk, data, test_visits))
    result.add_survival("LegoMerge", _survival_report(merged, data, test))
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
    result.add_survival("LegoFuse (stack, 2 epochs)", _survival_report(fused, data, test))

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
    fitted = summary_cox(data, ["labs", "visits"], train)
    linear = fitted.linear(data, test)
    summaries = dict(zip(test, linear.tolist()))
    result.add("Cox PH (labs + visit summaries)", _cindex(summaries, data, test), _cindex(summaries, data, test_visits))
    edges = list(model_contract(labs).edges or ())
    report = split_report(lambda at: fitted.survival(data, test, at), linear, data, test, edges, ["labs", "visits"])
    result.add_survival("Cox PH (labs + visit summaries)", report)

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

    seed_dir = _safe(out, out / f"seed-{seed}")
    seed_dir.mkdir(exist_ok=True)
    for name, model in (("labs", labs), ("visits", visits), ("merged", merged), ("fused", fused)):
        save(model, _safe(out, seed_dir / f"{name}.st"))


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
    claim_folder(out)  # also refuses a link or a special file anywhere below it, before anything is written
    folder = out / "data"
    counts = write_pbc(folder)
    _safe(out, folder / "splits.csv").unlink(missing_ok=True)  # a previous run's: every seed draws its own split
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
        write_atomic(_safe(out, out / f"{name}.st"), read_input(_safe(out, out / "seed-0" / f"{name}.st")))
    _safe(out, folder / "splits.csv")
    write_splits(folder, labs_spec)
    result.seconds = time.perf_counter() - started
    write_atomic(_safe(out, out / "results.json"), json.dumps(result.to_json(), indent=2).encode())
    return result
