"""The `legokit` command: parses arguments, calls the library, prints with rich. Errors are one line, exit 1."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from . import __version__
from .block import DEFAULT_HEAD_FEATURES, DEFAULT_UPDATE, parse_input_shape, parse_latent
from .compose.fuse import FUSE_MODES
from .compose.recipe import Recipe
from .artifact import refuse_inputs
from .describe import describe
from .errors import ConfigError, LegoError
from .persist import load, load_block, merge_files, save, save_block
from .predict import predict_folder
from .samples import summarized
from .spec import BlockSpec
from .spectral import FFT_AXES, HEAD_FEATURES, PHASE_MODES, UPDATE_PARTS
from .tasks import TaskSpec
from .threads import apply_threads, choose_threads
from .train import TrainConfig
from .wrap import WrapOptions, default_output, wrap_file


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-kwargs is not valid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(value, dict):
        raise ConfigError("--arch-kwargs must be a JSON object, e.g. '{\"hidden\": 256}'")
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


def _shape_text(shape: str) -> str:
    return f"(batch, {shape.replace('x', ', ').replace('?', 'n')})"


def _block_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("modality", facts["modality"]),
        ("input shape", _shape_text(facts["input_shape"])),
        ("latent", f"{facts['latent']} (channels x dims)"),
        ("depth", str(facts["depth"])),
        ("fft axes", facts["fft_axes"]),
        ("latent math", f"update {facts['update']}, head reads {facts['head_features']}, "
                        f"{'shared' if facts['shared_init'] else 'own'} initialisation"),
        ("task", facts["task"]),
        ("encoder", facts["encoder"]),
    ]


def _tree(label_and_children: Any, tree: Tree | None = None) -> Tree:
    label, children = label_and_children
    node = Tree(escape(label)) if tree is None else tree.add(escape(label))
    for child in children:
        _tree(child, node)
    return node


def _print_summary(console: Console, facts: dict[str, Any]) -> None:
    table = Table(title=escape(facts["path"]), show_header=False, title_justify="left")
    table.add_column("field", style="bold cyan")
    table.add_column("value", overflow="fold")
    rows = [("format", f"legokit artifact v{facts['format_version']} ({facts['kind']})")]
    if facts["kind"] == "block":
        rows += _block_rows(facts)
    elif facts["kind"] == "adapter":
        rows += [
            ("adapter", facts["adapter"] + (f", rank {facts['rank']}" if facts["rank"] else "")),
            ("modalities", ", ".join(facts["modalities"])),
            ("sites", f"{len(facts['placement'])}: " + ", ".join(facts["placement"][:4]) + (" ..." if len(facts["placement"]) > 4 else "")),
            ("adapter params", f"{facts['adapter_params']:,} (plus the head it trained)"),
            ("fits base", f"sha256 {facts['base_sha256']}"),
        ]
    else:
        rows += [
            ("modalities", ", ".join(facts["modalities"])),
            ("latent", f"{facts['latent']} (channels x dims)"),
            ("task", facts["task"]),
        ]
        if facts["kind"] == "merged":
            rows.append(("merge", f"phase {facts['phase']}, weights " + ", ".join(f"{m}={w:g}" for m, w in facts["weights"].items())))
        else:
            rows.append(("fuse", f"{facts['mode']}, order {' -> '.join(facts['order'])}"))
        for modality, block in facts["blocks"].items():
            rows.append((f"block {modality}", f"{block['encoder']}; input {_shape_text(block['input_shape'])}; "
                                              f"depth {block['depth']}; {block['params']:,} params"))
    rows += [
        ("params", f"{facts['params']:,}"),
        ("size", f"{facts['size_bytes']:,} bytes"),
        ("sha256", facts["sha256"]),
        ("written by", f"legokit {facts['legokit_version']}"),
    ]
    shown = summarized(facts["provenance"])
    rows += [(f"provenance.{k}", json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(shown.items())]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)
    if "graph" in facts:
        console.print(_tree(facts["graph"]))


def cmd_wrap(args: argparse.Namespace, console: Console) -> int:
    how = WrapOptions(input_dtype=args.input_dtype, mask=args.mask, output=WrapOptions.parse_output(args.output_key),
                      layout=args.layout, train_mode=args.train_mode)
    output = Path(args.output) if args.output else default_output(args.encoder)
    source = Path(args.encoder)
    inputs = [source, *(p for p in source.rglob("*") if p.is_file())] if source.is_dir() else [source]
    refuse_inputs(output, inputs)  # before the export: a folder's weights or tokenizer are inputs too
    block = wrap_file(
        args.encoder,
        modality=args.modality,
        task=args.task,
        input_shape=parse_input_shape(args.input_shape) if args.input_shape else None,
        arch=args.arch,
        arch_kwargs=_json_object(args.arch_kwargs) if args.arch_kwargs else None,
        trust_pickle=args.trust_pickle,
        latent=parse_latent(args.latent),
        depth=args.depth,
        fft_axes=args.fft_axes,
        device=args.device,
        how=how,
        update=args.update,
        head_features=args.head_features,
    )
    contract = block.provenance.get("encoder_contract")
    if contract:
        console.print(f"encoder: {escape(contract)}; exported in {'train' if args.train_mode else 'eval'} mode")
    path = save_block(block, output, provenance={"wrapped_from": str(args.encoder)}, inputs=inputs)
    console.print(f"[green]wrote[/] {escape(str(path))}")
    _print_summary(console, describe(path))
    return 0


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    facts = describe(args.artifact)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        _print_summary(console, facts)
    return 0


def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    path = merge_files(args.artifacts, args.output, _parse_weights(args.weights), args.phase)
    console.print(f"[green]merged[/] {len(args.artifacts)} artifacts into {escape(str(path))}")
    _print_summary(console, describe(path, verify=False))  # the merge verified every byte it copied
    return 0


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    refuse_inputs(args.output, [args.model, args.data])
    model = load(args.model)
    predictions = predict_folder(model, args.data, batch_size=args.batch_size, device=args.device, progress=True)
    path = predictions.write(args.output, inputs=[args.model, args.data, *predictions.sources])
    console.print(f"[green]wrote[/] {len(predictions.ids)} predictions ({', '.join(predictions.columns)}) to {escape(str(path))}")
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    recipe = Recipe.from_yaml(args.recipe)
    graph = recipe.check(download=False)
    console.print(f"recipe [bold]{escape(recipe.name)}[/] ({escape(str(recipe.path))}): {recipe.operation.kind} "
                  f"of {', '.join(b.modality for b in recipe.blocks)} -> {escape(str(recipe.output))}")
    console.print(_tree(graph.tree()))
    for block in recipe.uncached():
        console.print(f"[yellow]not cached yet:[/] {escape(block.artifact)} (a run downloads it)")
    if args.dry_run:
        console.print("[green]valid[/] (dry run: nothing written)")
        return 0
    path = recipe.run()
    console.print(f"[green]wrote[/] {escape(str(path))}")
    return 0


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def _train_wrapped(args: argparse.Namespace, console: Console) -> int:
    """`legokit train DATA --block wrapped.st`: train a wrapped block's latent, updates and head."""
    building = [flag for flag, value in (("--spec", args.spec), ("--encoder", args.encoder), ("--task", args.task),
                                         ("--encoder-kwargs", args.encoder_kwargs), ("--latent", args.latent),
                                         ("--depth", args.depth)) if value]
    if building:
        raise ConfigError(f"--block trains the block as it was wrapped; {', '.join(building)} would build another "
                          "(set them when wrapping)")
    refuse_inputs(args.output, [args.block, args.data])
    block = load_block(args.block)
    _use_threads(args, console, block.config.latent)
    if args.modality and args.modality != block.modality:
        raise ConfigError(f"--modality {args.modality}: the block {args.block} is for modality {block.modality}")
    given = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   device=args.device, patience=args.patience,
                                   weight_decay=args.weight_decay).items() if v is not None}
    config = TrainConfig(**given, freeze_encoders=not args.finetune_encoder, compile=args.compile)
    from .distributed import session
    from .workflows import train_wrapped_block

    with session(config.device) as place:
        block, result = train_wrapped_block(args.data, block, config, standardize=args.standardize)
        if not place.main:
            return 0
        path = save_block(block, args.output, inputs=[args.block, args.data])
    encoder = "fine-tuned" if args.finetune_encoder else "frozen"
    console.print(f"[green]trained[/] {escape(block.modality)} block (encoder {encoder}): best epoch {result.best_epoch}, "
                  f"val {_metrics_text(result.val)}, test {_metrics_text(result.test)} ({result.seconds:.1f} s)")
    console.print(f"[green]wrote[/] {escape(str(path))}")
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    if args.block:
        return _train_wrapped(args, console)
    if args.finetune_encoder or args.standardize:
        raise ConfigError("--finetune-encoder and --standardize are for --block (a built-in block always trains its "
                          "encoder and standardises its inputs)")
    refuse_inputs(args.output, [args.spec, args.data])
    if args.spec:
        spec = BlockSpec.from_yaml(args.spec)
    elif args.modality:
        spec = BlockSpec(args.modality)
    else:
        raise ConfigError("train needs --modality (or a --spec that names one)")
    spec = spec.override(
        modality=args.modality, encoder=args.encoder, task=TaskSpec.parse(args.task) if args.task else None,
        encoder_kwargs=_json_object(args.encoder_kwargs) if args.encoder_kwargs else None,
        latent=parse_latent(args.latent) if args.latent else None, depth=args.depth, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, patience=args.patience,
        weight_decay=args.weight_decay, compile=args.compile or None,
    )
    _use_threads(args, console, spec.latent)
    from .distributed import session
    from .workflows import train_block

    with session(spec.training.device) as place:
        block, result = train_block(args.data, spec)
        if not place.main:  # under torchrun, rank 0 reports and writes
            return 0
        path = save_block(block, args.output, inputs=[args.spec, args.data])
    console.print(f"[green]trained[/] {escape(spec.modality)} block: best epoch {result.best_epoch}, "
                  f"val {_metrics_text(result.val)}, test {_metrics_text(result.test)} ({result.seconds:.1f} s)")
    console.print(f"[green]wrote[/] {escape(str(path))}")
    return 0


def cmd_fuse(args: argparse.Namespace, console: Console) -> int:
    from .distributed import session
    from .workflows import fuse_blocks

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, freeze_encoders=args.freeze_encoders, compile=args.compile)
    refuse_inputs(args.output, [*args.blocks, args.data])
    blocks = [load_block(path) for path in args.blocks]
    _use_threads(args, console, blocks[0].config.latent)
    with session(args.device) as place:
        model, result = fuse_blocks(blocks, args.data, args.mode, config)
        if not place.main:  # under torchrun, rank 0 reports and writes
            return 0
        path = save(model, args.output, provenance={"fused_from": list(args.blocks)}, inputs=[*args.blocks, args.data])
    for warning in model.provenance.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}: its training samples may be in this test split")
    console.print(f"[green]fused[/] {' -> '.join(model.modalities)} ({args.mode}, {args.epochs} epochs): "
                  f"val {_metrics_text(result.val)}, test {_metrics_text(result.test)}")
    console.print(f"[green]wrote[/] {escape(str(path))}")
    return 0


def cmd_adapt(args: argparse.Namespace, console: Console) -> int:
    from .adapters.files import head_of, save_adapter
    from .workflows import adapt

    refuse_inputs(args.output, [args.model, args.data])
    base = load(args.model)
    config = TrainConfig(epochs=args.epochs, patience=args.patience, lr=args.lr, seed=args.seed, device=args.device)
    adapted, result, counts = adapt(base, args.data, args.adapter, args.rank, args.at, args.missing, args.test_missing,
                                    config, allow_overlap=args.allow_overlap, missing_rate=args.missing_rate,
                                    missing_split=args.missing_split, test_missing_rate=args.test_missing_rate,
                                    train_head=args.train_head)
    for warning in counts.pop("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    adapter = adapted.adapters[-1]
    head = "and the head" if any(p.requires_grad for p in head_of(adapted).parameters()) else "(head frozen)"
    console.print(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f}% of the "
                  f"model): the {args.adapter} adapter at {len(adapter.placement)} site(s) {head}; one modality set "
                  f"{counts['percent_one_set']:.2f}%, all {counts['sets']} sets {counts['percent_all_sets']:.2f}%, "
                  f"{counts['overhead_vs_adapted_layers']:.1%} of the layers it adapts")
    protocol = args.missing or f"eta {args.missing_rate:g}, split {args.missing_split:g}"
    console.print(f"best epoch {result.best_epoch}: val {_metrics_text(result.val)}, test {_metrics_text(result.test)} "
                  f"(missing: {escape(protocol)})")
    record = {"adapted": {"data": args.data, "missing": protocol, "best_epoch": result.best_epoch,
                          "val": result.val, "test": result.test, "trainable": counts, "samples": result.samples}}
    path = save_adapter(adapted, adapter, args.output, base.source_sha256, record, inputs=[args.model, args.data])
    console.print(f"[green]wrote[/] {escape(str(path))} (fits base sha256 {base.source_sha256[:12]})")
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from .workflows import evaluate_missing, evaluate_model

    if args.json:
        refuse_inputs(args.json, [args.model, args.data, *(args.adapter or [])])
    model = load(args.model, device=args.device)
    if args.adapter or args.missing or args.missing_rate is not None:
        from .adapters.files import attach_file

        for path in args.adapter or []:
            model = attach_file(model, path)
        metrics = evaluate_missing(model, args.data, args.missing, args.split, args.seed, args.allow_overlap,
                                   args.missing_rate, args.missing_split)
    else:
        metrics = evaluate_model(model, args.data, args.split, args.seed, allow_overlap=args.allow_overlap)
    for warning in metrics.pop("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    protocol = {k: v for k, v in metrics.items() if k.startswith("missing")}
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in protocol.items())
    console.print(f"{escape(args.model)} on {escape(args.data)}: {metrics['split']} split, {metrics['samples']} samples "
                  f"(split from {escape(metrics['split_source'])})" + (f"; {escape(shown)}" if shown else ""))
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float) and name not in protocol:
            table.add_row(name, f"{value:.4f}")
    console.print(table)
    if args.json:
        from .artifact import write_atomic

        write_atomic(Path(args.json), json.dumps(metrics, indent=2).encode(), [args.model, args.data, *(args.adapter or [])])
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import MODELS, default_spec, run_demo

    console.print(f"legokit demo: Mayo PBC, 1-year landmark, {args.seeds} random 70/15/15 splits -> {escape(args.out)}/")
    _use_threads(args, console, default_spec("labs").latent)
    result = run_demo(args.out, args.seeds, console=console)
    summary = result.to_json()
    table = Table(title=f"c-index on the test split, mean ± s.d. over {args.seeds} seeds "
                        f"({summary['data']['patients']} patients, {summary['data']['with_visits']} with visits)",
                  title_justify="left")
    table.add_column("model")
    table.add_column("all test patients", justify="right")
    table.add_column("test patients with visits", justify="right")
    for name in MODELS:
        row = summary["models"][name]
        everyone = row["all_test"]
        table.add_row(name, f"{everyone['mean']:.3f} ± {everyone['sd']:.3f}" if everyone else "—",
                      f"{row['test_with_visits']['mean']:.3f} ± {row['test_with_visits']['sd']:.3f}")
    console.print(table)
    console.print(f"{result.seconds:.0f} s; table in {escape(args.out)}/results.json, artifacts in {escape(args.out)}/")
    return 0


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    from .hub import push

    url = push(args.artifact, args.repo, private=args.private)
    console.print(f"[green]pushed[/] {escape(args.artifact)} with its model card to {escape(args.repo)}: {escape(url)}")
    return 0


def cmd_pull(args: argparse.Namespace, console: Console) -> int:
    from .hub import pull

    path = pull(args.repo, args.output)
    console.print(f"[green]pulled[/] {escape(args.repo)} -> {escape(str(path))}")
    return 0


def _use_threads(args: argparse.Namespace, console: Console, latent: tuple[int, int] | None = None) -> None:
    """Set torch's CPU threads for this command (`legokit.threads`); say so when the work size decided it."""
    choice = choose_threads(getattr(args, "threads", None), latent[0] * latent[1] if latent else None)
    apply_threads(choice)
    if latent is not None:
        console.print(f"[dim]CPU threads: {choice.threads} ({escape(choice.reason)})[/]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legokit", description="Wrap, inspect, merge and fuse LegoBlocks.")
    parser.add_argument("--version", action="version", version=f"legokit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument("--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS if set, else 1 "
                         "for latents up to 32x32, else the usable CPUs the load average leaves idle)")

    wrap = commands.add_parser("wrap", parents=[compute], help="wrap an encoder file into a standalone block artifact (.st)")
    wrap.add_argument("encoder", help="a torch.export program (.pt2), a TorchScript archive, a state dict, or a "
                                      "Hugging Face model folder (config.json + safetensors [+ tokenizer.json])")
    wrap.add_argument("--modality", required=True, help="name of the modality, e.g. tab, img, labs")
    wrap.add_argument("--input-shape", help="per-sample input shape where it cannot be inferred: 76, or ?x32 for bags")
    wrap.add_argument("--arch", help="built-in architecture of a state dict: snn, abmil or mlp")
    wrap.add_argument("--arch-kwargs", help="JSON keyword arguments of --arch, e.g. '{\"hidden\": 256}'")
    wrap.add_argument("--latent", default="64x64", help="latent shape, channels x dims (default 64x64)")
    wrap.add_argument("--depth", type=int, default=2, help="number of update steps S (default 2)")
    wrap.add_argument("--task", default="survival:4", help="survival:N | multiclass:K | binary | multilabel:K (default survival:4)")
    wrap.add_argument("--fft-axes", default="both", choices=FFT_AXES, help="FFT over latent channels only, or both axes")
    wrap.add_argument("--update", default=DEFAULT_UPDATE, choices=UPDATE_PARTS,
                      help="what each step updates: Re(FFT(L)) as the paper, or Re and Im (default %(default)s)")
    wrap.add_argument("--head-features", default=DEFAULT_HEAD_FEATURES, choices=HEAD_FEATURES,
                      help="what the head reads: Re channel means, Re and Im, or magnitude and phase (default %(default)s)")
    wrap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    wrap.add_argument("--trust-pickle", action="store_true", help="trust the file: allow a pickled module or a "
                      "TorchScript archive (loading either runs code from the file)")
    wrap.add_argument("--input-dtype", choices=("float32", "int64"), help="int64 for token ids (default: float32, "
                      "or int64 when the encoder fails on floats)")
    wrap.add_argument("--mask", default="auto", help="keyword that takes the padding mask: auto (read off forward), "
                      "none (run unpadded groups), src_key_padding_mask, key_padding_mask, attention_mask or mask")
    wrap.add_argument("--output-key", metavar="KEY", help="which output to read from a tuple, dict "
                      "or ModelOutput: a key (last_hidden_state) or an index (default: the first tensor)")
    wrap.add_argument("--layout", choices=("tokens", "channels", "map"), help="output layout: (b, n, e) tokens, "
                      "(b, c, t) conv maps or (b, c, h, w) feature maps (default: read off the output)")
    wrap.add_argument("--train-mode", action="store_true", help="export in train mode (batch statistics and "
                      "dropout are frozen into the program); default eval mode")
    wrap.add_argument("-o", "--output", help="the block artifact to write "
                      "(default: <encoder stem>.st next to the encoder)")
    wrap.set_defaults(run=cmd_wrap)

    merge = commands.add_parser("merge", help="LegoMerge blocks (or a merged model and new blocks) with no training")
    merge.add_argument("artifacts", nargs="+", help="block or merged-model artifacts (.st), at least two blocks in all")
    merge.add_argument("--phase", default="paper", choices=PHASE_MODES, help="mean of phases: arithmetic (paper) or circular")
    merge.add_argument("--weights", help="one weight per block, 0.5,0.5, by modality, tab=0.5,img=0.5, or auto: each block's validation metric "
                            "above chance, as recorded when it was trained (default equal)")
    merge.add_argument("-o", "--output", required=True, help="the merged artifact to write (.st)")
    merge.set_defaults(run=cmd_merge)

    predict = commands.add_parser("predict", parents=[compute], help="predict every sample of a dataset folder (any modalities present)")
    predict.add_argument("model", help="a block or merged artifact (.st)")
    predict.add_argument("data", help="dataset folder: NAME.csv (id + features) or NAME/ID.safetensors per modality")
    predict.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    predict.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    predict.add_argument("-o", "--output", required=True, help="CSV file to write: id, then the task's outputs")
    predict.set_defaults(run=cmd_predict)

    run = commands.add_parser("run", parents=[compute], help="run a YAML recipe: recipe -> composition graph -> artifact")
    run.add_argument("recipe", help="a recipe file, e.g. recipes/merge.yaml")
    run.add_argument("--dry-run", action="store_true", help="validate and print the graph, write nothing")
    run.set_defaults(run=cmd_run)

    train = commands.add_parser("train", parents=[compute], help="train a block on one modality of a dataset folder")
    train.add_argument("data", help="dataset folder (labels.csv, NAME.csv or NAME/, optional splits.csv)")
    train.add_argument("--block", help="a wrapped block (.st) to train: its latent, updates and head (encoder frozen)")
    train.add_argument("--finetune-encoder", action="store_true", help="with --block: train the encoder too")
    train.add_argument("--standardize", action="store_true", help="with --block: standardise inputs with the "
                       "training split's mean and s.d. (default: the encoder sees the data as stored)")
    train.add_argument("--spec", help="a block spec, e.g. blocks/labs.yaml; the flags below override it")
    train.add_argument("--modality", help="the modality to train on (NAME.csv or NAME/ in the folder)")
    train.add_argument("--encoder", help="built-in encoder: snn, abmil, mlp or tokens (default snn)")
    train.add_argument("--encoder-kwargs", help="JSON keyword arguments of the encoder")
    train.add_argument("--task", help="survival:N | multiclass:K | binary | multilabel:K (default survival:4)")
    train.add_argument("--latent", help="latent shape, channels x dims (default 64x64)")
    train.add_argument("--depth", type=int, help="update steps (default 2)")
    train.add_argument("--epochs", type=int, help=f"most epochs (early stopping on validation; default {TrainConfig.epochs})")
    train.add_argument("--patience", type=int, help=f"epochs without validation gain before stopping (default {TrainConfig.patience})")
    train.add_argument("--batch-size", type=int, help=f"samples per step (default {TrainConfig.batch_size})")
    train.add_argument("--lr", type=float, help=f"AdamW learning rate (default {TrainConfig.lr:g})")
    train.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {TrainConfig.weight_decay:g})")
    train.add_argument("--seed", type=int, help="seed of the weights, the shuffling and the random split")
    train.add_argument("--device", help="auto (CUDA if present), cpu, cuda or cuda:N")
    train.add_argument("--compile", action="store_true", help="run the training steps through torch.compile")
    train.add_argument("-o", "--output", required=True, help="the block artifact to write (.st)")
    train.set_defaults(run=cmd_train)

    fuse = commands.add_parser("fuse", parents=[compute], help="LegoFuse blocks (stack or weave) and fine-tune them on paired data")
    fuse.add_argument("blocks", nargs="+", help="block artifacts, in the order their updates run")
    fuse.add_argument("--mode", default="stack", choices=FUSE_MODES, help="stack: block after block; weave: layer after layer")
    fuse.add_argument("--data", required=True, help="dataset folder with the blocks' modalities and labels")
    fuse.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2, the paper's setting)")
    fuse.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    fuse.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    fuse.add_argument("--seed", type=int, default=0, help="seed (and random split when there is no splits.csv)")
    fuse.add_argument("--freeze-encoders", action="store_true", help="train the update layers and head only")
    fuse.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    fuse.add_argument("--compile", action="store_true", help="run the training steps through torch.compile")
    fuse.add_argument("-o", "--output", required=True, help="the fused artifact to write (.st)")
    fuse.set_defaults(run=cmd_fuse)

    evaluate = commands.add_parser("eval", parents=[compute], help="metrics of a model on a split of a labelled dataset folder")
    evaluate.add_argument("model", help="a block, merged or fused artifact (.st)")
    evaluate.add_argument("data", help="labelled dataset folder")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"), help="default test")
    evaluate.add_argument("--seed", type=int, help="seed of the random split (default: the one the model, or all its "
                          "blocks, was trained with)")
    evaluate.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--adapter", action="append", help="attach this adapter artifact first (repeatable)")
    evaluate.add_argument("--missing-rate", type=float, help="MoRA's protocol: share eta of the complete samples "
                          "that miss one modality (dummies: the training means)")
    evaluate.add_argument("--missing-split", type=float, default=0.5, help="the first modality's share of the "
                          "missing ones (default 0.5)")
    evaluate.add_argument("--missing", help="instead, independent per-modality rates, e.g. tab=0.3,seq=1.0")
    evaluate.add_argument("--allow-overlap", action="store_true", help="score samples a block was trained or "
                          "validated on (refused by default), with a warning")
    evaluate.set_defaults(run=cmd_eval)

    adapt = commands.add_parser("adapt", parents=[compute], help="train a missing-modality adapter (MoRA or SSF) for a model")
    adapt.add_argument("model", help="the base artifact (.st): a merged or fused model (a block: --missing-rate 0)")
    adapt.add_argument("--adapter", required=True, choices=("mora", "ssf"), help="modality-aware LoRA, or scale and shift")
    adapt.add_argument("--data", required=True, help="labelled dataset folder")
    adapt.add_argument("--rank", type=int, default=4, help="MoRA rank (default 4, the paper's)")
    adapt.add_argument("--at", help="tokens (MoRA default: each block's first key/value projection), first, all (SSF "
                       "default), or module names, comma-separated")
    adapt.add_argument("--missing-rate", type=float, default=0.7, help="MoRA's protocol: share eta of the complete "
                       "samples that miss one modality, in training and validation (default 0.7)")
    adapt.add_argument("--missing-split", type=float, default=0.5, help="the first modality's share of the missing "
                       "ones, in the model's modality order (alphabetical for a merged model; default 0.5; equal "
                       "shares for more than two modalities)")
    adapt.add_argument("--test-missing-rate", type=float, help="eta for the reported test metrics (default: --missing-rate)")
    adapt.add_argument("--missing", help="instead, independent per-modality rates for training, e.g. tab=0.7")
    adapt.add_argument("--test-missing", help="independent per-modality rates for the test metrics")
    adapt.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=None,
                       help="train the task head too (default: yes for MoRA, no for SSF, as its paper does)")
    adapt.add_argument("--epochs", type=int, default=20, help="most epochs (default 20)")
    adapt.add_argument("--patience", type=int, default=5, help="early-stopping patience (default 5)")
    adapt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    adapt.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the missing draws")
    adapt.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    adapt.add_argument("--allow-overlap", action="store_true", help="report test metrics on samples the base model "
                       "was trained or validated on (refused by default), with a warning")
    adapt.add_argument("-o", "--output", required=True, help="the adapter artifact to write (.st)")
    adapt.set_defaults(run=cmd_adapt)

    demo = commands.add_parser("demo", parents=[compute], help="the main job: blocks, merge, fuse and baselines on bundled PBC data")
    demo.add_argument("--out", default="legokit-demo", help="folder for data, artifacts and results (default legokit-demo)")
    demo.add_argument("--seeds", type=int, default=5, help="repeated random splits (default 5, as in the paper)")
    demo.set_defaults(run=cmd_demo)

    push = commands.add_parser("push", help="upload an artifact and its model card to a Hugging Face Hub repository")
    push.add_argument("artifact", help="a .st artifact")
    push.add_argument("repo", help="the Hub repository, org/name (created if needed; HF_TOKEN must be set)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.set_defaults(run=cmd_push)

    pull = commands.add_parser("pull", help="download an artifact from the Hub into the cache (works offline after)")
    pull.add_argument("repo", help="org/name, or hf://org/name/file.st[@revision]")
    pull.add_argument("-o", "--output", help="also copy it here")
    pull.set_defaults(run=cmd_pull)

    inspect = commands.add_parser("inspect", help="show what an artifact holds")
    inspect.add_argument("artifact", help="a .st file, or hf://org/repo/file.st")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=cmd_inspect)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that every `finally` (temporary files) runs."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # unwinds like Ctrl-C, so half-written outputs are removed
    console = Console()
    errors = Console(stderr=True)
    try:
        if hasattr(args, "threads"):  # the commands that compute; inspect, merge, push and pull do not
            _use_threads(args, console)
        return args.run(args, console)
    except LegoError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]")
        return 130
    except Terminated:
        errors.print("[bold red]terminated[/]")
        return 143


if __name__ == "__main__":
    sys.exit(main())
