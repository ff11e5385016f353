"""How long `legokit.load` takes for normal blocks: a demo-sized built-in block and a wrapped foreign encoder; and,
for the foreign one, a load followed by its first forward pass (where a program's cost is checked, once per shape).

    python -m benchmarks.load_time [--repeats 30] [--json out.json]

Prints the median milliseconds per load. Run it on two commits, alone on the machine, to compare them (the
Security section of the README quotes such a comparison).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import legokit
from legokit.wrap import wrap_builtin, wrap_module


def _blocks(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    builtin = wrap_builtin(
        "snn", None, "labs", "survival:4", {"in_features": 17, "hidden": 64}, latent=(32, 32), dim_head=32, device="cpu"
    )
    foreign = wrap_module(
        nn.Sequential(nn.Linear(13, 64), nn.GELU(), nn.Linear(64, 64)),
        "visits",
        "survival:4",
        (None, 13),
        latent=(32, 32),
        dim_head=32,
        device="cpu",
    )
    return {
        "built-in snn block": legokit.save_block(builtin, folder / "labs.st"),
        "wrapped foreign block": legokit.save_block(foreign, folder / "visits.st"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="also write the medians as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _blocks(Path(tmp)).items():
            legokit.load(path)  # warm the page cache and the imports
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                legokit.load(path)
                times.append(time.perf_counter() - started)
            results[name] = {"median_ms": 1000 * statistics.median(times), "size_bytes": path.stat().st_size}
            print(
                f"{name}: {results[name]['median_ms']:.1f} ms median of {args.repeats} ({path.stat().st_size:,} bytes)"
            )
        name, path = "wrapped foreign block, load + first forward", Path(tmp) / "visits.st"
        x, mask = torch.randn(32, 9, 13), torch.ones(32, 9, dtype=torch.bool)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.no_grad():
                legokit.load(path)(x, mask)
            times.append(time.perf_counter() - started)
        results[name] = {"median_ms": 1000 * statistics.median(times), "size_bytes": path.stat().st_size}
        print(f"{name}: {results[name]['median_ms']:.1f} ms median of {args.repeats}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
