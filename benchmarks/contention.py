"""Benchmark: wall time of `legokit demo --seeds 1` and of one `legokit train` run beside 0, 1 and 2 competing
CPU-bound processes (busy Python loops), with legokit's thread policy and with torch's default of one thread per
usable CPU (`--threads N`). Prints seconds and the ratio to the quiet run of the same policy; one run, interleaved.

    python -m benchmarks.contention [--competitors 0 1 2] [--json contention.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legokit.data.bundled import write_pbc
from legokit.threads import usable_cpus

SPEC = Path(__file__).resolve().parent.parent / "blocks" / "labs.yaml"


def _busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _wall(command: list[str]) -> float:
    """Seconds of one run of a legokit command in a fresh process, OMP_NUM_THREADS unset so the policy decides."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    cpus = usable_cpus()
    policies = {"legokit policy": [], f"torch default ({cpus} threads)": ["--threads", str(cpus)]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_pbc(data)
        jobs = {
            "demo --seeds 1": lambda extra: [
                "legokit",
                "demo",
                "--seeds",
                "1",
                "--out",
                str(Path(tmp) / "demo"),
                *extra,
            ],
            "train labs block": lambda extra: [
                "legokit",
                "train",
                str(data),
                "--spec",
                str(SPEC),
                "-o",
                str(Path(tmp) / f"labs-{time.monotonic_ns()}.st"),
                *extra,
            ],
        }
        for competitors in args.competitors:
            busy = _busy(competitors)
            try:
                time.sleep(1.0)  # let the competitors get going
                for job, command in jobs.items():
                    for policy, extra in policies.items():
                        rows.append(
                            {"job": job, "policy": policy, "competitors": competitors, "seconds": _wall(command(extra))}
                        )
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
    quiet = {(r["job"], r["policy"]): r["seconds"] for r in rows if r["competitors"] == 0}
    table = Table(title=f"Wall time beside competing CPU-bound processes ({cpus} usable CPUs)")
    for column in ("job", "policy", "competitors", "seconds", "x quiet"):
        table.add_column(column, justify="right")
    for r in rows:
        base = quiet.get((r["job"], r["policy"]))
        r["ratio"] = r["seconds"] / base if base else None
        table.add_row(
            r["job"],
            r["policy"],
            str(r["competitors"]),
            f"{r['seconds']:.1f}",
            f"{r['ratio']:.2f}x" if r["ratio"] else "—",
        )
    Console(width=140).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
