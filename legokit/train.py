"""The trainer: AdamW, validation once per epoch, early stopping that restores a deep copy of the best weights,
model selection on the validation split only, seeded, with rich progress bars; bf16 autocast on CUDA."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from .block import LegoBlock
from .data.batch import ModalityBatch
from .data.training import SplitData
from .device import resolve_device
from .distributed import device_for, world
from .errors import ConfigError, positive_int
from .metrics import PRIMARY, task_loss, task_metrics
from .samples import sample_record
from .tasks import TaskSpec


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; validated here once."""

    # chosen on validation splits of three small cohorts (docs/benchmarks.md, "Merge vs blocks")
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    freeze_encoders: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            positive_int(name, getattr(self, name))
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value) or (name == "lr" and value == 0):
                raise ConfigError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} number, got {value!r}")


@dataclass
class TrainResult:
    """What training found: the chosen epoch, its validation metrics, test metrics of the restored model."""

    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    edges: list[float] | None = None
    seconds: float = 0.0
    samples: dict[str, Any] = field(default_factory=dict)  # salted hashes of the training and validation ids

    def provenance(self, data: SplitData, config: TrainConfig, modalities: Sequence[str]) -> dict[str, Any]:
        return {
            "data": str(data.folder.root),
            "split": data.split_source,
            "modalities": list(modalities),
            "train_samples": len(data.ids("train", modalities)),
            "config": asdict(config),
            "best_epoch": self.best_epoch,
            "val": self.val,
            "test": self.test,
            "survival_bin_edges": self.edges,
            "samples": self.samples,
        }


Inputs = Callable[[Mapping[str, ModalityBatch], Sequence[str]], Mapping[str, ModalityBatch]]


def run_model(model: nn.Module, batches: Mapping[str, ModalityBatch], call: nn.Module | None = None) -> torch.Tensor:
    """Logits of a block (one modality) or of any multimodal model (a mapping of modalities); `call` is what to
    run when it differs from `model` (a DDP or compiled wrapper of it)."""
    call = model if call is None else call
    if isinstance(model, LegoBlock):
        batch = batches[model.modality]
        return call(batch.x, batch.mask)
    return call(batches)


def model_modalities(model: nn.Module) -> list[str]:
    return [model.modality] if isinstance(model, LegoBlock) else list(model.modalities)


def _to(batches: Mapping[str, ModalityBatch], device: torch.device) -> dict[str, ModalityBatch]:
    if device.type == "cuda":
        return {m: ModalityBatch(*(t.pin_memory() if t is not None else None for t in (b.x, b.mask, b.present, b.observed)))
                .to(device, non_blocking=True) for m, b in batches.items()}
    return dict(batches)


@torch.no_grad()
def predict_logits(model: nn.Module, data: SplitData, ids: Sequence[str], batch_size: int = 256,
                   device: torch.device | None = None, inputs: Inputs | None = None) -> torch.Tensor:
    """Logits for these samples, in order, in eval mode; `inputs` may rewrite each batch (missing-rate protocol)."""
    device = device or next(model.parameters()).device
    model.eval()
    outputs = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batches, _ = data.batch(chunk)
        if inputs is not None:
            batches = inputs(batches, chunk)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(run_model(model, _to(batches, device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate(model: nn.Module, data: SplitData, ids: Sequence[str], task: TaskSpec,
             device: torch.device | None = None, inputs: Inputs | None = None) -> dict[str, float]:
    """The task's metrics on these samples."""
    if not ids:
        return {}
    _, targets = data.batch(ids)
    return task_metrics(task, predict_logits(model, data, ids, device=device, inputs=inputs), targets)


def _better(metric: float, loss: float, best: tuple[float, float] | None) -> bool:
    if best is None:
        return True
    if metric == metric and best[0] == best[0] and metric != best[0]:
        return metric > best[0]
    return loss < best[1]


def train_model(model: nn.Module, data: SplitData, task: TaskSpec, config: TrainConfig,
                progress: bool = True, label: str = "training", inputs: Inputs | None = None,
                eval_inputs: Inputs | None = None) -> TrainResult:
    """Fit a model on the train split; select the epoch on the validation split; restore that epoch's weights.
    `inputs` rewrites training and validation batches, `eval_inputs` the final test batches (default: `inputs`)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    shuffler = random.Random(config.seed)
    place = world()
    device = resolve_device(device_for(config.device))
    progress = progress and place.main
    model.to(device)
    modalities = model_modalities(model)
    train_ids, val_ids = data.ids("train", modalities), data.ids("val", modalities)
    if not train_ids:
        raise ConfigError(f"{data.folder.root}: no training samples with {', '.join(modalities)}")
    edges = data.survival_edges(train_ids) if task.kind == "survival" else None
    if config.freeze_encoders:
        for module in model.modules():
            if isinstance(module, LegoBlock):
                module.encoder.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing to train: every parameter is frozen")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    call: nn.Module = model
    if place.size > 1:
        # gradients are averaged over the processes; a modality absent from a shard leaves parameters unused
        call = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    if config.compile:
        call = torch.compile(call)
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    best_epoch, waited, history = 0, 0, []
    primary = PRIMARY[task.kind]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        job = bar.add_task(label, total=config.epochs, status="")
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = list(train_ids)
            shuffler.shuffle(order)
            total, count = torch.zeros((), device=device), 0
            for start in range(0, len(order), config.batch_size):
                ids = place.shard(order[start : start + config.batch_size])
                if not ids:
                    raise ConfigError(f"a global batch holds fewer samples than the {place.size} processes")
                batches, targets = data.batch(ids, edges)
                if inputs is not None:
                    batches = inputs(batches, ids)
                targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = run_model(model, _to(batches, device), call)
                loss = task_loss(task, logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(ids)
                count += len(ids)
            train_loss = float(total) / count
            val_logits = predict_logits(model, data, val_ids, device=device, inputs=inputs) if val_ids else None
            if val_logits is not None:
                _, val_targets = data.batch(val_ids, edges)
                val_metrics = task_metrics(task, val_logits, val_targets)
                val_loss = float(task_loss(task, val_logits, val_targets))
            else:
                val_metrics, val_loss = {primary: float("nan")}, train_loss
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **val_metrics})
            if _better(val_metrics[primary], val_loss, best):
                best, best_epoch, waited = (val_metrics[primary], val_loss), epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
            bar.update(job, advance=1, status=f"loss {train_loss:.3f}  val {primary} {val_metrics[primary]:.3f}")
            if waited >= config.patience:
                break
    model.load_state_dict(best_state)
    val = evaluate(model, data, val_ids, task, device, inputs)
    test = evaluate(model, data, data.ids("test", modalities), task, device, eval_inputs or inputs)
    edge_list = None if edges is None else [float(e) for e in edges]
    return TrainResult(best_epoch, val, test, history, edge_list, time.perf_counter() - started,
                       sample_record(train_ids, val_ids))
