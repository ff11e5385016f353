"""Whole-slide bags at a pathology cohort's scale, through the CLI: an abmil block trained and predicting on synthetic
slides shaped like a foundation model's patch features, measured against the two physical limits.

    python -m benchmarks.slides [--slides 1000] [--median 8000] [--width 1024] [--device cpu|cuda] [--ranks 2]
                                [--json out.json]

Builds `wsi/ID.safetensors` slides (float16 features, log-normal patch counts: median `--median`, the longest at
least 5 x the median, about 16 GB at the defaults) with weakly informative survival labels, then measures, each in a
fresh process, wall time, peak resident memory and patches/s of:
  (a) a read-only pass over the epoch's slides, each file read whole (the I/O limit; the epoch's training steps
      read only the patches they drew, its validation every patch);
  (b) a compute-only pass: the block's training steps on in-memory batches of the same shapes (the compute limit);
  (c) one training epoch (`legokit train --epochs 1`, which also streams the normalisation pass and validates) and
      one predict pass (`legokit predict`, every patch of every slide).
It prints the epoch's ratio to max(a, b) and each peak memory; `--also 250` repeats (c) on 250 of the slides (the
first 249 and the longest) to show that memory does not grow with the cohort; `--ranks 2` also runs the epoch's
command under torchrun on CPU and prints how many slides and bytes each process read. With `--device cuda` the
block runs on the GPU (pinned memory, non-blocking copies, bf16 autocast); the readers stay on CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ENCODER = ["--encoder", "abmil", "--encoder-kwargs", '{"hidden": 128, "attention": 64}', "--latent", "16x32"]


def write_cohort(folder: Path, slides: int, median: int, width: int, seed: int = 0) -> tuple[int, int]:
    """The synthetic cohort; returns (patches, bytes on disk). The label depends weakly on feature 0's mean."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.exp(math.log(median) + 0.35 * torch.randn(slides, generator=generator)).round().long().clamp(64)
    counts[int(counts.argmax())] = max(int(counts.max()), 5 * median)
    (folder / "wsi").mkdir(parents=True)
    rows, total = [], 0
    for number, count in enumerate(counts.tolist()):
        shift = float(torch.randn(1, generator=generator)) * 0.3
        x = torch.randn(count, width, generator=generator)
        x[:, 0] += shift
        save_file({"x": x.half()}, str(folder / "wsi" / f"s{number:05d}.safetensors"))
        total += count
        scale = math.exp(-2.0 * shift)
        time_ = 365.0 * scale * float(torch.empty(1).exponential_(1.0, generator=generator)) + 1.0
        rows.append([f"s{number:05d}", f"{time_:.1f}", str(int(float(torch.rand(1, generator=generator)) < 0.7))])
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "time", "event"])
        writer.writerows(rows)
    size = sum(f.stat().st_size for f in (folder / "wsi").iterdir())
    return total, size


def subset(folder: Path, into: Path, slides: int) -> Path:
    """The first `slides` slides of a cohort as their own folder (links to the same files, labels cut), the last of
    them swapped for the cohort's longest slide: the smaller cohort then differs only in its number of slides."""
    (into / "wsi").mkdir(parents=True)
    files = sorted((folder / "wsi").iterdir())
    longest = max(files, key=lambda f: f.stat().st_size)
    chosen = files[:slides] if longest in files[:slides] else [*files[: slides - 1], longest]
    for file in chosen:
        os.link(file, into / "wsi" / file.name)
    lines = (folder / "labels.csv").read_text(encoding="utf-8").splitlines()
    kept = {f.stem for f in chosen}
    rows = [line for line in lines[1:] if line.split(",", 1)[0] in kept]
    (into / "labels.csv").write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    return into


# the samples an epoch reads: legokit's default split of the labelled ids (random 70/15/15, seed 0), train and val
SPLIT = """
from legokit.data.folder import DatasetFolder, modality_shape
from legokit.data.labels import random_split, read_labels
from legokit.tasks import TaskSpec
labels = read_labels(Path(folder, "labels.csv"), TaskSpec.parse("survival:4"))
splits = random_split(labels.ids, 0)
data = DatasetFolder(folder, {"wsi": modality_shape(folder, "wsi")})
train = [i for i in labels.ids if splits[i] == "train"]
val = [i for i in labels.ids if splits[i] == "val"]
"""

READ = (
    """
import sys, time
from pathlib import Path
from legokit.data.folder import load_bag
folder = sys.argv[1]
"""
    + SPLIT
    + """
started = time.perf_counter()
patches = sum(load_bag(data.modalities["wsi"].files[i]).shape[0] for i in train + val)
print(patches, time.perf_counter() - started, sum(data.lengths(data.ids)))
"""
)

COMPUTE = (
    """
import sys, time, torch
from pathlib import Path
from legokit.data.batch import ModalityBatch
from legokit.data.stream import budget_chunks
from legokit.wrap import wrap_builtin
folder, width, most, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
"""
    + SPLIT
    + """
block = wrap_builtin("abmil", None, "wsi", "survival:4", {"in_features": width, "hidden": 128, "attention": 64},
                     latent=(16, 32), device=device)
optimizer = torch.optim.AdamW(block.parameters(), lr=1e-3)
steps = [[min(n, most) for n in data.lengths(train[s : s + batch])] for s in range(0, len(train), batch)]
lengths = dict(zip(val, data.lengths(val)))
checks = [[lengths[i] for i in c] for c in budget_chunks(val, data.lengths(val), data.token_budget(), most=256)]
x = torch.randn(max(max(c) for c in steps + checks) * max(len(c) for c in steps + checks) // 1 + 1, width)
kind = torch.device(device).type

def inputs(chunk):
    mask = torch.arange(max(chunk))[None, :] < torch.tensor(chunk)[:, None]
    tokens = x[: len(chunk) * max(chunk)].view(len(chunk), max(chunk), width)
    return {"wsi": ModalityBatch(tokens, mask).to(device)}

started, patches = time.perf_counter(), 0
for chunk in steps:  # the epoch's training steps
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=kind == "cuda"):
        loss = block(inputs(chunk)).float().logsumexp(1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    patches += sum(chunk)
block.eval()
with torch.no_grad():  # its validation pass, every patch
    for chunk in checks:
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=kind == "cuda"):
            block(inputs(chunk))
        patches += sum(chunk)
if kind == "cuda":
    torch.cuda.synchronize()
print(patches, time.perf_counter() - started)
"""
)


# `legokit train` in one process of a torchrun launch, counting the bag bytes it reads (loader workers off: each
# read is then this process's), written to ARGV[1].RANK as [distinct files, bytes]
COUNTED = """
import json, os, sys
import legokit.data.folder as folder
from legokit.cli.commands import main
folder.KEEP_BYTES = 0
files, read = set(), [0]
real = folder.load_bag

def counting(path, *args, **kwargs):
    x = real(path, *args, **kwargs)
    files.add(path.name)
    read[0] += x.numel() * x.element_size()
    return x

folder.load_bag = counting
code = main(sys.argv[2:])
with open(f"{sys.argv[1]}.{os.environ['RANK']}", "w") as out:
    json.dump([len(files), read[0]], out)
sys.exit(code)
"""


def ranks_read(folder: Path, work: Path, args: argparse.Namespace) -> list[tuple[int, int]]:
    """(distinct slides, bytes) each of `args.ranks` CPU processes reads in one `legokit train --epochs 1` launched
    by torchrun (normalisation, the epoch's steps, validation and the final scores)."""
    script = work / "counted.py"
    script.write_text(COUNTED, encoding="utf-8")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}", str(script),
        str(work / "reads"), "train", str(folder), "--modality", "wsi", *ENCODER, "--task", "survival:4", "--epochs",
        "1", "--batch-size", str(args.batch_size * args.ranks), "--workers", "0", "--device", "cpu",
        "--max-tokens", str(args.max_tokens), "-o", str(work / "ranks.st"),
    ]  # fmt: skip
    _run_alone(command)
    return [tuple(json.loads((work / f"reads.{rank}").read_text())) for rank in range(args.ranks)]


CACHE = tempfile.mkdtemp(prefix="legokit-slides-cache-")


def measure(folder: Path, work: Path, args: argparse.Namespace, label: str) -> dict[str, float]:
    """(c) one epoch and one predict pass through the CLI, each in a fresh process (peak memory per process)."""
    model = work / f"{label}.st"
    train = [
        sys.executable, "-m", "legokit.cli", "train", str(folder), "--modality", "wsi", *ENCODER,
        "--task", "survival:4", "--epochs", "1", "--batch-size", str(args.batch_size), "--device", args.device,
        "--max-tokens", str(args.max_tokens), "-o", str(model),
    ]  # fmt: skip
    command, epoch_mb, _ = _run_alone(train)
    history = json.loads(
        subprocess.run(
            [sys.executable, "-c", "import json, sys, legokit; print(json.dumps("
             "legokit.load(sys.argv[1]).provenance['trained']['history']))", str(model)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    epoch = float(history[0]["seconds"])  # the epoch's training steps and its validation pass
    predict = [
        sys.executable, "-m", "legokit.cli", "predict", str(model), str(folder), "--device", args.device,
        "--no-cache", "-o", str(work / f"{label}.csv"),
    ]  # fmt: skip
    predicted, predict_mb, _ = _run_alone(predict)
    return {
        "train_command_s": command, "epoch_s": epoch, "epoch_peak_mb": epoch_mb,
        "predict_s": predicted, "predict_peak_mb": predict_mb,
    }  # fmt: skip


def _run_alone(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB (GNU time's maximum resident set size of the command alone) and stdout."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "PEAK_KB %M", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "LEGOKIT_CACHE": CACHE},
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:5])} failed: {done.stderr[-1500:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB")][-1]
    return seconds, int(peak.split()[1]) / 1024, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--median", type=int, default=8000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--also", type=int, default=250, help="repeat (c) on this many of the slides (0: skip)")
    parser.add_argument("--ranks", type=int, default=0, help="also count each torchrun CPU process's reads (0: skip)")
    parser.add_argument("--root", help="where to build the cohort (default: a temporary folder, removed after)")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="legokit-slides-"))
    try:
        started = time.perf_counter()
        folder = root / "cohort"
        if not (folder / "labels.csv").exists():
            patches, size = write_cohort(folder, args.slides, args.median, args.width)
        else:
            patches = size = 0
        took = time.perf_counter() - started
        print(f"cohort: {args.slides} slides, {patches:,} patches, {size / 1e9:.1f} GB (written in {took:.0f} s)")
        _, read_mb, out = _run_alone([sys.executable, "-c", READ, str(folder)])
        patches, read_s, everyone = int(out.split()[0]), float(out.split()[1]), int(out.split()[2])  # timed inside
        _, compute_mb, out = _run_alone(
            [sys.executable, "-c", COMPUTE, str(folder), str(args.width), str(args.max_tokens),
             str(args.batch_size), args.device]
        )  # fmt: skip
        computed, compute_s = int(out.split()[0]), float(out.split()[1])
        work = root / "work"
        work.mkdir(exist_ok=True)
        full = measure(folder, work, args, "all")
        figures = {
            "slides": args.slides, "patches": everyone, "epoch_patches": patches, "device": args.device,
            "read_s": read_s, "read_peak_mb": read_mb, "compute_s": compute_s, "compute_peak_mb": compute_mb, **full,
            "epoch_over_limit": full["epoch_s"] / max(read_s, compute_s),
        }  # fmt: skip
        if args.also:
            small = measure(subset(folder, root / f"subset{args.also}", args.also), work, args, f"subset{args.also}")
            figures.update({f"{k}_{args.also}": v for k, v in small.items()})
        print(
            f"(a) read-only pass over the epoch's slides (train and val): {read_s:.1f} s, {patches / read_s:,.0f} "
            f"patches/s, peak {read_mb:,.0f} MB\n"
            f"(b) compute-only pass (the epoch's steps and validation, in memory): {compute_s:.1f} s, "
            f"{computed / compute_s:,.0f} patches/s, peak {compute_mb:,.0f} MB\n"
            f"(c) legokit train --epochs 1: the epoch (steps and validation) {full['epoch_s']:.1f} s, the whole "
            f"command {full['train_command_s']:.1f} s (start, normalisation pass, test), "
            f"peak {full['epoch_peak_mb']:,.0f} MB; "
            f"legokit predict: {full['predict_s']:.1f} s ({everyone / full['predict_s']:,.0f} patches/s), "
            f"peak {full['predict_peak_mb']:,.0f} MB\n"
            f"epoch / max(a, b) = {figures['epoch_over_limit']:.2f} (goal <= 1.2)"
        )
        if args.also:
            print(
                f"{args.also} slides (the first and the longest): epoch peak "
                f"{figures[f'epoch_peak_mb_{args.also}']:,.0f} MB, predict peak "
                f"{figures[f'predict_peak_mb_{args.also}']:,.0f} MB (all {args.slides}: {full['epoch_peak_mb']:,.0f}"
                f" / {full['predict_peak_mb']:,.0f} MB)"
            )
        if args.ranks:
            shares = ranks_read(folder, work, args)
            figures["ranks"] = [{"slides": n, "bytes": b} for n, b in shares]
            print(
                f"torchrun --nproc-per-node {args.ranks} (CPU): "
                + ", ".join(f"rank {r} read {n:,} slides, {b / 1e9:.1f} GB" for r, (n, b) in enumerate(shares))
                + f" (of {args.slides:,} slides)"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(CACHE, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
