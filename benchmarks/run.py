"""Run every benchmark, each printing its table; JSON results go to --out.

    python -m benchmarks.run [--out benchmark-results] [--quick]

--quick skips the 1 GB merge and the 256x256 block rows. No benchmark asserts anything: they measure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import block_throughput, fft_axes, merge_stream, missing_modality, modality_scaling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmark-results", help="folder for the JSON files")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a first look")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    block_throughput.main(["--json", str(out / "block_throughput.json")] + (["--quick"] if args.quick else []))
    modality_scaling.main(["--json", str(out / "modality_scaling.json")])
    merge_stream.main(
        ["--json", str(out / "merge_stream.json")] + (["--sizes", "10", "--repeats", "3"] if args.quick else [])
    )
    fft_axes.main(["--json", str(out / "fft_axes.json")] + (["--seeds", "2"] if args.quick else []))
    missing_modality.main(["--json", str(out / "missing_modality.json")] + (["--seeds", "1"] if args.quick else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
