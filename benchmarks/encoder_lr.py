"""How fast a fine-tuned pretrained encoder should learn, chosen on a validation split: all-MiniLM-L6-v2 wrapped as
the findings block of the IU chest X-ray reports (`benchmarks.iu_xray`), trained with the encoder frozen and
fine-tuned at encoder learning rates of lr x {0.01, 0.1, 1}, on a stratified subset (fine-tuning re-runs the
encoder every epoch: the full set would take hours on 2 CPU cores). Only validation AUC decides; test is not read.

    python -m benchmarks.encoder_lr [--limit 900] [--epochs 3] [--out DIR]

Prints validation AUC per setting and the per-epoch time; legokit's default (`train.ENCODER_LR_SCALE`) follows it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import legokit
from legokit.cache import TokenCache
from legokit.training.trainer import TrainConfig
from legokit.training.workflows import train_wrapped_block

from .iu_xray import minilm_folder, prepare

SCALES = (0.01, 0.1, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=900, help="stratified subset of reports (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (default %(default)s)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        counts = prepare(data, limit=args.limit)
        print(f"{counts['limit']} reports: splits {counts.get('splits')}")
        wrapped = legokit.save_block(
            legokit.wrap_file(minilm_folder(), modality="findings", task="binary", latent=(32, 32), device="cpu"),
            Path(tmp) / "findings.st",
        )
        base = TrainConfig(epochs=args.epochs, patience=args.epochs, device="cpu")
        settings = {
            "frozen": base,
            **{
                f"finetune, encoder lr = lr x {s:g}": replace(base, encoders="finetune", encoder_lr=base.lr * s)
                for s in SCALES
            },
        }
        rows = {}
        for name, config in settings.items():
            torch.manual_seed(0)
            started = time.perf_counter()
            _, result = train_wrapped_block(
                data, legokit.load_block(wrapped), config, progress=False, cache=TokenCache(None)
            )
            seconds = time.perf_counter() - started
            rows[name] = {
                "val_auc": result.val["auc"],
                "best_epoch": result.best_epoch,
                "seconds": seconds,
                "epoch_seconds": [round(r["seconds"], 1) for r in result.history],
            }
            print(
                f"{name:40} val AUC {result.val['auc']:.4f} (epoch {result.best_epoch}), {seconds:.0f} s, "
                f"epochs {rows[name]['epoch_seconds']} s"
            )
    best = max(rows, key=lambda n: rows[n]["val_auc"])
    print(f"best on validation: {best}")
    if args.out:
        Path(args.out).write_text(json.dumps({"limit": args.limit, "epochs": args.epochs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
