"""The `legokit` command: parses arguments, calls the library, prints with rich. Errors are one line, exit 1."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .block import parse_input_shape, parse_latent
from .describe import describe
from .errors import ConfigError, LegoError
from .persist import save_block
from .spectral import FFT_AXES
from .wrap import wrap_file


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-kwargs is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ConfigError("--arch-kwargs must be a JSON object, e.g. '{\"hidden\": 256}'")
    return value


def _print_summary(console: Console, facts: dict[str, Any]) -> None:
    table = Table(title=escape(facts["path"]), show_header=False, title_justify="left")
    table.add_column("field", style="bold cyan")
    table.add_column("value", overflow="fold")
    rows = [
        ("format", f"legokit artifact v{facts['format_version']} ({facts['kind']})"),
        ("modality", facts["modality"]),
        ("input shape", f"(batch, {facts['input_shape'].replace('x', ', ').replace('?', 'n')})"),
        ("latent", f"{facts['latent']} (channels x dims)"),
        ("depth", str(facts["depth"])),
        ("fft axes", facts["fft_axes"]),
        ("task", facts["task"]),
        ("encoder", facts["encoder"]),
        ("params", f"{facts['params']:,}"),
        ("size", f"{facts['size_bytes']:,} bytes"),
        ("sha256", facts["sha256"]),
        ("written by", f"legokit {facts['legokit_version']}"),
    ]
    rows += [(f"provenance.{k}", json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(facts["provenance"].items())]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)


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
