"""The hostile-input suite, measured: how many cases, how many ran code, escaped as tracebacks or modified an input,
and the slowest case and the peak memory.

    python -m benchmarks.hostile [--json out.json]

Runs the hostile suite (`tests/test_hostile*.py`: archives and headers, programs, sizes, tokenizers, files and
processes) in a fresh process with LEGOKIT_HOSTILE_REPORT set (every case appends its outcome), then summarises.
Peak memory is the child process's maximum resident set size: every case stays under it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the summary as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "outcomes.jsonl"
        env = {**os.environ, "LEGOKIT_HOSTILE_REPORT": str(report), "OMP_NUM_THREADS": "1"}
        extra = [Path("tests/test_cache_integrity.py"), Path("tests/test_shared_encoders.py")]
        files = sorted(str(p) for p in [*Path("tests").glob("test_hostile*.py"), *extra])
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
            env=env,
            capture_output=True,
            text=True,
        )
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()] if report.exists() else []
    families = collections.Counter(r["family"] for r in rows)
    summary = {
        "cases": len(rows),
        "families": dict(families),
        "ran_code": sum(r["ran_code"] for r in rows),
        "tracebacks": sum(r["traceback"] is not None for r in rows),
        "inputs_modified": sum(bool(r["modified"]) for r in rows),
        "slowest_case_s": round(max((r["seconds"] for r in rows), default=0.0), 3),
        "cases_over_5s": sum(r["seconds"] >= 5 for r in rows),
        # resident memory: a case that raised the process's peak above 1 GB, or by more than 256 MB
        "cases_over_1gb": sum(r.get("peak_mb", 0) > 1024 and r.get("peak_rise_mb", 0) > 0 for r in rows),
        "largest_peak_rise_mb": round(max((r.get("peak_rise_mb", 0.0) for r in rows), default=0.0)),
        "peak_rss_mb": round(peak_mb),
        "pytest_exit": done.returncode,
    }
    print(
        f"{summary['cases']} cases ({', '.join(f'{k} {v}' for k, v in families.items())}): "
        f"{summary['ran_code']} ran code, {summary['tracebacks']} tracebacks, {summary['inputs_modified']} modified "
        f"an input; slowest case {summary['slowest_case_s']} s ({summary['cases_over_5s']} over 5 s); "
        f"{summary['cases_over_1gb']} cases took the process's peak memory over 1 GB, the largest rise of the peak "
        f"in one case {summary['largest_peak_rise_mb']} MB; "
        f"peak memory of the whole run {summary['peak_rss_mb']} MB "
        f"(pytest exit {done.returncode})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
