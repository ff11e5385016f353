"""The `legokit` command: parses arguments, calls the library, prints with rich. Errors are one line, exit 1."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from . import __version__
from .block import parse_input_shape, parse_latent
from .compose.recipe import Recipe
from .describe import describe
from .errors import ConfigError, LegoError
from .persist import load, merge_files, save_block
from .predict import predict_folder
from .spectral import FFT_AXES, PHASE_MODES
from .wrap import wrap_file


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-kwargs is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ConfigError("--arch-kwargs must be a JSON object, e.g. '{\"hidden\": 256}'")
    return value


def _parse_weights(text: str | None) -> list[float] | dict[str, float] | None:
    """`0.5,0.5` (one per block, in order) or `tab=0.5,img=0.5`."""
    if not text:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        if all("=" in item for item in items):
            return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in items)}
        return [float(item) for item in items]
    except ValueError:
        raise ConfigError(f"--weights must look like 0.5,0.5 or tab=0.5,img=0.5, got {text!r}") from None


def _shape_text(shape: str) -> str:
    return f"(batch, {shape.replace('x', ', ').replace('?', 'n')})"


def _block_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("modality", facts["modality"]),
        ("input shape", _shape_text(facts["input_shape"])),
        ("latent", f"{facts['latent']} (channels x dims)"),
        ("depth", str(facts["depth"])),
        ("fft axes", facts["fft_axes"]),
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
    rows += [(f"provenance.{k}", json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(facts["provenance"].items())]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)
    if "graph" in facts:
        console.print(_tree(facts["graph"]))


def cmd_wrap(args: argparse.Namespace, console: Console) -> int:
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
    )
    path = save_block(block, args.output, provenance={"wrapped_from": str(args.encoder)}, inputs=[args.encoder])
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
    _print_summary(console, describe(path))
    return 0


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    model = load(args.model)
    predictions = predict_folder(model, args.data, batch_size=args.batch_size, device=args.device, progress=True)
    path = predictions.write(args.output)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legokit", description="Wrap, inspect, merge and fuse LegoBlocks.")
    parser.add_argument("--version", action="version", version=f"legokit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    wrap = commands.add_parser("wrap", help="wrap an encoder file into a standalone block artifact (.st)")
    wrap.add_argument("encoder", help="a torch.export program (.pt2), a TorchScript archive, or a state dict")
    wrap.add_argument("--modality", required=True, help="name of the modality, e.g. tab, img, labs")
    wrap.add_argument("--input-shape", help="per-sample input shape where it cannot be inferred: 76, or ?x32 for bags")
    wrap.add_argument("--arch", help="built-in architecture of a state dict: snn, abmil or mlp")
    wrap.add_argument("--arch-kwargs", help="JSON keyword arguments of --arch, e.g. '{\"hidden\": 256}'")
    wrap.add_argument("--latent", default="64x64", help="latent shape, channels x dims (default 64x64)")
    wrap.add_argument("--depth", type=int, default=2, help="number of update steps S (default 2)")
    wrap.add_argument("--task", default="survival:4", help="survival:N | multiclass:K | binary | multilabel:K (default survival:4)")
    wrap.add_argument("--fft-axes", default="both", choices=FFT_AXES, help="FFT over latent channels only, or both axes")
    wrap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    wrap.add_argument("--trust-pickle", action="store_true", help="allow a fully pickled module (runs code from the file)")
    wrap.add_argument("-o", "--output", required=True, help="the block artifact to write (.st)")
    wrap.set_defaults(run=cmd_wrap)

    merge = commands.add_parser("merge", help="LegoMerge blocks (or a merged model and new blocks) with no training")
    merge.add_argument("artifacts", nargs="+", help="block or merged-model artifacts (.st), at least two blocks in all")
    merge.add_argument("--phase", default="paper", choices=PHASE_MODES, help="mean of phases: arithmetic (paper) or circular")
    merge.add_argument("--weights", help="one weight per block, 0.5,0.5, or by modality, tab=0.5,img=0.5 (default equal)")
    merge.add_argument("-o", "--output", required=True, help="the merged artifact to write (.st)")
    merge.set_defaults(run=cmd_merge)

    predict = commands.add_parser("predict", help="predict every sample of a dataset folder (any modalities present)")
    predict.add_argument("model", help="a block or merged artifact (.st)")
    predict.add_argument("data", help="dataset folder: NAME.csv (id + features) or NAME/ID.safetensors per modality")
    predict.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    predict.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    predict.add_argument("-o", "--output", required=True, help="CSV file to write: id, then the task's outputs")
    predict.set_defaults(run=cmd_predict)

    run = commands.add_parser("run", help="run a YAML recipe: recipe -> composition graph -> artifact")
    run.add_argument("recipe", help="a recipe file, e.g. recipes/merge.yaml")
    run.add_argument("--dry-run", action="store_true", help="validate and print the graph, write nothing")
    run.set_defaults(run=cmd_run)

    inspect = commands.add_parser("inspect", help="show what an artifact holds")
    inspect.add_argument("artifact", help="a .st file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console()
    errors = Console(stderr=True)
    try:
        return args.run(args, console)
    except LegoError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
