"""How long the `legokit` command takes to start, against `python -c "import torch"` (the floor of any torch tool):
`legokit --version`, `--help` and `inspect` of a wrapped foreign block, each a fresh process, runs interleaved.
Also says which heavy modules each loaded: none of torch.export's serialization, torch._dynamo or transformers.

    python -m benchmarks.startup [--repeats 7] [--json out.json]

Goal (issue: pretrained encoders at practical speed): `legokit --version` within 1.5x of importing torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch._dynamo", "torch._export.serde.serialize", "torch.export.pt2_archive._package", "transformers")
PROBE = """
import contextlib, io, sys
from legokit.cli.commands import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def _block(folder: Path) -> Path:
    import torch
    from torch import nn

    import legokit

    torch.manual_seed(0)
    block = legokit.wrap_module(
        nn.Sequential(nn.Linear(13, 64), nn.GELU(), nn.Linear(64, 64)),
        "visits",
        "survival:4",
        (None, 13),
        latent=(32, 32),
        device="cpu",
    )
    return legokit.save_block(block, folder / "visits.st")


def _seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the medians and ratios as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        block = _block(Path(tmp))
        cli = [sys.executable, "-m", "legokit.cli"]
        commands = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "legokit --version": [*cli, "--version"],
            "legokit --help": [*cli, "--help"],
            "legokit inspect visits.st": [*cli, "inspect", str(block)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved, so that a busy spell on a shared machine hits every command
            for name, command in commands.items():
                times[name].append(_seconds(command))
        loaded = {
            name: subprocess.run(
                [sys.executable, "-c", PROBE.format(heavy=HEAVY), *command[3:]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for name, command in commands.items()
            if name.startswith("legokit")
        }
    floor = statistics.median(times["python -c 'import torch'"])
    print(f"{'command':30} {'median s':>9} {'x import torch':>15}  heavy modules loaded")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"median_s": median, "ratio": median / floor, "heavy_modules": loaded.get(name, "")}
        print(f"{name:30} {median:9.2f} {median / floor:15.2f}  {loaded.get(name, '') or '-'}")
    goal = rows["legokit --version"]["ratio"] <= 1.5
    print(f"goal legokit --version <= 1.5x import torch: {'met' if goal else 'missed'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
