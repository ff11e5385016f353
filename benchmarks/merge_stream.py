"""Benchmark: `legokit merge` of two blocks against a plain copy of the same bytes, and its peak memory.

Each block is an SNN block whose first layer is one large tensor, so "largest tensor" is well defined. Every
measurement runs in a fresh process: wall time of the merge (imports excluded; it also hashes every input byte to
check the inputs' checksums) beside copying both input files with shutil (with fsync, as the merge does), and peak
RSS (VmHWM) beside the interpreter's own (torch + legokit imported). Times are medians over --repeats runs.

    python -m benchmarks.merge_stream                 # 10 MB and 1 GB blocks
    python -m benchmarks.merge_stream --sizes 10 --json merge.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

CHILD = """
import json, os, resource, shutil, sys, time
mode, out, *paths = sys.argv[1:]
import torch, legokit
from legokit.artifacts.files import merge_files
start = time.perf_counter()
if mode == "merge":
    merge_files(paths, out)
elif mode == "copy":
    for i, p in enumerate(paths):
        target = f"{out}.{i}"
        shutil.copyfile(p, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
seconds = time.perf_counter() - start
# VmHWM belongs to this address space (exec starts a fresh one); ru_maxrss would carry the parent's peak over
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak = int(status["VmHWM"].split()[0]) * 1024 if "VmHWM" in status else own
print(json.dumps({"seconds": seconds, "peak_rss": peak}))
"""


def _child(mode: str, out: Path, paths: list[Path]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(out), *map(str, paths)], capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _make_block(path: Path, megabytes: float, seed: int) -> int:
    """An SNN block whose first weight is about `megabytes` (float32); returns that tensor's size in bytes."""
    import torch

    from legokit.artifacts.files import save_block
    from legokit.wrap import wrap_builtin

    width = int(math.sqrt(megabytes * 1e6 / 4))
    torch.manual_seed(seed)
    block = wrap_builtin(
        "snn", None, f"m{seed}", "survival:4", {"in_features": width, "hidden": width, "depth": 1}, device="cpu"
    )
    save_block(block, path)
    return width * width * 4


def measure(megabytes: float, repeats: int, folder: Path) -> dict[str, float]:
    paths = [folder / f"a{megabytes:g}.st", folder / f"b{megabytes:g}.st"]
    largest = max(_make_block(p, megabytes, seed) for seed, p in enumerate(paths))
    baseline = _child("none", folder / "unused", [])["peak_rss"]
    merges, copies = [], []
    for repeat in range(repeats):
        # alternate which goes first, so that neither always meets the other's writeback
        if repeat % 2:
            merges.append(_child("merge", folder / "merged.st", paths))
            copies.append(_child("copy", folder / "copy", paths))
        else:
            copies.append(_child("copy", folder / "copy", paths))
            merges.append(_child("merge", folder / "merged.st", paths))
        (folder / "merged.st").unlink()
        for extra in folder.glob("copy.*"):
            extra.unlink()
    merge_s = statistics.median(m["seconds"] for m in merges)
    copy_s = statistics.median(c["seconds"] for c in copies)
    peak = max(m["peak_rss"] for m in merges)
    return {
        "block_mb": megabytes,
        "input_bytes": sum(p.stat().st_size for p in paths),
        "largest_tensor_bytes": largest,
        "merge_seconds": merge_s,
        "copy_seconds": copy_s,
        "merge_over_copy": merge_s / copy_s,
        "interpreter_rss_bytes": baseline,
        "merge_peak_rss_bytes": peak,
        "rss_over_interpreter_plus_largest": peak / (baseline + largest),
        "rss_above_interpreter_over_largest": max(peak - baseline, 0) / largest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000", help="block sizes in MB, comma separated (default 10,1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median time is reported")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for size in (float(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args.repeats, Path(tmp)))
    table = Table(title="legokit merge (2 blocks, streamed) vs copying the same bytes")
    for column in (
        "block",
        "merge s",
        "copy s",
        "merge/copy",
        "largest tensor",
        "interp. RSS",
        "merge peak RSS",
        "(peak-interp)/largest",
    ):
        table.add_column(column, justify="right")
    mb = lambda b: f"{b / 1e6:,.1f} MB"  # noqa: E731
    for r in rows:
        table.add_row(
            f"{r['block_mb']:g} MB",
            f"{r['merge_seconds']:.3f}",
            f"{r['copy_seconds']:.3f}",
            f"{r['merge_over_copy']:.2f}x",
            mb(r["largest_tensor_bytes"]),
            mb(r["interpreter_rss_bytes"]),
            mb(r["merge_peak_rss_bytes"]),
            f"{r['rss_above_interpreter_over_largest']:.3f}",
        )
    Console(width=160).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
