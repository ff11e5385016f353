"""`legokit inspect` and model cards: an artifact's facts, through its kind in the registry; builds no model."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from legokit.artifacts.format import read_artifact, read_artifact_summary
from legokit.artifacts.registry import kind_named
from legokit.errors import ArtifactError, ConfigError
from legokit.hub.refs import local_artifact
from legokit.survival.calibration import Calibration
from legokit.tasks import TaskSpec
from legokit.training.leakage import summarized


def describe(path: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Every fact `inspect` shows about an artifact, as JSON-ready values. The file is fully verified first unless
    `verify` is False (a file this process just wrote): then only its header is read, in bounded memory."""
    artifact = read_artifact(local_artifact(path)) if verify else read_artifact_summary(path)
    kind = kind_named(artifact.kind, path)
    try:
        return kind.describe(artifact)
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {exc})") from exc


def summary_rows(facts: Mapping[str, Any], verbose: bool = False) -> list[tuple[str, str]]:
    """The facts as (field, text) rows, in the order `inspect` prints them: the provenance summarised (one line per
    training run), or every recorded fact with `verbose` (`inspect -v`)."""
    kind = kind_named(facts["kind"], facts["path"])
    rows = [("format", f"legokit artifact v{facts['format_version']} ({facts['kind']})"), *kind.rows(facts)]
    rows += calibration_rows(facts)
    return (rows if verbose else _shared_rows(rows, list(facts.get("blocks") or ()))) + provenance_rows(
        {k: v for k, v in facts["provenance"].items() if k != "calibration"}, verbose
    )


def calibration_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A survival model's calibration in one row: what it is and what it was fitted on, or that it has none."""
    if not str(facts.get("task", "")).startswith("survival"):
        return []
    record = facts["provenance"].get("calibration")
    if record is None:
        return [("calibration", "none: not calibrated (merge --calibrate-on DATA)")]
    task = TaskSpec.parse(str(facts["task"]))
    try:
        return [("calibration", Calibration.for_task(record, task.kind, task.n).summary())]
    except ConfigError as exc:
        raise ConfigError(f"{facts['path']}: its calibration record is malformed ({exc})") from exc


def _shared_rows(rows: list[tuple[str, str]], modalities: list[str]) -> list[tuple[str, str]]:
    """A composite's per-block `bins M` (or `classes M`) rows as one `bins` row when every block has the same: joins
    require it, so the summary says it once."""
    for field in ("bins", "classes"):
        named = {f"{field} {m}" for m in modalities}
        values = {value for name, value in rows if name in named}
        if len(modalities) > 1 and len(values) == 1 and len([n for n, _ in rows if n in named]) == len(modalities):
            first = next(i for i, (name, _) in enumerate(rows) if name in named)
            rows = [row for i, row in enumerate(rows) if i == first or row[0] not in named]
            rows[first] = (field, f"{rows[first][1]}, every block")
    return rows


def _number(value: Any) -> str:
    """A metric for people: NaN or null (a one-class split's AUC) reads as undefined."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "undefined"


def _metrics(val: Mapping[str, Any], test: Mapping[str, Any]) -> str:
    """`val/test c_index 0.822/0.791`: each validation metric beside the test one of the same name."""
    names = [k for k in val if k in test] or list(val) or list(test)
    shown = ", ".join(
        f"{k} {_number(val.get(k)) if k in val else '-'}/{_number(test.get(k)) if k in test else '-'}" for k in names
    )
    return f"val/test {shown}" if shown else "no metrics recorded"


def training_summary(record: Mapping[str, Any]) -> str:
    """A training run in one line: its best epoch among those run, why it stopped, and the validation and test
    metrics of that epoch, so that `inspect` stays short (the per-epoch history is in `-v` and `--json`)."""
    given = record.get("config")
    config: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    most, history = config.get("epochs"), record.get("history")
    if isinstance(history, list) and history:
        ran = len(history)
        stop = "all epochs" if most is None or ran >= most else "early stop"
        epochs = f"best epoch {record.get('best_epoch')} of {ran} ({stop})"
    else:
        epochs = f"best epoch {record.get('best_epoch')}" + (f" of at most {most}" if most is not None else "")
    val, test = record.get("val") or {}, record.get("test") or {}
    searched = record.get("search")
    trials = searched.get("trials") if isinstance(searched, Mapping) else None
    chosen = (
        f"; kept the best of {len(trials)} trials on validation (-v shows them)"
        if isinstance(trials, list) and trials
        else ""
    )
    metrics = _metrics(val if isinstance(val, Mapping) else {}, test if isinstance(test, Mapping) else {})
    return f"{epochs}; {metrics}{chosen}"


def _data_summary(record: Mapping[str, Any]) -> str:
    """Where a training run's data came from and how much of it trained: `DATA (given split, 272 training samples)`."""
    notes = [f"{record['split']} split"] if record.get("split") else []
    if record.get("train_samples") is not None:
        notes.append(f"{record['train_samples']} training samples")
    if record.get("missing"):
        notes.append(f"missing: {record['missing']}")
    if record.get("encoder"):
        notes.append(f"encoder {record['encoder']}" + (", standardised" if record.get("standardized") else ""))
    return f"{record.get('data')} ({', '.join(notes)})"


def _is_run(value: Any) -> bool:
    return isinstance(value, Mapping) and "best_epoch" in value


def _short(value: Any, most: int = 120) -> str:
    """A provenance value as text, cut at `most` characters (`-v` shows it whole)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ", ".join(value[:4]) + (f", ... ({len(value)} in all)" if len(value) > 4 else "")
    else:
        text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= most else text[: most - 1] + "…"


def provenance_rows(provenance: Mapping[str, Any], verbose: bool = False) -> list[tuple[str, str]]:
    """The provenance as rows. In full (`verbose`): every key as JSON, sample hashes as their counts. Otherwise one
    line per training run (`training_summary`), its data for the model's own run, the blocks' runs by modality, a
    recipe by name, and anything else cut short: a summary a person reads at a glance."""
    shown = summarized(provenance)
    if verbose:
        return [(f"provenance.{k}", json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(shown.items())]
    rows: list[tuple[str, str]] = []
    runs_first = sorted(shown, key=lambda k: (not _is_run(shown[k]), k != "blocks", k))  # the model's own run first
    for key, value in ((k, shown[k]) for k in runs_first):
        if _is_run(value):
            rows += [(key, training_summary(value)), (f"{key} on", _data_summary(value))]
        elif key == "blocks" and isinstance(value, Mapping):
            for modality, record in value.items():
                runs = {k: v for k, v in record.items() if _is_run(v)} if isinstance(record, Mapping) else {}
                rows += [(f"{modality} {k}", training_summary(v)) for k, v in runs.items()]
        elif key == "recipe" and isinstance(value, Mapping):
            rows.append(("recipe", f"{value.get('name')} ({value.get('path')}); -v shows its text"))
        else:
            rows.append((key.replace("_", " "), _short(value)))
    return rows


def compact_graph(tree: Any) -> tuple[str, list[Any]]:
    """A composition graph's (label, children) tree with each node whose only child is a leaf written on one line
    (`block:labs <- input:labs`): the summary's tree, a line per block; `-v` prints every node on its own."""
    label, children = tree
    if len(children) == 1 and not children[0][1]:
        return f"{label} <- {children[0][0]}", []
    return label, [compact_graph(child) for child in children]
