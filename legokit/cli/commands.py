"""The `legokit` command: parses arguments, calls the library, prints with rich. Errors are one line, exit 1.

Every command takes `--json PATH` (its result as JSON; `-` for standard output) and `-q/--quiet` / `-v/--verbose`
(the `legokit` logger's level, shown through rich's handler on standard error, as are progress and warnings)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from legokit.adapters.base import Adapted, Adapter
from legokit.adapters.config import AdaptConfig
from legokit.adapters.files import attach_file, save_adapter
from legokit.adapters.missing import DEFAULT_MISSING_RATE, DEFAULT_MISSING_SPLIT
from legokit.adapters.mora import DEFAULT_RANK
from legokit.adapters.registry import adapter_names, describe_adapters
from legokit.artifacts.describe import compact_graph, describe, summary_rows
from legokit.artifacts.files import load, load_block, save, save_block
from legokit.artifacts.merging import contract_of_file, merge_files
from legokit.cache import CACHE_ENV, cache_root, clear_cache, list_cache
from legokit.compose.modes import describe_modes, fusion_modes
from legokit.contract import TIME_UNITS, Labelling, parse_edges, parse_names, parse_times
from legokit.demo import MODELS, claim_folder, default_spec, run_demo
from legokit.encoders import list_encoders
from legokit.errors import ConfigError, LegoError, brief
from legokit.hub.publish import pull, push
from legokit.io.atomic import write_atomic
from legokit.io.outputs import check_outputs
from legokit.nn.block import Architecture, LegoBlock, parse_input_shape
from legokit.nn.spectral import DEFAULT_PHASE, PHASE_MODES
from legokit.predict import DEFAULT_BATCH, predict_folder
from legokit.progress import log
from legokit.recipe import Recipe
from legokit.schema import OWN, add_flags, flag_of, given, options
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.threads import apply_threads, choose_threads
from legokit.training.distributed import session
from legokit.training.merged import merge_calibrated
from legokit.training.metrics import PRIMARY
from legokit.training.plots import plot_history
from legokit.training.search import SEARCH_SPACE, check_trials
from legokit.training.trainer import ADAPT_TRAINING, FUSE_TRAINING, TrainConfig, TrainResult
from legokit.training.workflows import (
    adapt,
    evaluate_missing,
    evaluate_model,
    fuse_blocks,
    train_block,
    train_wrapped_block,
)
from legokit.version import __version__
from legokit.wrap import WrapOptions, default_output, wrap_file

Result = dict[str, Any]  # what a command did, as JSON-ready values (`--json`)


def _json_object(text: str, flag: str = "--encoder-kwargs") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, e.g. '{{\"hidden\": 256}}'")
    return value


def _parse_weights(text: str | None) -> list[float] | dict[str, float] | str | None:
    """`0.5,0.5` (one per block, in order), `tab=0.5,img=0.5`, or `auto` (from the blocks' validation metrics)."""
    if not text:
        return None
    if text.strip() == "auto":
        return "auto"
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        if all("=" in item for item in items):
            return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in items)}
        return [float(item) for item in items]
    except ValueError as exc:
        raise ConfigError(f"--weights must look like 0.5,0.5 or tab=0.5,img=0.5, got {text!r}") from exc


def _tree(label_and_children: Any, tree: Tree | None = None) -> Tree:
    label, children = label_and_children
    node = Tree(escape(label)) if tree is None else tree.add(escape(label))
    for child in children:
        _tree(child, node)
    return node


def _print_summary(console: Console, facts: dict[str, Any], verbose: bool = False) -> None:
    """An artifact's facts as a borderless two-column table (and its graph as a tree): a short summary, or every
    recorded fact with `verbose` (-v)."""
    table = Table(title=escape(facts["path"]), show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column("field", style="bold cyan")
    table.add_column("value", overflow="fold")
    for name, value in summary_rows(facts, verbose):
        table.add_row(name, escape(str(value)))
    console.print(table)
    if "graph" in facts:
        console.print(_tree(facts["graph"] if verbose else compact_graph(facts["graph"])))


def _number(value: float, digits: int = 3) -> str:
    """A metric for people: NaN (a one-class split's AUC) reads as undefined."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "undefined"


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_number(v)}" for k, v in metrics.items() if isinstance(v, float))


def _trained(result: TrainResult, path: Path | None) -> Result:
    return {
        "output": None if path is None else str(path),
        "best_epoch": result.best_epoch,
        "val": result.val,
        "test": result.test,
        "seconds": result.seconds,
        "encoding": result.encoding,
        "history": result.history,
    }


def _training(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """The operation's training defaults (`base`) with the flags that were given (one per `TrainConfig` field)."""
    return replace(base, **given(args, TrainConfig))


LATENT_THREADS = ("train", "fuse", "demo")  # the commands that choose their threads by the model's latent, once


def _labelling(args: argparse.Namespace, base: Labelling, task: TaskSpec) -> tuple[Labelling, TaskSpec]:
    """The user's word on the labels (--time-unit, --bins or --bins-from, --classes) over a spec's; a survival task
    takes its number of bins from the edges when --task does not say it."""
    classes = parse_names(args.classes) if args.classes else base.classes
    unit = args.time_unit or base.time_unit
    if args.bins_from and args.bins is not None:
        raise ConfigError("give --bins or --bins-from, not both")
    if args.bins_from:
        try:
            labelling = Labelling.from_contract(contract_of_file(args.bins_from), unit)
        except LegoError as exc:
            raise ConfigError(f"--bins-from {args.bins_from}: {exc}") from exc
        labelling = replace(labelling, classes=classes)
    elif args.bins is not None:
        labelling = Labelling(unit, parse_edges(args.bins), None, classes)
    else:
        labelling = replace(base, time_unit=unit, classes=classes)
    if labelling.bins is not None and not args.task and task.kind == "survival":
        task = TaskSpec("survival", len(labelling.bins) + 1)
    return labelling, task


def _encoder_parameters(blocks: Sequence[Any]) -> int:
    """The parameters of the largest encoder that will run: the threads policy counts it beside the latent."""
    return max((sum(p.numel() for p in block.encoder.parameters()) for block in blocks), default=0)


def _use_threads(
    args: argparse.Namespace, console: Console, latent: tuple[int, int] | None = None, encoder_parameters: int = 0
) -> None:
    """Set torch's CPU threads for this command (`legokit.threads`); say so when the work size decided it."""
    choice = apply_threads(
        choose_threads(
            getattr(args, "threads", None),
            latent[0] * latent[1] if latent else None,
            encoder_parameters=encoder_parameters,
        )
    )
    log.log(
        logging.INFO if latent is not None else logging.DEBUG, "CPU threads: %d (%s)", choice.threads, choice.reason
    )  # a log line on standard error, never among the results


def cmd_wrap(args: argparse.Namespace, console: Console) -> Result:
    how = WrapOptions(
        input_dtype=args.input_dtype,
        mask=args.mask,
        output=WrapOptions.parse_output(args.output_key),
        layout=args.layout,
        train_mode=args.train_mode,
    )
    output = Path(args.output) if args.output else default_output(args.path)
    source = Path(args.path)
    inputs = [source, *(p for p in source.rglob("*") if p.is_file())] if source.is_dir() else [source]
    block = wrap_file(
        args.path,
        modality=args.modality,
        task=args.task,
        input_shape=parse_input_shape(args.input_shape) if args.input_shape else None,
        encoder=args.encoder,
        encoder_kwargs=_json_object(args.encoder_kwargs) if args.encoder_kwargs else None,
        trust_pickle=args.trust_pickle,
        architecture=Architecture(**given(args, Architecture)),
        device=args.device or "auto",
        how=how,
    )
    contract = block.provenance.get("encoder_contract")
    if contract:
        console.print(f"encoder: {escape(contract)}; exported in {'train' if args.train_mode else 'eval'} mode")
    path = save_block(block, output, provenance={"wrapped_from": str(args.path)}, inputs=inputs)
    console.print(f"[green]wrote[/] {escape(str(path))}")
    facts = describe(path)
    _print_summary(console, facts, args.verbose)
    return facts


def cmd_inspect(args: argparse.Namespace, console: Console) -> Result:
    facts = describe(args.artifact)
    _print_summary(console, facts, args.verbose)
    return facts


def cmd_merge(args: argparse.Namespace, console: Console) -> Result:
    if args.calibrate_on is not None:
        weights = _parse_weights(args.weights)
        path, calibration = merge_calibrated(args.artifacts, args.output, args.calibrate_on, weights, args.phase)
        console.print(
            f"[green]merged[/] {len(args.artifacts)} artifacts into {escape(str(path))}, calibrated on the "
            f"validation split of {escape(str(args.calibrate_on))} ({calibration.summary()})"
        )
    else:
        path = merge_files(args.artifacts, args.output, _parse_weights(args.weights), args.phase)
        console.print(f"[green]merged[/] {len(args.artifacts)} artifacts into {escape(str(path))}")
    facts = describe(path, verify=False)  # the merge verified every byte it copied
    _print_summary(console, facts, args.verbose)
    return facts


def cmd_predict(args: argparse.Namespace, console: Console) -> Result:
    model = load(args.model)
    predictions = predict_folder(
        model,
        args.data,
        batch_size=args.batch_size,
        device=args.device or "auto",
        progress=True,
        cache=not args.no_cache,
        times=parse_times(args.times) if args.times is not None else (),
    )
    path = predictions.write(args.output, inputs=[args.model, args.data, *predictions.sources])
    console.print(
        f"[green]wrote[/] {len(predictions.ids)} predictions ({escape(', '.join(predictions.columns))}) to "
        f"{escape(str(path))}"
    )
    return {"output": str(path), "samples": len(predictions.ids), "columns": list(predictions.columns)}


def cmd_run(args: argparse.Namespace, console: Console) -> Result:
    recipe = Recipe.from_yaml(args.recipe)
    graph = recipe.check(download=False)
    console.print(
        f"recipe [bold]{escape(recipe.name)}[/] ({escape(str(recipe.path))}): {recipe.operation.kind} "
        f"of {', '.join(b.modality for b in recipe.blocks)} -> {escape(str(recipe.output))}"
    )
    console.print(_tree(graph.tree()))
    for block in recipe.uncached():
        log.warning("not cached yet: %s (a run downloads it)", block.artifact)
    done = {
        "recipe": str(recipe.path),
        "name": recipe.name,
        "operation": recipe.operation.kind,
        "graph": graph.tree(),
        "output": None,
    }
    if args.dry_run:
        console.print("[green]valid[/] (dry run: nothing written)")
        return done
    path = recipe.run(device=args.device, output=args.output)
    console.print(f"[green]wrote[/] {escape(str(path))}")
    return {**done, "output": str(path)}


def _report_training(
    console: Console, what: str, result: TrainResult, path: Path, args: argparse.Namespace, inputs: list[Any]
) -> Result:
    for modality, done in result.encoding.items():
        console.print(
            f"frozen {escape(modality)} encoder: {done['encoded']:,.0f} samples encoded in "
            f"{done['seconds']:.1f} s, {done['cached']:,.0f} read from the cache"
        )
    console.print(
        f"[green]{what}[/]: best epoch {result.best_epoch}, val {_metrics_text(result.val)}, "
        f"test {_metrics_text(result.test)} ({result.seconds:.1f} s)"
    )
    console.print(f"[green]wrote[/] {escape(str(path))}")
    if args.plot:
        plot_history(
            result.history,
            args.plot,
            title=f"{what}: {Path(path).name}",
            best_epoch=result.best_epoch,
            inputs=[*inputs, path],
        )
        console.print(f"[green]plotted[/] the training history to {escape(args.plot)}")
    return _trained(result, path)


def _report_search(console: Console, block: LegoBlock, primary: str) -> dict[str, Any] | None:
    """Print a searched block's trials (the chosen one marked) and return the search record."""
    record = block.provenance.get("trained", {}).get("search")
    if not record:
        return None
    table = Table(
        title=f"search: {len(record['trials'])} trials on the validation split in {record['seconds']:.1f} s (* kept)"
    )
    for name in ("", *record["space"], "best epoch", "epochs run", f"val {primary}"):
        table.add_column(name, justify="right")
    for index, row in enumerate(record["trials"]):
        table.add_row(
            "*" if index == record["chosen"] else str(index + 1),
            *(f"{row[name]:g}" for name in record["space"]),
            str(row["best_epoch"]),
            str(row["epochs_run"]),
            _number(row["val"].get(primary, math.nan)),
        )
    console.print(table)
    return dict(record)


def _refuse_rebuilding(args: argparse.Namespace) -> None:
    """`train --block` with flags that would build another block: a usage error, said before the outputs are checked."""
    named = [
        ("--spec", args.spec),
        ("--encoder", args.encoder),
        ("--task", args.task),
        ("--encoder-kwargs", args.encoder_kwargs),
    ]
    building = [flag for flag, value in named if value] + [
        flag_of(item) for item in options(Architecture, (OWN,)) if getattr(args, item.name) is not None
    ]
    if building:
        raise ConfigError(
            f"--block trains the block as it was wrapped; {', '.join(building)} would build another "
            "(set them when wrapping)"
        )


def _train_wrapped(args: argparse.Namespace, console: Console) -> Result:
    """`legokit train DATA --block wrapped.st`: train a wrapped block's latent, updates and head."""
    inputs = [args.block, args.data, args.bins_from]
    block = load_block(args.block)
    config = _training(args, TrainConfig())
    _use_threads(args, console, block.config.latent, _encoder_parameters([block]))
    if args.modality and args.modality != block.modality:
        raise ConfigError(f"--modality {args.modality}: the block {args.block} is for modality {block.modality}")
    with session(config.device) as place:
        labelling, _ = _labelling(args, Labelling(), block.config.task)
        block, result = train_wrapped_block(
            args.data,
            block,
            config,
            standardize=args.standardize,
            cache=not args.no_cache,
            labelling=labelling,
            trials=args.search,
        )
        if not place.main:
            return _trained(result, None)
        path = save_block(block, args.output, inputs=inputs)
    encoder = block.provenance["trained"]["encoder"]
    searched = _report_search(console, block, PRIMARY[block.config.task.kind])
    what = f"trained {block.modality} block (encoder {encoder})"
    return {**_report_training(console, what, result, path, args, inputs), "search": searched}


def cmd_train(args: argparse.Namespace, console: Console) -> Result:
    check_trials(args.search)
    if args.block:
        return _train_wrapped(args, console)
    if args.encoders not in (None, "auto", "finetune") or args.standardize:
        raise ConfigError(
            f"{'--standardize' if args.standardize else '--encoders ' + args.encoders} is for --block (a "
            "built-in block always trains its encoder and standardises its inputs)"
        )
    inputs = [args.spec, args.data, args.bins_from]
    if args.spec:
        spec = BlockSpec.from_yaml(args.spec)
    elif args.modality:
        spec = BlockSpec(args.modality)
    else:
        raise ConfigError("train needs --modality (or a --spec that names one)")
    labelling, task = _labelling(args, spec.labelling, TaskSpec.parse(args.task) if args.task else spec.task)
    spec = spec.override(
        modality=args.modality,
        encoder=args.encoder,
        task=task,
        labelling=labelling,
        encoder_kwargs=_json_object(args.encoder_kwargs) if args.encoder_kwargs else None,
        **given(args, Architecture),
    )
    spec = replace(spec, training=_training(args, spec.training))
    _use_threads(args, console, spec.latent)
    with session(spec.training.device) as place:
        block, result = train_block(args.data, spec, trials=args.search)
        if not place.main:  # under torchrun, rank 0 reports and writes
            return _trained(result, None)
        path = save_block(block, args.output, inputs=inputs)
    searched = _report_search(console, block, PRIMARY[spec.task.kind])
    return {
        **_report_training(console, f"trained {spec.modality} block", result, path, args, inputs),
        "search": searched,
    }


def cmd_fuse(args: argparse.Namespace, console: Console) -> Result:
    config = _training(args, FUSE_TRAINING)
    inputs = [*args.blocks, args.data]
    blocks = [load_block(path) for path in args.blocks]
    _use_threads(args, console, blocks[0].config.latent, _encoder_parameters(blocks))
    with session(config.device) as place:
        model, result = fuse_blocks(
            blocks, args.data, args.mode, config, cache=not args.no_cache, time_unit=args.time_unit
        )
        if not place.main:  # under torchrun, rank 0 reports and writes
            return _trained(result, None)
        path = save(model, args.output, provenance={"fused_from": list(args.blocks)}, inputs=inputs)
    what = f"fused {' -> '.join(model.modalities)} ({args.mode}, {config.epochs} epochs)"
    return _report_training(console, what, result, path, args, inputs)


def cmd_adapt(args: argparse.Namespace, console: Console) -> Result:
    base = load(args.model)
    config = _training(args, ADAPT_TRAINING)
    if args.method is None:
        raise ConfigError(f"adapt needs --method: {' or '.join(adapter_names())}")
    adaptation = AdaptConfig(
        args.method,
        args.rank,
        args.at,
        args.train_head,
        args.ssf_train_complete,
        args.missing_rate,
        args.missing_split,
        args.test_missing_rate,
        args.missing,
        args.test_missing,
    )
    trained, result, counts = adapt(
        base,
        args.data,
        adaptation,
        config=config,
        allow_overlap=args.allow_overlap,
        cache=not args.no_cache,
        time_unit=args.time_unit,
    )
    adapted = cast(Adapted, trained)  # --method names an adapter: the model comes back with it attached
    for warning in counts.pop("warnings", []):
        log.warning("%s", warning)
    adapter = cast(Adapter, adapted.adapters[-1])
    head = "and the head" if any(p.requires_grad for p in adapted.head.parameters()) else "(head frozen)"
    console.print(
        f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f}% of the "
        f"model): the {args.method} adapter at {len(adapter.placement)} site(s) {head}; one modality set "
        f"{counts['percent_one_set']:.2f}%, all {counts['sets']} sets {counts['percent_all_sets']:.2f}%, "
        f"{counts['overhead_vs_adapted_layers']:.1%} of the layers it adapts"
    )
    protocol = args.missing or f"eta {args.missing_rate:g}, split {args.missing_split:g}"
    console.print(
        f"best epoch {result.best_epoch}: val {_metrics_text(result.val)}, test {_metrics_text(result.test)} "
        f"(missing: {escape(protocol)})"
    )
    record = {
        "adapted": {
            "data": args.data,
            "missing": protocol,
            "config": asdict(config),
            "best_epoch": result.best_epoch,
            "val": result.val,
            "test": result.test,
            "trainable": counts,
            "samples": result.samples,
        }
    }
    path = save_adapter(adapted, adapter, args.output, base.source_sha256, record, inputs=[args.model, args.data])
    console.print(f"[green]wrote[/] {escape(str(path))} (fits base sha256 {base.source_sha256[:12]})")
    return {**_trained(result, path), "missing": protocol, "parameters": counts}


def cmd_eval(args: argparse.Namespace, console: Console) -> Result:
    times = parse_times(args.times) if args.times is not None else ()
    model = load(args.model, device=args.device or "auto")
    if args.adapter or args.missing or args.missing_rate is not None:
        for path in args.adapter or []:
            model = attach_file(model, path)
        metrics = evaluate_missing(
            model,
            args.data,
            args.missing,
            args.split,
            args.seed,
            args.allow_overlap,
            args.missing_rate,
            args.missing_split,
            plot=args.plot,
            cache=not args.no_cache,
            time_unit=args.time_unit,
            times=times,
        )
    else:
        metrics = evaluate_model(
            model,
            args.data,
            args.split,
            args.seed,
            allow_overlap=args.allow_overlap,
            plot=args.plot,
            cache=not args.no_cache,
            time_unit=args.time_unit,
            times=times,
        )
    for warning in metrics["warnings"]:
        log.warning("%s", warning)
    protocol = {k: v for k, v in metrics.items() if k.startswith("missing")}
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in protocol.items())
    console.print(
        f"{escape(args.model)} on {escape(args.data)}: {metrics['split']} split, {metrics['samples']} samples "
        f"(split from {escape(metrics['split_source'])})" + (f"; {escape(shown)}" if shown else "")
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float) and name not in protocol:
            table.add_row(name, _number(value, 4))
    console.print(table)
    if args.plot:
        console.print(f"[green]plotted[/] the {metrics['split']} split to {escape(args.plot)}")
    return metrics


def cmd_demo(args: argparse.Namespace, console: Console) -> Result:
    claim_folder(Path(args.folder))  # a folder the demo may not use is refused before anything is printed
    log.info("legokit demo: Mayo PBC, 1-year landmark, %d random 70/15/15 splits -> %s/", args.seeds, args.folder)
    _use_threads(args, console, default_spec("labs").latent)
    result = run_demo(args.folder, args.seeds, device=args.device)  # progress on standard error
    summary = result.to_json()
    table = Table(
        title=f"c-index on the test split, mean ± s.d. over {args.seeds} seeds "
        f"({summary['data']['patients']} patients, {summary['data']['with_visits']} with visits)",
        title_justify="left",
    )
    table.add_column("model")
    table.add_column("all test patients", justify="right")
    table.add_column("test patients with visits", justify="right")
    table.add_column("integrated Brier", justify="right")
    table.add_column("calibration error", justify="right")

    def shown(cell: Mapping[str, float] | None) -> str:
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}" if cell else "—"

    for name in MODELS:
        row = summary["models"][name]
        table.add_row(
            name,
            shown(row["all_test"]),
            shown(row["test_with_visits"]),
            shown(row["integrated_brier"]),
            shown(row["calibration_error"]),
        )
    console.print(table)
    console.print(
        "integrated Brier and calibration error (the worst |mean predicted S(t) - Kaplan-Meier S(t)| at the bin "
        "edges) on all test patients; lower is better"
    )
    console.print(
        f"{result.seconds:.0f} s; table in {escape(args.folder)}/results.json, artifacts in {escape(args.folder)}/"
    )
    return summary


def cmd_cache(args: argparse.Namespace, console: Console) -> Result:
    root = cache_root()
    if args.action == "clear":
        removed = clear_cache(root, tuple(args.keys))
        freed = sum(c.bytes for c in removed)
        console.print(
            f"[green]cleared[/] {len(removed)} encoder(s), {freed / 2**20:,.1f} MiB, from {escape(str(root))}"
        )
        return {"root": str(root), "cleared": [c.key for c in removed], "bytes": freed}
    if args.keys:
        raise ConfigError("cache list takes no keys (cache clear KEY... deletes some)")
    listed = list_cache(root)
    table = Table(title=f"encoder outputs in {root} ({CACHE_ENV} moves it)", title_justify="left")
    for column in ("key", "modality", "encoder", "samples", "MiB", "last used"):
        table.add_column(column, justify="right" if column in ("samples", "MiB") else "left")
    for cached in listed:
        table.add_row(
            cached.key[:12],
            escape(cached.modality),
            escape(cached.encoder),
            f"{cached.samples:,}",
            f"{cached.bytes / 2**20:,.1f}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(cached.modified)),
        )
    console.print(table if listed else f"no encoder outputs in {escape(str(root))}")
    return {
        "root": str(root),
        "encoders": [
            {
                "key": c.key,
                "modality": c.modality,
                "encoder": c.encoder,
                "samples": c.samples,
                "bytes": c.bytes,
                "modified": c.modified,
            }
            for c in listed
        ],
    }


def cmd_push(args: argparse.Namespace, console: Console) -> Result:
    url = push(args.artifact, args.repo, private=args.private)
    console.print(f"[green]pushed[/] {escape(args.artifact)} with its model card to {escape(args.repo)}: {escape(url)}")
    return {"artifact": args.artifact, "repo": args.repo, "url": url}


def cmd_pull(args: argparse.Namespace, console: Console) -> Result:
    path = pull(args.repo, args.output)
    console.print(f"[green]pulled[/] {escape(args.repo)} -> {escape(str(path))}")
    return {"repo": args.repo, "path": str(path)}


class _Deprecated(argparse.Action):
    """An old spelling kept for one release, hidden from --help: stores into the new flag's `dest` (its value, or
    `const` for an old switch) and adds a one-line warning naming the new spelling (`main` prints it on stderr)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, const: Any = None, **kwargs: Any):
        super().__init__(
            option_strings, dest, nargs=None if const is None else 0, const=const, help=argparse.SUPPRESS, **kwargs
        )
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        value = values if self.const is None else self.const
        current = getattr(namespace, self.dest, None)
        if current not in (None, parser.get_default(self.dest), value):  # the new spelling came first
            namespace.clashes = [*getattr(namespace, "clashes", []), f"{option_string} {value} vs {self.new} {current}"]
        setattr(namespace, self.dest, value)
        spelled = self.new if self.const is None else f"{self.new} {self.const}"
        namespace.deprecated = [*getattr(namespace, "deprecated", []), f"{option_string} is deprecated: use {spelled}"]
        namespace.spelled = [*getattr(namespace, "spelled", []), (self.dest, value, option_string, self.new)]


def _refuse_clashes(args: argparse.Namespace) -> None:
    """An old spelling and its new one given with different values, or `train --block` with flags that would build
    another block: refused before the outputs are checked."""
    if args.command == "train" and args.block:
        _refuse_rebuilding(args)
    clashes = list(getattr(args, "clashes", []))
    for dest, value, old, new in getattr(args, "spelled", []):
        if getattr(args, dest) != value:  # the new spelling came after the old one
            clashes.append(f"{old} {value} vs {new} {getattr(args, dest)}")
    if clashes:
        raise ConfigError(f"an old and a new spelling of one flag disagree ({clashes[0]}): give only the new one")


class InputPath(str):
    """A command-line value that names a file or folder the command reads: `_paths` lists every argument of this
    type, and only those, as the inputs that -o, --plot and --json must not replace."""


# what --seed draws, per command: the training flags' help says it for each
SEEDS = {
    "train": "seed of the block's initial weights, the batch order, modality dropout and the random split (when the "
    "folder has no splits.csv) (default {default})",
    "fuse": "seed of the fine-tuning's batch order and modality dropout, and of the random split (when the folder has "
    "no splits.csv); the blocks keep their weights (default {default})",
    "adapt": "seed of the adapter's initial weights, the batch order, the random split (when the folder has no "
    "splits.csv) and the missing-modality draws (test metrics: seed + 1) (default {default})",
}


NOT_FOR = {"adapt": ("calibrate",)}  # training settings a command has no use for: an adapter is not calibrated


def _training_flags(command: str, defaults: TrainConfig, spec: bool = False) -> argparse.ArgumentParser:
    """The training flags, one per `TrainConfig` field with one meaning each, with this command's defaults and what
    its --seed draws (`legokit.schema`: defined once, on the config); an adapter is not calibrated on its own."""
    return add_flags(
        argparse.ArgumentParser(add_help=False),
        TrainConfig,
        defaults,
        " or the spec's" if spec else "",
        {"seed": SEEDS[command]},
        omit=NOT_FOR.get(command, ()),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legokit", description="Wrap, inspect, merge and fuse LegoBlocks.")
    parser.add_argument("--version", action="version", version=f"legokit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        metavar="PATH",
        help="also write the command's result as JSON to PATH ('-': standard output); checked before any work, as "
        "every output is",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors (no progress)")
    common.add_argument("-v", "--verbose", action="store_true", help="also print debug messages")
    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument("--device", help="auto (CUDA if present; the default), cpu, cuda or cuda:N")
    compute.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else 1 "
        "for latents up to 32x32, else the usable CPUs the load average leaves idle)",
    )
    computing = [common, compute]
    caching = argparse.ArgumentParser(add_help=False)
    caching.add_argument(
        "--no-cache",
        action="store_true",
        help="keep frozen pretrained encoders' outputs in memory "
        f"for this run only, nothing on disk (default: also in {CACHE_ENV}, ~/.cache/legokit)",
    )

    wrap = commands.add_parser(
        "wrap", parents=computing, help="wrap an encoder file into a standalone block artifact (.st)"
    )
    wrap.add_argument(
        "path",
        type=InputPath,
        metavar="FILE",
        help="the encoder: a torch.export program (.pt2), a "
        "TorchScript archive, a state dict, or a Hugging Face model folder (config.json + safetensors "
        "[+ tokenizer.json])",
    )
    wrap.add_argument("--modality", required=True, help="name of the modality, e.g. tab, img, labs")
    wrap.add_argument("--input-shape", help="per-sample input shape where it cannot be inferred: 76, or ?x32 for bags")
    wrap.add_argument("--encoder", help=f"the built-in encoder of a state dict: {', '.join(list_encoders())}")
    wrap.add_argument(
        "--encoder-kwargs",
        help="JSON keyword arguments of --encoder, e.g. '{\"hidden\": 256}' (default: read off the state dict)",
    )
    wrap.add_argument("--arch", action=_Deprecated, dest="encoder", new="--encoder")
    wrap.add_argument("--arch-kwargs", action=_Deprecated, dest="encoder_kwargs", new="--encoder-kwargs")
    wrap.add_argument(
        "--task",
        default=str(BlockSpec.task),
        help="survival:N | multiclass:K | binary | multilabel:K (default %(default)s)",
    )
    add_flags(wrap, Architecture, Architecture())
    wrap.add_argument(
        "--trust-pickle",
        action="store_true",
        help="trust the file: allow a pickled module or a TorchScript archive (loading either runs code from the file)",
    )
    wrap.add_argument(
        "--input-dtype",
        choices=("float32", "int64"),
        help="int64 for token ids (default: float32, or int64 when the encoder fails on floats)",
    )
    wrap.add_argument(
        "--mask",
        default="auto",
        help="keyword that takes the padding mask: auto (read off forward), "
        "none (run unpadded groups), src_key_padding_mask, key_padding_mask, attention_mask or mask",
    )
    wrap.add_argument(
        "--output-key",
        metavar="KEY",
        help="which output to read from a tuple, dict "
        "or ModelOutput: a key (last_hidden_state) or an index (default: the first tensor)",
    )
    wrap.add_argument(
        "--layout",
        choices=("tokens", "channels", "map"),
        help="output layout: (b, n, e) tokens, "
        "(b, c, t) conv maps or (b, c, h, w) feature maps (default: read off the output)",
    )
    wrap.add_argument(
        "--train-mode",
        action="store_true",
        help="export in train mode (batch statistics and dropout are frozen into the program); default eval mode",
    )
    wrap.add_argument(
        "-o", "--output", help="the block artifact to write (default: <encoder stem>.st next to the encoder)"
    )
    wrap.set_defaults(run=cmd_wrap)

    merge = commands.add_parser(
        "merge", parents=[common], help="LegoMerge blocks (or a merged model and new blocks) with no training"
    )
    merge.add_argument(
        "artifacts", nargs="+", type=InputPath, help="block or merged-model artifacts (.st), at least two blocks in all"
    )
    merge.add_argument(
        "--phase",
        default=DEFAULT_PHASE,
        choices=PHASE_MODES,
        help="mean of phases: arithmetic (paper) or circular (default %(default)s)",
    )
    merge.add_argument(
        "--weights",
        help="one weight per block, 0.5,0.5, by modality, tab=0.5,img=0.5, or auto: each "
        "block's validation metric above chance, as recorded when it was trained (default equal)",
    )
    merge.add_argument(
        "--calibrate-on",
        type=InputPath,
        metavar="DATA",
        help="a labelled dataset folder: recalibrate the merged survival model's probabilities on its validation "
        "split (the blocks' training split) before writing it",
    )
    merge.add_argument("-o", "--output", required=True, help="the merged artifact to write (.st)")
    merge.set_defaults(run=cmd_merge)

    predict = commands.add_parser(
        "predict",
        parents=[*computing, caching],
        help="predict every sample of a dataset folder (any modalities present)",
    )
    predict.add_argument("model", type=InputPath, help="a block, merged or fused artifact (.st)")
    predict.add_argument(
        "data", type=InputPath, help="dataset folder: NAME.csv (id + features) or NAME/ID.safetensors per modality"
    )
    predict.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="samples per forward pass (default %(default)s)"
    )
    predict.add_argument(
        "--times",
        metavar="T1,T2,...",
        help="survival: also S(t) at these times in the model's time unit (survival_at_T columns; log-linear "
        "within a bin, held past the training data's last follow-up, with a warning)",
    )
    predict.add_argument(
        "-o",
        "--output",
        required=True,
        help="CSV file to write: id, then the task's outputs (refused before any prediction when it is a link, under "
        "/proc, /sys or /dev, or inside DATA or another dataset folder)",
    )
    predict.set_defaults(run=cmd_predict)

    run = commands.add_parser(
        "run", parents=computing, help="run a YAML recipe: recipe -> composition graph -> artifact"
    )
    run.add_argument("recipe", type=InputPath, help="a recipe file, e.g. recipes/merge.yaml")
    run.add_argument(
        "--dry-run", action="store_true", help="validate and print the graph, write nothing (the output is not checked)"
    )
    run.add_argument("-o", "--output", help="the artifact to write (default: the recipe's output)")
    run.set_defaults(run=cmd_run)

    training = _training_flags("train", TrainConfig(), spec=True)
    train = commands.add_parser(
        "train", parents=[*computing, caching, training], help="train a block on one modality of a dataset folder"
    )
    train.add_argument(
        "data", type=InputPath, help="dataset folder (labels.csv, NAME.csv or NAME/, optional splits.csv)"
    )
    train.add_argument(
        "--block", type=InputPath, help="a wrapped block (.st) to train: its latent, updates and head (encoder frozen)"
    )
    train.add_argument("--finetune-encoder", action=_Deprecated, dest="encoders", new="--encoders", const="finetune")
    train.add_argument(
        "--search",
        type=int,
        default=1,
        metavar="N",
        help=f"try N training settings on the validation split (the given ones, then random points of a grid over "
        f"{', '.join(SEARCH_SPACE)}) and keep the best; the table goes into the block's provenance (default 1)",
    )
    train.add_argument(
        "--standardize",
        action="store_true",
        help="with --block: standardise inputs with the "
        "training split's mean and s.d. (default: the encoder sees the data as stored)",
    )
    train.add_argument(
        "--spec", type=InputPath, help="a block spec, e.g. blocks/labs.yaml; the flags below override it"
    )
    train.add_argument("--modality", help="the modality to train on (NAME.csv or NAME/ in the folder)")
    train.add_argument(
        "--encoder", help=f"built-in encoder: {', '.join(list_encoders())} (default {BlockSpec.encoder})"
    )
    train.add_argument("--encoder-kwargs", help="JSON keyword arguments of the encoder")
    train.add_argument("--task", help=f"survival:N | multiclass:K | binary | multilabel:K (default {BlockSpec.task})")
    add_flags(train, Architecture, Architecture(), " or the spec's")
    train.add_argument(
        "--time-unit",
        choices=tuple(TIME_UNITS),
        help="unit of labels.csv's times (survival); "
        "recorded in the block, so that blocks trained apart are checked before they are joined",
    )
    train.add_argument(
        "--bins",
        metavar="EDGES",
        help="survival bin edges in that unit, e.g. 365,730,1460 (4 bins; default: quantiles of the training times)",
    )
    train.add_argument(
        "--bins-from",
        metavar="ST",
        type=InputPath,
        help="the bins and time unit of another block or "
        "model, so that "
        "blocks trained at other sites can be merged (times converted from --time-unit)",
    )
    train.add_argument(
        "--classes",
        help="class names in output order (binary: negative first), e.g. no,yes "
        "(default: the labels' values, integers 0..K-1 or names sorted)",
    )
    train.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw the per-epoch history (losses, validation metric) here (needs legokit[plot])",
    )
    train.add_argument("-o", "--output", required=True, help="the block artifact to write (.st)")
    train.set_defaults(run=cmd_train)

    fuse = commands.add_parser(
        "fuse",
        parents=[*computing, caching, _training_flags("fuse", FUSE_TRAINING)],
        help="LegoFuse blocks (stack or weave) and fine-tune them on paired data",
    )
    fuse.add_argument("blocks", nargs="+", type=InputPath, help="block artifacts, in the order their updates run")
    fuse.add_argument("--mode", default="stack", choices=fusion_modes(), help=describe_modes())
    fuse.add_argument(
        "--time-unit",
        choices=tuple(TIME_UNITS),
        help="unit of the folder's times when not the model's (converted to the model's unit)",
    )
    fuse.add_argument(
        "--data", required=True, type=InputPath, help="dataset folder with the blocks' modalities and labels"
    )
    fuse.add_argument("--freeze-encoders", action=_Deprecated, dest="encoders", new="--encoders", const="frozen")
    fuse.add_argument("--plot", metavar="PNG", help="also draw the per-epoch history here (needs legokit[plot])")
    fuse.add_argument("-o", "--output", required=True, help="the fused artifact to write (.st)")
    fuse.set_defaults(run=cmd_fuse)

    evaluate = commands.add_parser(
        "eval", parents=[*computing, caching], help="metrics of a model on a split of a labelled dataset folder"
    )
    evaluate.add_argument("model", type=InputPath, help="a block, merged or fused artifact (.st)")
    evaluate.add_argument("data", type=InputPath, help="labelled dataset folder")
    evaluate.add_argument(
        "--time-unit",
        choices=tuple(TIME_UNITS),
        help="unit of the folder's times when not the model's (converted to the model's unit)",
    )
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"), help="default test")
    evaluate.add_argument(
        "--times",
        metavar="T1,T2,...",
        help="survival: the horizons of the time-dependent metrics, in the model's time unit (default: its bin edges)",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        help="seed of the random split (when the folder has no splits.csv) "
        "and of the missing-modality draws (seed + 1) (default: the one the model, or all its "
        "blocks, was trained with)",
    )
    evaluate.add_argument(
        "--adapter", action="append", type=InputPath, help="attach this adapter artifact first (repeatable)"
    )
    evaluate.add_argument(
        "--missing-rate",
        type=float,
        help="MoRA's protocol: share eta of the complete samples that miss one modality (dummies: the training means)",
    )
    evaluate.add_argument(
        "--missing-split",
        type=float,
        default=DEFAULT_MISSING_SPLIT,
        help="the first modality's share of the missing ones (default %(default)s)",
    )
    evaluate.add_argument("--missing", help="instead, independent per-modality rates, e.g. tab=0.3,seq=1.0")
    evaluate.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score samples a block was trained or validated on (refused by default), with a warning",
    )
    evaluate.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw Kaplan-Meier curves by predicted risk group "
        "(survival) or ROC curves (classification) of the split here (needs legokit[plot])",
    )
    evaluate.set_defaults(run=cmd_eval)

    adapt = commands.add_parser(
        "adapt",
        parents=[*computing, caching, _training_flags("adapt", ADAPT_TRAINING)],
        help="train a missing-modality adapter (MoRA or SSF) for a model",
    )
    adapt.add_argument(
        "model", type=InputPath, help="the base artifact (.st): a merged or fused model (a block: --missing-rate 0)"
    )
    adapt.add_argument(
        "--method", choices=adapter_names(), help=f"the adapter to train: {describe_adapters()}; required"
    )
    adapt.add_argument("--adapter", action=_Deprecated, dest="method", new="--method", choices=adapter_names())
    adapt.add_argument(
        "--time-unit",
        choices=tuple(TIME_UNITS),
        help="unit of the folder's times when not the model's (converted to the model's unit)",
    )
    adapt.add_argument("--data", required=True, type=InputPath, help="labelled dataset folder")
    adapt.add_argument("--rank", type=int, default=DEFAULT_RANK, help="MoRA rank (default %(default)s, the paper's)")
    adapt.add_argument(
        "--at",
        help="tokens (MoRA default: each block's first key/value projection), first, all (SSF "
        "default), or module names, comma-separated",
    )
    adapt.add_argument(
        "--missing-rate",
        type=float,
        default=DEFAULT_MISSING_RATE,
        help="MoRA's protocol: share eta of the complete "
        "samples that miss one modality, in training and validation (default %(default)s)",
    )
    adapt.add_argument(
        "--missing-split",
        type=float,
        default=DEFAULT_MISSING_SPLIT,
        help="the first modality's share of the missing "
        "ones, in the model's modality order (alphabetical for a merged model; default %(default)s; "
        "equal shares for more than two modalities)",
    )
    adapt.add_argument(
        "--test-missing-rate", type=float, help="eta for the reported test metrics (default: --missing-rate)"
    )
    adapt.add_argument("--missing", help="instead, independent per-modality rates for training, e.g. tab=0.7")
    adapt.add_argument("--test-missing", help="independent per-modality rates for the test metrics")
    adapt.add_argument(
        "--train-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the task head too (default: yes for MoRA, no for SSF, as its paper does)",
    )
    adapt.add_argument(
        "--ssf-train-complete",
        action="store_true",
        help="SSF: also learn a scale and shift set for "
        "samples with every modality (default: they keep the base model's predictions, as the SSF "
        "paper adapts for the missing combinations only)",
    )
    adapt.add_argument(
        "--allow-overlap",
        action="store_true",
        help="report test metrics on samples the base model "
        "was trained or validated on (refused by default), with a warning",
    )
    adapt.add_argument("-o", "--output", required=True, help="the adapter artifact to write (.st)")
    adapt.set_defaults(run=cmd_adapt)

    demo = commands.add_parser(
        "demo", parents=computing, help="the main job: blocks, merge, fuse and baselines on bundled PBC data"
    )
    demo.add_argument(
        "-o",
        "--output",
        dest="folder",
        default="legokit-demo",
        help="folder for data, splits, artifacts and results: new, empty, or one an earlier demo made there (its "
        "marker names the folder: a copy is refused), with no link below it (default %(default)s)",
    )
    demo.add_argument("--out", action=_Deprecated, dest="folder", new="--output")
    demo.add_argument(
        "--seeds", type=int, default=5, help="repeated random splits (default %(default)s, as in the paper)"
    )
    demo.set_defaults(run=cmd_demo)

    push_command = commands.add_parser(
        "push", parents=[common], help="upload an artifact and its model card to a Hugging Face Hub repository"
    )
    push_command.add_argument("artifact", type=InputPath, help="a .st artifact")
    push_command.add_argument("repo", help="the Hub repository, org/name (created if needed; HF_TOKEN must be set)")
    push_command.add_argument("--private", action="store_true", help="create the repository as private")
    push_command.set_defaults(run=cmd_push)

    pull_command = commands.add_parser(
        "pull", parents=[common], help="download an artifact from the Hub into the cache (works offline after)"
    )
    pull_command.add_argument(
        "repo", help="org/name, hf://org/name/file.st[@revision] or hf://org/name@revision/file.st"
    )
    pull_command.add_argument("-o", "--output", help="also copy it here")
    pull_command.set_defaults(run=cmd_pull)

    cache = commands.add_parser(
        "cache", parents=[common], help="list or clear the stored outputs of frozen pretrained encoders"
    )
    cache.add_argument("action", choices=("list", "clear"), help="list: what is stored, per encoder; clear: delete it")
    cache.add_argument("keys", nargs="*", help="with clear: only the encoders whose key starts so (default: all)")
    cache.set_defaults(run=cmd_cache)

    inspect = commands.add_parser("inspect", parents=[common], help="show what an artifact holds")
    inspect.add_argument("artifact", type=InputPath, help="a .st file, or hf://org/repo/file.st")
    inspect.set_defaults(run=cmd_inspect)
    return parser


def _paths(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, str]]]:
    """The files the command reads (its `InputPath` arguments, what a recipe names), and those it writes (flag, path):
    -o, --plot, --json, a recipe's output, wrap's default output."""
    read: list[str] = []
    for value in vars(args).values():
        read += (
            [str(v) for v in value if isinstance(v, InputPath)]
            if isinstance(value, list)
            else ([str(value)] if isinstance(value, InputPath) and value else [])
        )
    dry = getattr(args, "dry_run", False)  # `run --dry-run` writes no artifact
    written = [
        (flag, str(getattr(args, dest)))
        for flag, dest in (("-o", "output"), ("--plot", "plot"), ("--json", "json"))
        if getattr(args, dest, None) not in (None, "-") and not (dry and flag == "-o")
    ]
    if getattr(args, "recipe", None):
        recipe = Recipe.from_yaml(args.recipe)
        named = [recipe.local_path(block, download=False) for block in recipe.blocks]
        read += [str(p) for p in (*named, recipe.data) if p is not None]
        if not args.output and not dry:
            written.append(("the recipe's output", str(recipe.output)))
    if args.command == "wrap" and not args.output:
        written.append(("-o", str(default_output(args.path))))
    return read, written


def _finite(value: Any) -> Any:
    """JSON-ready values with NaN and infinities as null (an undefined metric): JSON has no NaN, and strict
    parsers refuse Python's bare `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _write_json(args: argparse.Namespace, result: Result, read: list[str], written: list[tuple[str, str]]) -> None:
    text = json.dumps(_finite(result), indent=2, default=str, allow_nan=False)
    if args.json == "-":
        print(text, flush=True)  # a closed pipe fails here, inside main's handlers, not at the interpreter's exit
    else:
        others = [path for flag, path in written if flag != "--json"]
        write_atomic(Path(args.json), (text + "\n").encode(), [*read, *others])


class _PlainFormatter(logging.Formatter):
    """Log lines for files and CI logs: one line each, `warning: ...` for warnings and above, no wrapping."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


def _configure_logging(args: argparse.Namespace) -> None:
    """The `legokit` logger prints on standard error at the level --quiet/--verbose set: through rich's handler on
    a terminal, as plain unwrapped lines otherwise."""
    console = Console(stderr=True)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that every `finally` (temporary files) runs."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _stdout_closed() -> int:
    """The reader of standard output went away (`--json - | head`): standard output is pointed at /dev/null so that
    the interpreter's last flush raises nothing, and the exit status is 1, as Python's documented recipe and rich
    (which prints the other output, `Console.on_broken_pipe`) give: one status however the output was cut."""
    with suppress(OSError, ValueError):  # captured output (no descriptor behind sys.stdout) has nothing to flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 1


def _failed(errors: Console, exc: Exception, verbose: bool) -> int:
    """A computation that failed outside legokit's checks (a model's forward raising, memory running out): one line,
    exit 1; -v adds the traceback."""
    log.debug("%s", "".join(traceback.format_exception(exc)).rstrip())  # -v: where it failed
    text = brief(exc, 300) if str(exc).strip() else ""
    what = "out of memory" if isinstance(exc, MemoryError) else type(exc).__name__
    shown = f"{what}: {text}" if text else what
    hint = "" if verbose else " (-v shows the traceback)"
    errors.print(f"[bold red]error:[/] {escape(shown)}{hint}", soft_wrap=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # unwinds like Ctrl-C, so half-written outputs are removed
    _configure_logging(args)
    for note in getattr(args, "deprecated", []):
        log.warning("%s", note)
    console = Console(quiet=args.quiet or args.json == "-")  # `--json -` keeps standard output for the JSON
    errors = Console(stderr=True)
    try:
        _refuse_clashes(args)
        read, written = _paths(args)  # once: a recipe is read here, not again for the JSON
        check_outputs(read, written, [args.folder] if args.command == "demo" else [])  # before any work
        if hasattr(args, "threads") and args.command not in LATENT_THREADS:  # inspect, merge, push, pull: no threads
            _use_threads(args, console)
        result = args.run(args, console)
        if args.json:
            _write_json(args, result, read, written)
        return 0
    except LegoError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    except BrokenPipeError:
        return _stdout_closed()
    except (RuntimeError, MemoryError, IndexError) as exc:  # torch's errors from a model's forward or an allocation
        return _failed(errors, exc, args.verbose)
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]")
        return 130
    except Terminated:
        errors.print("[bold red]terminated[/]")
        return 143


if __name__ == "__main__":
    sys.exit(main())
