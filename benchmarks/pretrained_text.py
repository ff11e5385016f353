"""Benchmark: a pretrained text encoder (all-MiniLM-L6-v2) wrapped into legokit blocks on two views of real radiology
reports, run as a user would through the CLI, against TF-IDF + logistic regression on the same fixed split.

Data: the Indiana University chest X-ray reports (benchmarks/iu_xray.py): FINDINGS and IMPRESSION sections as two
text modalities, label abnormal (MeSH major terms other than "normal") vs normal; one fixed stratified 70/15/15 split
(splits.csv) for every seed and every baseline.

legokit, each command in its own process, wall time measured: `wrap` the MiniLM folder once per view (binary, 32x32
latent); then per seed s: `train DATA --block V.wrapped.st --seed s` for both views, `merge` (equal weights and
`--weights auto`), `fuse ... --data DATA --seed s` (stack), `eval` of the five models on the test split, and
`predict` of the fused model on the test samples. The encoder cache (LEGOKIT_CACHE) is a folder under --out, emptied
at the start: seed 0 runs cold, later seeds warm. Per-epoch seconds come from the train/fuse JSON history (n/a when
the history rows carry none).

Baselines, each with C chosen on the validation split:
- TF-IDF (word 1-2 grams) + logistic regression per view (on the samples that have the view) and on both views (a
  missing view is an empty string; concatenated texts or two stacked TF-IDF matrices, whichever is stronger on
  validation);
- the linear probe: MiniLM's own mean-pooled embeddings (the frozen encoder every block wraps) + logistic
  regression, per view and on both views (a missing view's embedding is zeros plus a flag).
Paired rows, on the same test samples: each block against the linear probe of its view, and the best legokit model
(chosen per seed by validation AUC from `eval --split val`) against TF-IDF and the probe on both views. The split is
fixed, so seeds vary only training: the interval resamples test samples (1,000 resamples, seeded) of the mean over
seeds of the per-seed AUC differences.

    python -m benchmarks.pretrained_text [--seeds 3] [--out DIR] [--limit N] [--epochs N] [--no-cache]

Needs `pip install 'legokit[bench,hf]'` (the report archive and the encoder folder; transformers to wrap it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from . import iu_xray

VIEWS = iu_xray.VIEWS
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 12345
MODELS = {  # eval name -> label in the tables
    "findings": "legokit block: findings",
    "impression": "legokit block: impression",
    "merged": "legokit merge (equal weights)",
    "merged_auto": "legokit merge (--weights auto)",
    "fused": "legokit fuse (stack)",
}


# --- data -----------------------------------------------------------------------------------------------------------


def read_folder(folder: Path) -> tuple[dict[str, int], dict[str, str], dict[str, dict[str, str]]]:
    """labels, splits and each view's texts of a dataset folder written by iu_xray.prepare."""

    def rows(name: str) -> list[list[str]]:
        with open(folder / name, newline="", encoding="utf-8") as handle:
            return list(csv.reader(handle))[1:]

    labels = {i: int(y) for i, y in rows("labels.csv")}
    splits = dict(rows("splits.csv"))
    texts = {view: dict(rows(f"{view}.csv")) for view in VIEWS}
    return labels, splits, texts


# --- TF-IDF + logistic regression -------------------------------------------------------------------------------------


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)


def _fit_scores(train_x, train_y, others: Sequence, c: float) -> list[np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=5000).fit(train_x, train_y)
    return [model.predict_proba(x)[:, 1] for x in others]


def _best_c(
    variant: str, x: Mapping, y: Mapping[str, np.ndarray], split_ids: Mapping[str, list[str]], best: dict | None
) -> dict | None:
    """The fit over the C grid with the highest validation AUC on these features, if it beats `best` (the first of
    equal AUCs is kept): its variant, C, validation and test AUC, sample counts and test scores."""
    from sklearn.metrics import roc_auc_score

    for c in C_GRID:
        val, test = _fit_scores(x["train"], y["train"], [x["val"], x["test"]], c)
        val_auc = float(roc_auc_score(y["val"], val))
        if best is None or val_auc > best["val_auc"]:
            best = {
                "variant": variant,
                "C": c,
                "val_auc": val_auc,
                "test_auc": float(roc_auc_score(y["test"], test)),
                "samples": {s: len(ids) for s, ids in split_ids.items()},
                "test_ids": split_ids["test"],
                "test_scores": test.tolist(),
            }
    return best


def _features(variant: str, texts: Mapping[str, Mapping[str, str]], split_ids: Mapping[str, list[str]]):
    """Train/val/test matrices for one variant: a single view, `concat` (both views' texts joined) or `hstack` (one
    TF-IDF per view, side by side). A missing view is an empty string."""
    from scipy.sparse import hstack

    def text(view: str, i: str) -> str:
        return texts[view].get(i, "")

    if variant in VIEWS:
        corpora = {s: [text(variant, i) for i in ids] for s, ids in split_ids.items()}
        vectorizer = _vectorizer().fit(corpora["train"])
        return {s: vectorizer.transform(c) for s, c in corpora.items()}
    if variant == "concat":
        corpora = {
            s: [f"{text('findings', i)} {text('impression', i)}".strip() for i in ids] for s, ids in split_ids.items()
        }
        vectorizer = _vectorizer().fit(corpora["train"])
        return {s: vectorizer.transform(c) for s, c in corpora.items()}
    parts = []
    for view in VIEWS:
        corpora = {s: [text(view, i) for i in ids] for s, ids in split_ids.items()}
        vectorizer = _vectorizer().fit(corpora["train"])
        parts.append({s: vectorizer.transform(c) for s, c in corpora.items()})
    return {s: hstack([p[s] for p in parts]).tocsr() for s in split_ids}


def tfidf_baseline(
    labels: Mapping[str, int], splits: Mapping[str, str], texts: Mapping[str, Mapping[str, str]]
) -> dict:
    """TF-IDF + LR per view and on both views; C (and, for both views, the variant) chosen on validation AUC."""
    started = time.perf_counter()
    results = {}
    for name, variants in (
        ("findings", ("findings",)),
        ("impression", ("impression",)),
        ("both", ("concat", "hstack")),
    ):
        having = (lambda i: i in texts[name]) if name in VIEWS else (lambda i: True)
        split_ids = {s: [i for i in labels if splits[i] == s and having(i)] for s in ("train", "val", "test")}
        y = {s: np.array([labels[i] for i in ids]) for s, ids in split_ids.items()}
        best: dict | None = None
        candidates = {}
        for variant in variants:
            own = _best_c(variant, _features(variant, texts, split_ids), y, split_ids, None) or {}
            candidates[variant] = own["val_auc"]
            best = own if best is None or own["val_auc"] > best["val_auc"] else best
        best = best or {}
        best["val_auc_by_variant"] = candidates  # each variant's best validation AUC over the C grid
        best["sample_set"] = (
            f"test samples with {name}" if name in VIEWS else "all test samples; a missing view is an empty string"
        )
        results[name] = best
    results["seconds"] = time.perf_counter() - started
    return results


# --- the linear probe: the frozen encoder's embeddings + logistic regression ------------------------------------------

PROBE_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
PROBE_BATCH = 64


def embeddings(texts: Mapping[str, str]) -> dict[str, np.ndarray]:
    """MiniLM's mean-pooled last hidden states (padding left out) of each text, as sentence-transformers pools it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = iu_xray.minilm_folder()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    ids = sorted(texts, key=lambda i: len(texts[i]))  # similar lengths batch together
    found = {}
    with torch.no_grad():
        for start in range(0, len(ids), PROBE_BATCH):
            chunk = ids[start : start + PROBE_BATCH]
            encoded = tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=PROBE_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            found.update(zip(chunk, pooled.numpy()))
    return found


def probe_baseline(
    labels: Mapping[str, int], splits: Mapping[str, str], texts: Mapping[str, Mapping[str, str]]
) -> dict:
    """Embeddings + logistic regression per view and on both views: standardised features or L2-normalised
    embeddings (sentence-transformers' own output), and C, chosen on validation AUC."""
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    pooled = {view: embeddings(texts[view]) for view in VIEWS}
    width = len(next(iter(pooled[VIEWS[0]].values())))
    results: dict = {"embedding_seconds": time.perf_counter() - started}

    def row(name: str, i: str, normalised: bool) -> np.ndarray:
        def one(view: str) -> np.ndarray:
            vector = pooled[view][i]
            return vector / max(float(np.linalg.norm(vector)), 1e-12) if normalised else vector

        if name in VIEWS:
            return one(name)
        parts = []
        for view in VIEWS:
            has = i in pooled[view]
            parts += [one(view) if has else np.zeros(width, dtype=np.float32), [0.0 if has else 1.0]]
        return np.concatenate(parts)

    for name in (*VIEWS, "both"):
        having = (lambda i: i in texts[name]) if name in VIEWS else (lambda i: True)
        split_ids = {s: [i for i in labels if splits[i] == s and having(i)] for s in ("train", "val", "test")}
        y = {s: np.array([labels[i] for i in ids]) for s, ids in split_ids.items()}
        best = None
        for variant in ("standardised", "normalised"):
            x = {s: np.stack([row(name, i, variant == "normalised") for i in ids]) for s, ids in split_ids.items()}
            if variant == "standardised":
                scaler = StandardScaler().fit(x["train"])
                x = {s: scaler.transform(v) for s, v in x.items()}
            best = _best_c(variant, x, y, split_ids, best)
        results[name] = best
    results["seconds"] = time.perf_counter() - started
    return results


def paired_over_seeds(y: np.ndarray, a: Sequence[np.ndarray], b: Sequence[np.ndarray], n: int = BOOTSTRAP) -> dict:
    """mean over seeds of AUC(a_s) - AUC(b_s) on the same samples, and its percentile 95% interval over `n` resamples
    of the samples (the same rows for every seed: the split is fixed, only training varies)."""
    from sklearn.metrics import roc_auc_score

    def mean_difference(rows: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(y[rows], p[rows]) - roc_auc_score(y[rows], q[rows]) for p, q in zip(a, b)]))

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    diffs = []
    for _ in range(n):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].min() != y[rows].max():  # one class only: AUC undefined, resample skipped
            diffs.append(mean_difference(rows))
    low, high = np.percentile(diffs, [2.5, 97.5])
    per_seed = [float(roc_auc_score(y, p) - roc_auc_score(y, q)) for p, q in zip(a, b)]
    return {
        "difference": mean_difference(np.arange(len(y))),
        "low": float(low),
        "high": float(high),
        "per_seed": per_seed,
        "resamples": len(diffs),
        "samples": len(y),
    }


# --- legokit through its CLI ------------------------------------------------------------------------------------------


class Runner:
    """Runs `python -m legokit.cli.commands ...` in a subprocess, logs its output, times it."""

    def __init__(self, out: Path, env: dict[str, str], console: Console):
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.console = console
        self.times: dict[str, list[float]] = {}

    def __call__(self, key: str, tag: str, *args: str) -> float:
        log = self.logs / f"{tag}.log"
        command = [sys.executable, "-m", "legokit.cli", *args]
        self.console.print(f"[dim]$ legokit {' '.join(args)}[/]")
        started = time.perf_counter()
        with open(log, "w") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"legokit {' '.join(args)} failed (exit {done.returncode}); {log}:\n{tail}")
        self.times.setdefault(key, []).append(seconds)
        self.console.print(f"[dim]  {seconds:.1f} s[/]")
        return seconds


def _epochs(result: Mapping) -> dict:
    """Epochs run, best epoch, total seconds and first vs later epoch seconds (None when the history has none)."""
    history = result.get("history") or []
    seconds = [row.get("seconds") for row in history]
    known = all(isinstance(s, (int, float)) for s in seconds) and seconds
    encoding = result.get("encoding") or {}  # per modality, when the JSON carries the encoding pass
    encoded = [row.get("seconds") for row in encoding.values() if isinstance(row, Mapping)]
    total = result.get("seconds")
    return {
        "epochs": len(history),
        "best_epoch": result.get("best_epoch"),
        "seconds": total,
        "first_epoch_s": seconds[0] if known else None,
        "later_epoch_s": statistics.fmean(seconds[1:]) if known and len(seconds) > 1 else None,
        "outside_epochs_s": total - sum(seconds) if known and isinstance(total, (int, float)) else None,
        "encoding_s": sum(encoded) if encoded and all(isinstance(s, (int, float)) for s in encoded) else None,
        "encoding": encoding,
    }


def _predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["id"]: float(row["prob"]) for row in csv.DictReader(handle) if row.get("prob")}


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int, n: int = BOOTSTRAP) -> dict:
    """AUC(a) - AUC(b) on the same samples, and its percentile 95% interval over `n` resamples of the samples."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng([BOOTSTRAP_SEED, seed])
    diffs = []
    for _ in range(n):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].min() == y[rows].max():
            continue  # one class only: AUC undefined, resample skipped
        diffs.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "difference": float(roc_auc_score(y, a) - roc_auc_score(y, b)),
        "low": float(low),
        "high": float(high),
        "resamples": len(diffs),
    }


def write_test_inputs(folder: Path, data: Path, splits: Mapping[str, str]) -> int:
    """A folder with only the test samples' texts (no labels): what `predict` is timed on."""
    folder.mkdir(parents=True, exist_ok=True)
    test = {i for i, s in splits.items() if s == "test"}
    for view in VIEWS:
        with open(data / f"{view}.csv", newline="", encoding="utf-8") as source:
            rows = list(csv.reader(source))
        with open(folder / f"{view}.csv", "w", newline="", encoding="utf-8") as target:
            csv.writer(target, lineterminator="\n").writerows([rows[0], *(r for r in rows[1:] if r[0] in test)])
    return len(test)


def run_legokit(
    out: Path,
    data: Path,
    seeds: int,
    epochs: int | None,
    cache: bool,
    keep: bool,
    console: Console,
    baseline_both: dict,
    labels: Mapping[str, int],
) -> dict:
    env = dict(os.environ)
    if cache:
        env["LEGOKIT_CACHE"] = str(out / "cache")
        shutil.rmtree(out / "cache", ignore_errors=True)  # seed 0 starts cold, whatever ran before
    artifacts, reports = out / "artifacts", out / "json"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    reports.mkdir(parents=True, exist_ok=True)
    (out / "predictions").mkdir(exist_ok=True)
    run = Runner(out, env, console)
    no_cache = [] if cache else ["--no-cache"]
    train_flags = [*no_cache, *(["--epochs", str(epochs)] if epochs is not None else [])]
    minilm = iu_xray.minilm_folder()
    wrapped = {}
    for view in VIEWS:
        wrapped[view] = artifacts / f"{view}.wrapped.st"
        run(
            f"wrap {view}",
            f"wrap.{view}",
            "wrap",
            str(minilm),
            "--modality",
            view,
            "--task",
            "binary",
            "--latent",
            "32x32",
            "-o",
            str(wrapped[view]),
            "--json",
            str(reports / f"wrap.{view}.json"),
        )
    test_inputs = out / "data-test"
    n_test = write_test_inputs(test_inputs, data, read_folder(data)[1])
    per_seed = []
    for seed in range(seeds):
        console.print(
            f"[bold]seed {seed}[/] ({'cold' if seed == 0 else 'warm'} cache)" if cache else f"[bold]seed {seed}[/]"
        )
        st = {name: artifacts / f"{name}.{seed}.st" for name in MODELS}
        training = {}
        for view in VIEWS:
            path = reports / f"train.{view}.{seed}.json"
            run(
                f"train {view}",
                f"train.{view}.{seed}",
                "train",
                str(data),
                "--block",
                str(wrapped[view]),
                "-o",
                str(st[view]),
                "--seed",
                str(seed),
                *train_flags,
                "--json",
                str(path),
            )
            training[f"train {view}"] = _epochs(json.loads(path.read_text()))
        run(
            "merge",
            f"merge.{seed}",
            "merge",
            str(st["findings"]),
            str(st["impression"]),
            "-o",
            str(st["merged"]),
            "--json",
            str(reports / f"merge.{seed}.json"),
        )
        run(
            "merge auto",
            f"merge_auto.{seed}",
            "merge",
            str(st["findings"]),
            str(st["impression"]),
            "--weights",
            "auto",
            "-o",
            str(st["merged_auto"]),
            "--json",
            str(reports / f"merge_auto.{seed}.json"),
        )
        path = reports / f"fuse.{seed}.json"
        run(
            "fuse",
            f"fuse.{seed}",
            "fuse",
            str(st["findings"]),
            str(st["impression"]),
            "--data",
            str(data),
            "-o",
            str(st["fused"]),
            "--seed",
            str(seed),
            *train_flags,
            "--json",
            str(path),
        )
        training["fuse"] = _epochs(json.loads(path.read_text()))
        scores, val_scores, predicted = {}, {}, {}
        for name in MODELS:
            path = reports / f"eval.{name}.{seed}.json"
            run(f"eval {name}", f"eval.{name}.{seed}", "eval", str(st[name]), str(data), *no_cache, "--json", str(path))
            found = json.loads(path.read_text())
            scores[name] = {"auc": found["auc"], "samples": found["samples"], "split_source": found["split_source"]}
            path = reports / f"eval_val.{name}.{seed}.json"
            run(
                f"eval {name} (val)",
                f"eval_val.{name}.{seed}",
                "eval",
                str(st[name]),
                str(data),
                "--split",
                "val",
                *no_cache,
                "--json",
                str(path),
            )
            val_scores[name] = json.loads(path.read_text())["auc"]
            predictions = out / "predictions" / f"{name}.{seed}.csv"
            run(
                f"predict {name}",
                f"predict.{name}.{seed}",
                "predict",
                str(st[name]),
                str(test_inputs),
                *no_cache,
                "-o",
                str(predictions),
            )
            predicted[name] = _predictions(predictions)
        fused = predicted["fused"]
        ids = baseline_both["test_ids"]
        y = np.array([labels[i] for i in ids])
        paired = paired_bootstrap(y, np.array([fused[i] for i in ids]), np.array(baseline_both["test_scores"]), seed)
        paired["samples"] = len(ids)
        per_seed.append(
            {
                "seed": seed,
                "scores": scores,
                "val_auc": val_scores,
                "test_predictions": predicted,
                "training": training,
                "fused_vs_tfidf_both": paired,
            }
        )
        if not keep:
            for name in MODELS:
                st[name].unlink(missing_ok=True)
    return {
        "per_seed": per_seed,
        "times": run.times,
        "predict_samples": n_test,
        "cache": cache,
        "epochs": epochs,
        "minilm": str(minilm),
    }


LEGOKIT_ALL = ("merged", "merged_auto", "fused")  # the legokit models that score every test sample


def comparisons(labels: Mapping[str, int], per_seed: Sequence[Mapping], tfidf: Mapping, probe: Mapping) -> dict:
    """The paired rows: each block against the linear probe of its view (goal a), and the best legokit model, chosen
    per seed on validation AUC, against TF-IDF + LR and the linear probe on both views (goal b)."""
    rows = {}

    def scores(name: str, ids: Sequence[str]) -> list[np.ndarray]:
        return [np.array([s["test_predictions"][name][i] for i in ids]) for s in per_seed]

    for view in VIEWS:
        ids = probe[view]["test_ids"]
        y = np.array([labels[i] for i in ids])
        rows[f"block {view} − linear probe {view}"] = paired_over_seeds(
            y, scores(view, ids), [np.array(probe[view]["test_scores"])] * len(per_seed)
        )
    chosen = [
        max(LEGOKIT_ALL, key=lambda m: s["val_auc"][m] if s["val_auc"][m] is not None else -1.0) for s in per_seed
    ]
    for label, baseline in (("TF-IDF + LR, both views", tfidf["both"]), ("linear probe, both views", probe["both"])):
        ids = baseline["test_ids"]
        y = np.array([labels[i] for i in ids])
        best = [np.array([s["test_predictions"][m][i] for i in ids]) for s, m in zip(per_seed, chosen)]
        rows[f"best legokit (validation) − {label}"] = {
            **paired_over_seeds(y, best, [np.array(baseline["test_scores"])] * len(per_seed)),
            "chosen": chosen,
        }
    return rows


# --- report -----------------------------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def report(results: dict, console: Console) -> None:
    counts, base, lego = results["data"], results["tfidf"], results["legokit"]
    seeds = len(lego["per_seed"])
    console.print(iu_xray.describe(counts))

    auc = Table(
        title=f"abnormal vs normal report: test AUC (fixed split; legokit mean ± s.d. over {seeds} seed(s))",
        title_justify="left",
    )
    for column in ("model", "test samples", "test AUC", "val AUC / choice"):
        auc.add_column(column, justify="left" if column == "model" else "right")
    for name, label in (
        ("findings", "TF-IDF + LR: findings"),
        ("impression", "TF-IDF + LR: impression"),
        ("both", "TF-IDF + LR: both views"),
    ):
        row = base[name]
        auc.add_row(
            label,
            f"{row['samples']['test']}: {row['sample_set']}",
            f"{row['test_auc']:.3f}",
            f"{row['val_auc']:.3f}, C={row['C']:g}"
            + (
                f", {row['variant']} (val: "
                + ", ".join(f"{k} {v:.3f}" for k, v in row["val_auc_by_variant"].items())
                + ")"
                if name == "both"
                else ""
            ),
        )
    for name in (*VIEWS, "both"):
        row = results["probe"][name]
        auc.add_row(
            f"linear probe (MiniLM embeddings + LR): {name}",
            str(row["samples"]["test"]),
            f"{row['test_auc']:.3f}",
            f"{row['val_auc']:.3f}, C={row['C']:g}, {row['variant']}",
        )
    for name, label in MODELS.items():
        values = [s["scores"][name]["auc"] for s in lego["per_seed"]]
        samples = sorted({s["scores"][name]["samples"] for s in lego["per_seed"]})
        what = (
            "test samples with findings"
            if name == "findings"
            else "test samples with impression"
            if name == "impression"
            else "all test samples"
        )
        val = [s["val_auc"][name] for s in lego["per_seed"]]
        auc.add_row(label, f"{'/'.join(map(str, samples))}: {what}", _mean_sd(values), _mean_sd(val))
    console.print(auc)

    table = Table(
        title=f"paired test AUC differences: mean over {seeds} seed(s) [95% interval over test samples, "
        f"{BOOTSTRAP} resamples]; per seed",
        title_justify="left",
    )
    for column in ("comparison", "samples", "mean [95% interval]", "per seed"):
        table.add_column(column, justify="left" if column == "comparison" else "right")
    for label, row in results["paired"].items():
        table.add_row(
            label + (f" (chose {', '.join(row['chosen'])})" if "chosen" in row else ""),
            str(row["samples"]),
            f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]",
            ", ".join(f"{d:+.3f}" for d in row["per_seed"]),
        )
    console.print(table)

    paired = Table(
        title="fused - TF-IDF + LR (both views), paired on the same test samples; bootstrap 95% interval "
        f"over samples ({BOOTSTRAP} resamples)",
        title_justify="left",
    )
    for column in ("seed", "samples", "fused AUC (from predict)", "TF-IDF both AUC", "difference", "95% interval"):
        paired.add_column(column, justify="right")
    for s in lego["per_seed"]:
        p = s["fused_vs_tfidf_both"]
        paired.add_row(
            str(s["seed"]),
            str(p["samples"]),
            f"{base['both']['test_auc'] + p['difference']:.3f}",
            f"{base['both']['test_auc']:.3f}",
            f"{p['difference']:+.3f}",
            f"[{p['low']:+.3f}, {p['high']:+.3f}]",
        )
    console.print(paired)

    cold = "seed 0 (cold cache)" if lego["cache"] else "seed 0"
    timing = Table(
        title="wall time per command (s), each a fresh process" + ("" if lego["cache"] else "; --no-cache"),
        title_justify="left",
    )
    for column in ("command", cold, "later seeds, mean", "all seeds, mean"):
        timing.add_column(column, justify="left" if column == "command" else "right")
    for key, values in lego["times"].items():
        note = f" ({lego['predict_samples']} test samples)" if key.startswith("predict") else ""
        timing.add_row(
            key + note,
            f"{values[0]:.1f}",
            f"{statistics.fmean(values[1:]):.1f}" if len(values) > 1 else "n/a",
            f"{statistics.fmean(values):.1f}",
        )
    timing.add_row("TF-IDF + LR baseline (all fits, in process)", f"{base['seconds']:.1f}", "", "")
    console.print(timing)

    epochs = Table(
        title="training time from the --json history (s): first vs later epochs; encoding pass: the frozen "
        "encoders' pass before epoch 1 (n/a unless the JSON carries it); outside epochs = JSON total - "
        "epochs (final val/test scoring); loading, encoding and saving show in the wall time",
        title_justify="left",
    )
    for column in (
        "command",
        "seed",
        "epochs (best)",
        "first epoch",
        "later epochs, mean",
        "encoding pass",
        "outside epochs",
        "total (JSON seconds)",
    ):
        epochs.add_column(column, justify="left" if column == "command" else "right")
    for s in lego["per_seed"]:
        for key, row in s["training"].items():
            epochs.add_row(
                key,
                str(s["seed"]),
                f"{row['epochs']} ({row['best_epoch']})",
                _s(row["first_epoch_s"]),
                _s(row["later_epoch_s"]),
                _s(row["encoding_s"]),
                _s(row["outside_epochs_s"]),
                _s(row["seconds"]),
            )
    console.print(epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="legokit seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--out", default="benchmark-results/pretrained_text", help="output folder (data, artifacts, logs, results.json)"
    )
    parser.add_argument("--limit", type=int, help="a stratified subset of this many reports (a quick smoke run)")
    parser.add_argument(
        "--legokit-from",
        metavar="RESULTS",
        help="take the legokit models' scores from an earlier run's results.json and fit only the baselines",
    )
    parser.add_argument("--epochs", type=int, help="passed to train and fuse (default: legokit's)")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="pass --no-cache to train, fuse, eval and predict (default: a fresh cache folder under --out)",
    )
    parser.add_argument(
        "--keep-artifacts",
        action="store_true",
        help="keep each seed's trained, merged and fused .st files (about 180 MB per block)",
    )
    args = parser.parse_args(argv)
    console = Console(width=160)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    counts = iu_xray.prepare(data, args.limit)
    labels, splits, texts = read_folder(data)
    base = tfidf_baseline(labels, splits, texts)
    console.print(
        f"TF-IDF + LR: test AUC findings {base['findings']['test_auc']:.3f}, impression "
        f"{base['impression']['test_auc']:.3f}, both ({base['both']['variant']}) {base['both']['test_auc']:.3f} "
        f"({base['seconds']:.1f} s)"
    )
    with open(out / "tfidf_both.test.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(
            [("id", "prob"), *zip(base["both"]["test_ids"], base["both"]["test_scores"])]
        )
    probe = probe_baseline(labels, splits, texts)
    console.print(
        f"linear probe: test AUC findings {probe['findings']['test_auc']:.3f}, impression "
        f"{probe['impression']['test_auc']:.3f}, both {probe['both']['test_auc']:.3f} ({probe['seconds']:.1f} s)"
    )
    if args.legokit_from:  # the legokit side of an earlier run (its per-seed predictions), baselines fitted anew
        earlier = json.loads(Path(args.legokit_from).read_text())
        lego = earlier["legokit"]
        if earlier["settings"]["limit"] != args.limit or any("test_predictions" not in s for s in lego["per_seed"]):
            parser.error(f"{args.legokit_from}: not a run of this benchmark's version with --limit {args.limit}")
    else:
        lego = run_legokit(
            out, data, args.seeds, args.epochs, not args.no_cache, args.keep_artifacts, console, base["both"], labels
        )
    paired = comparisons(labels, lego["per_seed"], base, probe)
    results = {
        "data": counts,
        "tfidf": {
            k: ({kk: vv for kk, vv in v.items() if kk not in ("test_ids", "test_scores")} if isinstance(v, dict) else v)
            for k, v in base.items()
        },
        "probe": {
            k: ({kk: vv for kk, vv in v.items() if kk not in ("test_ids", "test_scores")} if isinstance(v, dict) else v)
            for k, v in probe.items()
        },
        "paired": paired,
        "legokit": lego,
        "seconds": time.perf_counter() - started,
        "settings": {
            "seeds": len(lego["per_seed"]),
            "limit": args.limit,
            "legokit_from": args.legokit_from,
            "epochs": args.epochs,
            "cache": not args.no_cache,
            "split_seed": iu_xray.SPLIT_SEED,
            "bootstrap": BOOTSTRAP,
            "C_grid": list(C_GRID),
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report(results, console)
    console.print(f"{results['seconds']:.0f} s; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
