"""What one unit of each operator family's work costs on this CPU, in float32 matrix-product FLOPs: the weights of
legokit's operator table (`legokit/encoders/ops.py`), whose counts are compared with one cap in those units.

    OMP_NUM_THREADS=1 python -m benchmarks.op_costs

Prints, per family, the measured cost per unit (an element, a comparison, a window read, a FLOP, a pair x feature)
beside the weight the table uses. Best of three runs each; run it alone on the machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from legokit.encoders import ops


def _best(work: Callable[[], object], repeats: int = 3) -> float:
    work()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    torch.manual_seed(0)
    a = torch.randn(1024, 1024)
    unit = _best(lambda: a @ a) / (2 * 1024**3)  # seconds per float32 product FLOP
    print(f"float32 mm: {1 / unit / 1e9:.1f} GFLOP/s (the unit)")
    x = torch.randn(8 << 20)
    rows = x.view(1024, -1)
    img = torch.randn(1, 64, 256, 256)
    points = torch.randn(1, 1000, 256)
    cases: list[tuple[str, Callable[[], object], float, int]] = [
        ("add (per element)", lambda: x + x, x.numel(), ops.ELEMENT),
        ("exp (per element)", lambda: x.exp(), x.numel(), ops.TRANSCENDENTAL_ELEMENT),
        ("sin (per element)", lambda: x.sin(), x.numel(), ops.TRANSCENDENTAL_ELEMENT),
        ("sum (per element)", lambda: rows.sum(-1), x.numel(), ops.SUM),
        ("logsumexp (per element)", lambda: rows.logsumexp(-1), x.numel(), ops.SMOOTH_SUM),
        ("cumsum (per element)", lambda: rows.cumsum(-1), x.numel(), ops.SCAN),
        ("sort (per element x log2 n)", lambda: rows.sort(-1), x.numel() * 13, ops.SORT_WEIGHT),
        ("avg_pool2d 16x16 (per window read)", lambda: F.avg_pool2d(img, 16, stride=1), 241**2 * 64 * 256, ops.WINDOW),
        ("max_pool2d 16x16 (per window read)", lambda: F.max_pool2d(img, 16, stride=1), 241**2 * 64 * 256, ops.WINDOW),
    ]
    dense, depthwise = torch.randn(64, 64, 3, 3), torch.randn(64, 1, 15, 15)
    doubles, double_weight = img[:, :16].double(), torch.randn(16, 16, 3, 3, dtype=torch.float64)
    cases += [
        ("conv2d float32 (per FLOP)", lambda: F.conv2d(img, dense), 2 * 254**2 * 64 * 64 * 9, 2),
        ("depthwise conv2d 15x15 (per FLOP)", lambda: F.conv2d(img, depthwise, groups=64), 2 * 242**2 * 64 * 225, 64),
        ("conv2d float64 (per FLOP)", lambda: F.conv2d(doubles, double_weight), 2 * 254**2 * 16 * 16 * 9, 64),
    ]
    for p in (1.0, 2.0, 3.7):
        weight = ops.DISTANCE_WEIGHT.get(p, ops.DISTANCE_WEIGHT[-1.0])
        cases.append(
            (f"cdist p={p:g} (per pair x feature)", lambda p=p: torch.cdist(points, points, p=p), 1e6 * 256, weight)
        )
    prime = torch.randn(8, 100_003)
    cases.append(
        ("fft, prime length (per n log2 n)", lambda: torch.fft.fft(prime), 8 * 100_003 * 17, ops.FOURIER_WEIGHT)
    )
    print(f"{'operator':40s} {'measured':>9s} {'weight':>7s}")
    for name, work, units, weight in cases:
        measured = _best(work) / units / unit
        print(f"{name:40s} {measured:9.1f} {weight:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
