"""Are legokit's survival probabilities right? Each model's mean predicted S(t) against Kaplan-Meier at every bin
edge, before and after recalibration on the validation split, over all patients and on the test split; the
integrated Brier score and c-index beside Cox with summary features (Breslow's baseline), over seeded random
70/15/15 splits of real cohorts.

    python -m benchmarks.calibration [--datasets pbc nafld] [--seeds 5] [--json out.json]
    python -m benchmarks.calibration --datasets pbc --validation-noise   # the validation splits' own error

Models: each block (the library's default specs, as `benchmarks.merge_vs_blocks` builds them), LegoMerge
(calibrated on the validation split, as `merge --calibrate-on` does), LegoFuse (stack; calibrated by default) and
Cox with summary features of every modality. "Before" reads the same models without their calibration. The
calibration error at an edge t is |mean predicted S(t) - Kaplan-Meier S(t)| over the samples; the test error is
averaged over seeds (PBC's test split holds 58 patients). The risk column, and so the c-index, never changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.merge_vs_blocks import DATASETS, TASK, Dataset, _blocks, new_defaults
from legokit.compose.merge import merge
from legokit.data.folder import modality_shape
from legokit.data.training import SplitData
from legokit.interface import model_calibration, model_contract
from legokit.survival.estimators import censoring_km, kaplan_meier
from legokit.survival.metrics import integrated_brier, integration_grid
from legokit.survival.outputs import SurvivalOutputs
from legokit.training.baselines import summary_cox
from legokit.training.calibrating import calibrate_on
from legokit.training.metrics import concordance_index, risk_from_logits
from legokit.training.trainer import predict_logits
from legokit.training.workflows import fuse_blocks

COX = "Cox summaries, all modalities"


def _errors(survival: torch.Tensor, time: torch.Tensor, event: torch.Tensor, edges: Sequence[float]) -> list[float]:
    observed = kaplan_meier(time, event)(torch.tensor(list(edges), dtype=torch.float64))
    return (survival.double().mean(0) - observed).tolist()  # signed: predicted minus observed


def _figures(
    at: Callable[[Sequence[float], Sequence[str]], torch.Tensor],
    risk: Callable[[Sequence[str]], torch.Tensor],
    data: SplitData,
    ids: Sequence[str],
    test: Sequence[str],
    edges: Sequence[float],
    modalities: Sequence[str],
) -> dict[str, object]:
    """Calibration errors at the edges over `ids` (all patients) and on `test`, the test c-index and the test
    integrated Brier score of a model whose S at times for samples is `at(times, samples)`."""
    everyone, tested = data.targets(list(ids)), data.targets(list(test))
    trained = data.targets(data.ids("train", list(modalities)))
    grid = integration_grid(torch.tensor(list(edges), dtype=torch.float64))
    censoring = censoring_km(trained["time"], trained["event"])
    return {
        "all": _errors(at(edges, ids), everyone["time"], everyone["event"], edges),
        "test": _errors(at(edges, test), tested["time"], tested["event"], edges),
        "c_index": concordance_index(risk(test), tested["time"], tested["event"]),
        "integrated_brier": integrated_brier(at(grid.tolist(), test), tested["time"], tested["event"], censoring, grid),
    }


def _model_figures(
    model: torch.nn.Module, data: SplitData, test: Sequence[str], modalities: Sequence[str]
) -> dict[str, dict[str, object]]:
    """Before and after: the model read without and with its calibration."""
    lego = model  # every legokit model here is a LegoModel
    everyone = [i for s in ("train", "val", "test") for i in data.ids(s, list(modalities))]
    logits = dict(zip(everyone, predict_logits(model, data, everyone)))
    stacked = lambda ids: torch.stack([logits[i] for i in ids])  # noqa: E731
    edges = model_contract(lego).edges or ()  # type: ignore[arg-type]
    calibration = model_calibration(lego)  # type: ignore[arg-type]
    out = {}
    for label, reading in (
        ("before", SurvivalOutputs(tuple(edges), None)),
        ("after", SurvivalOutputs(tuple(edges), calibration)),
    ):
        out[label] = _figures(
            lambda times, ids, reading=reading: reading.at(stacked(ids), times),
            lambda ids: risk_from_logits(stacked(ids)),
            data, everyone, test, edges, modalities,
        )  # fmt: skip
    out["after"]["method"] = calibration.method if calibration is not None else "uncalibrated"
    return out


def run_seed(folder: Path, dataset: Dataset, seed: int) -> dict[str, dict[str, dict[str, object]]]:
    modalities = list(dataset.modalities)
    data = SplitData.load(folder, {m: modality_shape(folder, m) for m in modalities}, TASK, seed)
    settings = new_defaults()
    blocks = _blocks(folder, dataset, settings, seed, data.splits)
    found = {}
    for m, block in blocks.items():
        found[f"block {m}"] = _model_figures(block, data, data.ids("test", [m]), [m])
    merged = merge(list(blocks.values()))
    calibrate_on(merged, data, modalities, seed)
    test = data.ids("test", modalities)
    found["merge"] = _model_figures(merged, data, test, modalities)
    fused, _ = fuse_blocks(
        list(blocks.values()), folder, "stack", replace(settings.fusing, seed=seed), data.splits, progress=False
    )
    found["fuse stack"] = _model_figures(fused, data, test, modalities)
    cox = summary_cox(data, modalities, data.ids("train"))
    edges = model_contract(next(iter(blocks.values()))).edges or ()
    everyone = [i for s in ("train", "val", "test") for i in data.ids(s, modalities)]
    found[COX] = {
        "after": _figures(
            lambda times, ids: cox.survival(data, ids, times),
            lambda ids: cox.linear(data, ids),
            data,
            everyone,
            test,
            edges,
            modalities,
        )  # fmt: skip
    }
    return found


def _mean(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f}"


def report(name: str, runs: Sequence[dict], console: Console) -> dict:
    """The dataset's table: per model, the worst edge's error over all patients (mean and max over seeds), the
    test error per edge averaged over seeds (absolute, and signed: predicted minus Kaplan-Meier), before -> after;
    integrated Brier and c-index on test."""
    table = Table(title=f"{name}: calibration error |mean S(t) - KM S(t)| at the bin edges, {len(runs)} seeds")
    columns = (
        "model",
        "all patients, worst edge: mean (max) over seeds",
        "test, per edge: mean |error| (mean signed error) over seeds",
        "integrated Brier (test)",
        "c-index (test)",
        "method",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    summary = {}
    for model in runs[0]:
        cells, record = [], {}
        for label in ("before", "after"):
            if label not in runs[0][model]:
                continue
            worst = [max(abs(v) for v in r[model][label]["all"]) for r in runs]
            edges = range(len(runs[0][model][label]["test"]))
            absolute = [statistics.fmean(abs(r[model][label]["test"][k]) for r in runs) for k in edges]
            signed = [statistics.fmean(r[model][label]["test"][k] for r in runs) for k in edges]
            record[label] = {
                "all_patients_worst_edge_per_seed": worst,
                "all_patients_signed_per_seed": [r[model][label]["all"] for r in runs],
                "test_per_edge_mean_absolute": absolute,
                "test_per_edge_mean_signed": signed,
                "integrated_brier_per_seed": [r[model][label]["integrated_brier"] for r in runs],
                "c_index_per_seed": [r[model][label]["c_index"] for r in runs],
            }
            cells.append(
                (
                    f"{_mean(worst)} ({max(worst):.3f})",
                    " / ".join(f"{a:.3f} ({s:+.3f})" for a, s in zip(absolute, signed)),
                )
            )
        shown = lambda k: " -> ".join(c[k] for c in cells)  # noqa: E731
        table.add_row(
            model, shown(0), shown(1),
            _mean([r[model]["after"]["integrated_brier"] for r in runs]),
            _mean([r[model]["after"]["c_index"] for r in runs]),
            ", ".join(sorted({str(r[model]["after"].get("method", "Breslow")) for r in runs})),
        )  # fmt: skip
        summary[model] = record
    console.print(table)
    return summary


def greenwood(time: torch.Tensor, event: torch.Tensor, at: float) -> float:
    """The standard error of the Kaplan-Meier estimate S(at) by Greenwood's formula."""
    time, event = time.double(), event.bool()
    survival, variance = 1.0, 0.0
    for moment in sorted(set(time[event & (time <= at)].tolist())):
        deaths, at_risk = int(((time == moment) & event).sum()), int((time >= moment).sum())
        survival *= 1 - deaths / at_risk
        variance += deaths / (at_risk * (at_risk - deaths)) if at_risk > deaths else 0.0
    return survival * variance**0.5


def validation_noise(folder: Path, dataset: Dataset, seeds: int, console: Console) -> None:
    """Per seed: the validation split's size and events, and Greenwood's standard error of its Kaplan-Meier S(t) at
    the bin edges: the error any calibration fitted on that split carries. No model is trained."""
    modalities = list(dataset.modalities)
    for seed in range(seeds):
        data = SplitData.load(folder, {m: modality_shape(folder, m) for m in modalities}, TASK, seed)
        val = data.targets(data.ids("val", modalities))
        errors = [greenwood(val["time"], val["event"], edge) for edge in data.survival_edges()[1:-1].tolist()]
        console.print(
            f"{dataset.title}, seed {seed}: validation {len(val['time'])} samples, {int(val['event'].sum())} events; "
            "Kaplan-Meier standard error at the edges " + " / ".join(f"{e:.3f}" for e in errors)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["pbc", "nafld"], choices=("pbc", "nafld"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument(
        "--validation-noise", action="store_true", help="only print each validation split's Kaplan-Meier error"
    )
    args = parser.parse_args(argv)
    console = Console()
    results = {}
    with tempfile.TemporaryDirectory(prefix="legokit-calibration-") as root:
        for name in args.datasets:
            dataset = DATASETS[name]
            folder = Path(root) / name
            dataset.write(folder)
            if args.validation_noise:
                validation_noise(folder, dataset, args.seeds, console)
                continue
            runs = []
            for seed in range(args.seeds):
                runs.append(run_seed(folder, dataset, seed))
                print(f"{name} seed {seed} done", file=sys.stderr, flush=True)
            results[name] = {
                "title": dataset.title,
                "seeds": args.seeds,
                "models": report(dataset.title, runs, console),
            }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
