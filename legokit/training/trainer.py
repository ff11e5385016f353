"""The trainer: AdamW, validation once per epoch, early stopping that restores a deep copy of the best weights,
model selection on the validation split only, seeded, with progress; bf16 autocast on CUDA. The loop has named
parts (`Trainer.step`, `.epoch`, `.validate`, `Selection`, callbacks) so that new behaviour is an addition."""

from __future__ import annotations

import copy
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from legokit.cache import TokenCache, blocks_of, encoded_once, pretrained
from legokit.compose.joins import joined_contract
from legokit.data.batch import ModalityBatch
from legokit.data.dropout import check_rate, drop_modalities
from legokit.data.loader import read_ahead
from legokit.data.stream import Subsample, budget_chunks
from legokit.data.training import SplitData
from legokit.device import resolve_device
from legokit.encoders.longitudinal import summarised_once
from legokit.errors import ConfigError, positive_int
from legokit.progress import Advance, log, progress_bar
from legokit.schema import RECIPE, SHARED, SPEC, option
from legokit.tasks import TaskSpec
from legokit.training.distributed import World, device_for, world
from legokit.training.leakage import sample_record
from legokit.training.metrics import PRIMARY, SURVIVAL_LOSSES, task_loss, task_metrics, undefined_auc

ENCODER_MODES = ("auto", "frozen", "finetune")
# a fine-tuned pretrained encoder's learning rate, relative to the block's: chosen on validation (python -m
# benchmarks.encoder_lr; docs/benchmarks.md, "Pretrained text encoders on CPU")
ENCODER_LR_SCALE = 0.1


FILES = (SPEC, RECIPE)  # every training setting is a key of a spec's `training:` and of a fuse recipe's operation


@dataclass(frozen=True)
class TrainConfig:
    """Training settings, validated here once; each field's flag, spec key and recipe key derive from it
    (`legokit.schema`). Defaults chosen on validation splits of three small cohorts (docs/benchmarks.md)."""

    epochs: int = option(60, "most epochs (early stopping on validation; default {default})", type=int, keys=FILES)
    batch_size: int = option(32, "samples per step (default {default})", type=int, keys=FILES)
    lr: float = option(1e-3, "AdamW learning rate (default {default})", type=float, show="{:g}".format, keys=FILES)
    weight_decay: float = option(
        0.1, "AdamW weight decay (default {default})", type=float, show="{:g}".format, keys=FILES
    )
    patience: int = option(
        15, "epochs without validation gain before stopping (default {default})", type=int, keys=FILES
    )
    # a survival block's loss: the discrete-time likelihood of its bins, Cox's partial likelihood (Breslow ties) of
    # the risk its c-index ranks by, or both; the head and its bins stay as they are, so the block still merges
    survival_loss: str = option(
        "nll",
        "a survival task's training loss: nll (discrete-time likelihood of the bins), cox (Cox's partial "
        "likelihood of the risk, Breslow ties; probabilities then rest on the calibration step) or nll+cox "
        "(default {default})",
        choices=SURVIVAL_LOSSES,
        keys=FILES,
    )
    # a small validation split's metric jumps from epoch to epoch: selecting on its mean over the last epochs picks a
    # stretch of good epochs rather than one lucky one (the weights kept are the stretch's last epoch's)
    smoothing: int = option(
        1,
        "select the epoch, and stop, on the validation metric's mean over the last N epochs (1: each epoch's own) "
        "(default {default})",
        type=int,
        metavar="N",
        keys=FILES,
    )
    # what the seed draws differs by command: each command's parser says it (`legokit.cli.commands`)
    seed: int = option(0, "seed of the run's random draws (default {default})", type=int, keys=FILES)
    device: str = option("auto", cli=SHARED, keys=FILES)  # every computing command's own --device flag
    # "auto" keeps pretrained (wrapped) encoders frozen and trains built-in ones with their block; "frozen" freezes
    # every encoder; "finetune" trains every encoder, pretrained ones at `encoder_lr`
    encoders: str = option(
        "auto",
        "which encoders train: auto (pretrained, wrapped encoders stay frozen, built-in "
        "ones train with their block), frozen, or finetune (pretrained ones at --encoder-lr) "
        "(default {default})",
        choices=ENCODER_MODES,
        keys=FILES,
    )
    encoder_lr: float | None = option(
        None,
        f"learning rate of fine-tuned pretrained encoders (default: --lr x {ENCODER_LR_SCALE:g})",
        type=float,
        keys=FILES,
    )
    compile: bool = option(False, "run the training steps through torch.compile", keys=FILES)
    # modality dropout: each training step drops each of a sample's modalities with this probability, never all of
    # them, so that a fused model or an adapter does not rely on a modality some samples lack (`data.dropout`)
    modality_dropout: float = option(
        0.0,
        "drop each of a training sample's modalities with this probability at "
        "every step, never all of them (a sample with one is never changed), so that "
        "the model does not rely on a modality some samples lack (default {default})",
        type=float,
        metavar="RATE",
        show="{:g}".format,
        keys=FILES,
    )

    # bags of thousands of patches: a training step reads at most this many of each bag's tokens, drawn at random
    # (seeded, new each epoch), as attention-MIL practice does; validation, test and predict see every token
    max_tokens: int = option(
        4096,
        "at most this many tokens (patches) of each bag per sample in a training step, drawn at random "
        "(seeded, new each epoch); evaluation and prediction see every token (default {default})",
        type=int,
        metavar="N",
        keys=FILES,
    )
    workers: int | None = option(
        None,
        "loader processes that read the next batches while the model computes (default: 2 when the model "
        "reads bags, else 0); results are the same with any number",
        type=int,
        metavar="N",
        keys=FILES,
    )
    # survival: per-bin hazard offsets (and a scale) fitted on the validation split after training, stored in the
    # artifact and applied by predict and eval (`legokit.survival.calibration`); risks and rankings do not change
    calibrate: bool = option(
        True,
        "recalibrate a survival model's probabilities on the validation split after training (stored in the "
        "artifact; rankings and c-index unchanged) (default on)",
        keys=FILES,
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "max_tokens", "smoothing"):
            positive_int(name, getattr(self, name))
        if self.workers is not None and (
            not isinstance(self.workers, int) or isinstance(self.workers, bool) or not 0 <= self.workers <= 64
        ):
            raise ConfigError(f"workers must be a whole number from 0 to 64, got {repr(self.workers)[:40]}")
        for name in ("lr", "weight_decay", "encoder_lr"):
            value = getattr(self, name)
            if name == "encoder_lr" and value is None:
                continue
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not 0 <= value <= sys.float_info.max
                or (name != "weight_decay" and value == 0)
            ):  # compared as is: a huge int is no OverflowError
                raise ConfigError(
                    f"{name} must be a {'non-negative' if name == 'weight_decay' else 'positive'} "
                    f"number, got {repr(value)[:40]}"
                )
        if self.survival_loss not in SURVIVAL_LOSSES:
            raise ConfigError(
                f"survival_loss must be one of {', '.join(SURVIVAL_LOSSES)}, got {repr(self.survival_loss)[:40]}"
            )
        if self.encoders not in ENCODER_MODES:
            raise ConfigError(f"encoders must be one of {', '.join(ENCODER_MODES)}, got {self.encoders!r}")
        check_rate(self.modality_dropout, "modality_dropout")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not -(2**63) <= self.seed < 2**63:
            raise ConfigError(f"seed must be a 64-bit integer, got {repr(self.seed)[:40]}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {repr(self.compile)[:40]}")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as auto, cpu or cuda:0, got {repr(self.device)[:40]}")

    @property
    def pretrained_lr(self) -> float:
        """The learning rate of fine-tuned pretrained encoders."""
        return self.encoder_lr if self.encoder_lr is not None else self.lr * ENCODER_LR_SCALE


# the one definition of each operation's training defaults, used by the CLI, specs, recipes and the Python API
FUSE_TRAINING = TrainConfig(epochs=2)  # LegoFuse fine-tunes for the paper's 2 epochs
ADAPT_TRAINING = TrainConfig(epochs=20, patience=5)  # missing-modality adapters


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
    encoding: dict[str, dict[str, float]] = field(default_factory=dict)  # frozen encoders' pass (`encoded_once`)
    val_logits: torch.Tensor | None = None  # the selected model's on the validation split (for calibration)

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
            "history": self.history,  # per epoch: losses and validation metrics (`legokit train --plot`)
        }


Inputs = Callable[[Mapping[str, ModalityBatch], Sequence[str]], Mapping[str, ModalityBatch]]


def _to(batches: Mapping[str, ModalityBatch], device: torch.device) -> dict[str, ModalityBatch]:
    """The batches on `device` in float32: on CUDA copied from page-locked memory without blocking, then widened
    there (half-precision bags cross the bus half)."""
    if device.type == "cuda":
        return {m: b.pin_memory().to(device, non_blocking=True).widened() for m, b in batches.items()}
    return {m: b.widened() for m, b in batches.items()}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: SplitData,
    ids: Sequence[str],
    batch_size: int = 256,
    device: torch.device | None = None,
    inputs: Inputs | None = None,
    workers: int = 0,
    place: World = World(),
) -> torch.Tensor:
    """Logits for these samples, in order, in eval mode; `inputs` may rewrite each batch (missing-rate protocol);
    `workers` loader processes read ahead (`data.loader`); under torchrun each process reads and scores its share
    (`place`) and the logits are gathered."""
    if place.size > 1:
        shares = place.gathered(predict_logits(model, data, place.shard(ids), batch_size, device, inputs, workers))
        rows = place.unshard([list(share) for share in shares])
        return torch.stack(rows) if rows else torch.empty(0)
    device = device or next(model.parameters()).device
    model.eval()
    outputs = []
    batches: Mapping[str, ModalityBatch]
    # every token of every bag: batches of at most `batch_size` samples within the folder's token budget
    chunks = budget_chunks(ids, data.folder.lengths(ids), data.folder.token_budget(), most=batch_size)
    for chunk, batches, _ in read_ahead(data, chunks, workers=workers, pin=device.type == "cuda"):
        if inputs is not None:
            batches = inputs(batches, chunk)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(_to(batches, device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate(
    model: nn.Module,
    data: SplitData,
    ids: Sequence[str],
    task: TaskSpec,
    device: torch.device | None = None,
    inputs: Inputs | None = None,
    draw: Callable[[torch.Tensor, Mapping[str, torch.Tensor]], Any] | None = None,
    place: World = World(),
) -> dict[str, float]:
    """The task's metrics on these samples; `draw(logits, targets)`, if given, also gets what they were computed
    from (a figure of the split)."""
    if not ids:
        return {}
    targets = data.targets(ids)
    logits = predict_logits(model, data, ids, device=device, inputs=inputs, place=place)
    if draw is not None:
        draw(logits, targets)
    return task_metrics(task, logits, targets)


@dataclass
class Selection:
    """The model-selection rule: the epoch with the best validation primary metric (a NaN metric or a tie falls
    back to the lower validation loss), each the mean over the last `window` epochs, with a deep copy of the
    selected epoch's weights and the epochs waited since. Until `window` epochs have run, the means of the epochs so
    far choose and nobody waits; the first full window then replaces that choice whatever it scores, so a partial
    window (one lucky first epoch) never beats a full one."""

    best: tuple[float, float] | None = None
    epoch: int = 0
    waited: int = 0
    state: dict[str, torch.Tensor] | None = None
    window: int = 1
    recent: list[tuple[float, float]] = field(default_factory=list)

    def better(self, metric: float, loss: float) -> bool:
        if self.best is None:
            return True
        if metric == metric and self.best[0] == self.best[0] and metric != self.best[0]:
            return metric > self.best[0]
        return loss < self.best[1]

    def update(self, epoch: int, metric: float, loss: float, model: nn.Module) -> None:
        self.recent = [*self.recent, (metric, loss)][-self.window :]
        metric = sum(m for m, _ in self.recent) / len(self.recent)  # NaN if any epoch's is: the loss decides
        loss = sum(v for _, v in self.recent) / len(self.recent)
        first_full = epoch == self.window
        if first_full or self.better(metric, loss):
            self.best, self.epoch, self.waited = (metric, loss), epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        elif epoch > self.window:
            self.waited += 1


class Callback(Protocol):
    """Called after every epoch with that epoch's history row; returns True to stop training."""

    def __call__(self, epoch: int, row: Mapping[str, float], selection: Selection) -> bool: ...


def early_stopping(patience: int) -> Callback:
    """Stop once `patience` epochs passed without a better validation result."""
    return lambda epoch, row, selection: selection.waited >= patience


def show_progress(advance: Advance, primary: str) -> Callback:
    """Report each epoch's training loss and validation metric to a progress display."""

    def report(epoch: int, row: Mapping[str, float], selection: Selection) -> bool:
        advance(1, f"loss {row['train_loss']:.3f}  val {primary} {row[primary]:.3f}")
        return False

    return report


class Trainer:
    """One training run in named parts: `step` (one batch), `epoch` (one pass over the shuffled training ids),
    `validate`, and `fit` (epochs, selection, callbacks, restoring the selected weights)."""

    def __init__(
        self, model: nn.Module, data: SplitData, task: TaskSpec, config: TrainConfig, inputs: Inputs | None = None
    ):
        if config.survival_loss != "nll" and task.kind != "survival":
            raise ConfigError(f"survival_loss {config.survival_loss} is for survival tasks, not {task.kind}")
        torch.manual_seed(config.seed)
        self.model, self.data, self.task, self.config, self.inputs = model, data, task, config, inputs
        self.shuffler = random.Random(config.seed)
        self.place = world()
        # modality dropout's own stream (one per process), apart from the global RNG: the same draws in every run
        self.dropping = torch.Generator().manual_seed(config.seed + self.place.rank)
        self.device = resolve_device(device_for(config.device))
        model.to(self.device)
        self.modalities = list(cast(Sequence[str], model.modalities))
        self.train_ids, self.val_ids = data.ids("train", self.modalities), data.ids("val", self.modalities)
        if not self.train_ids:
            raise ConfigError(f"{data.folder.root}: no training samples with {', '.join(self.modalities)}")
        self.edges = survival_edges(model, data) if task.kind == "survival" else None
        self.fixed = set_encoders(model, config.encoders)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("nothing to train: every parameter is frozen")
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.call: Callable[..., torch.Tensor] = model
        if self.place.size > 1:
            # gradients are averaged over the processes; a modality absent from a shard leaves parameters unused
            self.call = DistributedDataParallel(
                model,
                find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        if config.compile:
            self.call = torch.compile(self.call)
        self.primary = PRIMARY[task.kind]
        self.epochs_run = 0
        self.workers = (
            config.workers if config.workers is not None else (2 if data.folder.reads_bags(self.modalities) else 0)
        )
        self.encoding: dict[str, dict[str, float]] = {}  # per cached modality: samples found, encoded, seconds
        if self.place.main:
            self.warn_undefined()

    def warn_undefined(self) -> None:
        """Say before training which splits' AUC is undefined (one class only): selection then goes by validation
        loss, and the reported metric is NaN (null in JSON)."""
        for split in ("val", "test"):
            ids = self.data.ids(split, self.modalities)
            note = undefined_auc(self.task, self.data.labels.select(ids), split) if ids else None
            if note:
                log.warning("%s", note)
        val = self.data.ids("val", self.modalities)
        if self.config.survival_loss == "cox" and val and not bool(self.data.labels.select(val)["event"].any()):
            log.warning(
                "the val split's %d samples hold no event: its c-index is 0.5 and its Cox partial likelihood 0 at "
                "every epoch, so selection keeps the first epoch",
                len(val),
            )

    def step(
        self,
        ids: Sequence[str],
        loaded: tuple[Mapping[str, ModalityBatch], Mapping[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """One optimiser step on these samples, read here unless `loaded` (after `inputs`, then modality dropout);
        returns the loss, detached."""
        batches: Mapping[str, ModalityBatch]
        batches, targets = loaded if loaded is not None else self.data.batch(ids, self.edges, self.subsample())
        if self.inputs is not None:
            batches = self.inputs(batches, ids)
        if self.config.modality_dropout:  # training batches only: validation and test see every modality
            batches = drop_modalities(batches, self.config.modality_dropout, self.dropping)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.call(_to(batches, self.device))
        loss = task_loss(self.task, logits, targets, self.config.survival_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def epoch(self) -> float:
        """One pass over the training split in a seeded shuffled order; returns the mean training loss. Frozen
        pretrained encoders stay in eval mode: they are fixed feature extractors (and their outputs are cached)."""
        self.model.train()
        for block in self.fixed:
            block.encoder.eval()
        order = list(self.train_ids)
        self.shuffler.shuffle(order)
        chunks = [
            self.place.shard(order[s : s + self.config.batch_size])
            for s in range(0, len(order), self.config.batch_size)
        ]
        if not all(chunks):
            raise ConfigError(f"a global batch holds fewer samples than the {self.place.size} processes")
        self.epochs_run += 1
        total, count = torch.zeros((), device=self.device), 0
        pin = self.device.type == "cuda"
        for ids, batches, targets in read_ahead(self.data, chunks, self.edges, self.subsample(), self.workers, pin):
            total += self.step(ids, (batches, targets)) * len(ids)
            count += len(ids)
        return float(total) / count

    def subsample(self) -> Subsample:
        """This epoch's draw of at most `max_tokens` tokens per bag (a new seed each epoch, the same in any run)."""
        return Subsample(self.config.max_tokens, self.config.seed * 1_000_003 + self.epochs_run)

    def validate(self, train_loss: float) -> tuple[dict[str, float], float]:
        """Metrics and loss on the validation split (without one: NaN metric, the training loss)."""
        if not self.val_ids:
            return {self.primary: float("nan")}, train_loss
        logits = predict_logits(
            self.model, self.data, self.val_ids, device=self.device, inputs=self.inputs, workers=self.workers,
            place=self.place,
        )  # fmt: skip
        targets = self.data.targets(self.val_ids, self.edges)
        return task_metrics(self.task, logits, targets), float(
            task_loss(self.task, logits, targets, self.config.survival_loss)
        )

    def fit(self, callbacks: Sequence[Callback] = (), eval_inputs: Inputs | None = None) -> TrainResult:
        """Train up to `config.epochs` epochs, stop when a callback says so, restore the selected epoch's weights,
        and score them on the validation and test splits."""
        started = time.perf_counter()
        selection = Selection(state=copy.deepcopy(self.model.state_dict()), window=self.config.smoothing)
        history: list[dict[str, float]] = []
        for epoch in range(1, self.config.epochs + 1):
            began = time.perf_counter()
            train_loss = self.epoch()
            metrics, val_loss = self.validate(train_loss)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                **metrics,
                "seconds": time.perf_counter() - began,
            }
            history.append(row)
            log.debug("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
            selection.update(epoch, metrics[self.primary], val_loss, self.model)
            if any([callback(epoch, row, selection) for callback in callbacks]):  # noqa: C419 - every callback runs
                break
        assert selection.state is not None  # the first epoch is always selected
        self.model.load_state_dict(selection.state)
        device = self.device
        kept: list[torch.Tensor] = []
        val = evaluate(
            self.model, self.data, self.val_ids, self.task, device, self.inputs,
            draw=lambda logits, _: kept.append(logits), place=self.place,
        )  # fmt: skip
        test_ids = self.data.ids("test", self.modalities)
        test = evaluate(
            self.model, self.data, test_ids, self.task, device, eval_inputs or self.inputs, place=self.place
        )
        edges = None if self.edges is None else [float(e) for e in self.edges]
        return TrainResult(
            selection.epoch,
            val,
            test,
            history,
            edges,
            time.perf_counter() - started,
            sample_record(self.train_ids, self.val_ids),
            self.encoding,
            kept[0] if kept else None,
        )


def survival_edges(model: nn.Module, data: SplitData) -> torch.Tensor:
    """The bins a survival model trains with: those its contract records (given by the user, shared with other
    blocks, or fixed when its blocks were trained), else quantiles of the labelled training times."""
    recorded = joined_contract([b.config for b in blocks_of(model).values()]).full_edges()
    return torch.tensor(recorded, dtype=torch.float64) if recorded is not None else data.survival_edges()


def set_encoders(model: nn.Module, mode: str) -> list[Any]:
    """Freeze or unfreeze the model's encoders by `TrainConfig.encoders`; returns the blocks whose pretrained
    encoder is frozen (kept in eval mode, their outputs cacheable)."""
    for block in blocks_of(model).values():
        if mode == "frozen" or (mode == "auto" and pretrained(block)):
            block.encoder.requires_grad_(False)
        elif mode == "finetune":
            block.encoder.requires_grad_(True)
    return [
        b
        for b in blocks_of(model).values()
        if pretrained(b) and not any(p.requires_grad for p in b.encoder.parameters())
    ]


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in groups: fine-tuned pretrained encoders at `config.pretrained_lr` (a pretrained
    backbone moves less than the layers learned from scratch), parameters a module names in `no_weight_decay`
    without weight decay, everything else at `config.lr`."""
    slow = {
        id(p) for b in blocks_of(model).values() if pretrained(b) for p in b.encoder.parameters() if p.requires_grad
    }
    # parameters whose identity is not 0 (an SSF scale is 1) must not decay towards 0: AdamW's decay shrinks every
    # row of a tensor that has a gradient, those of modality combinations absent from the batch too
    undecayed = {id(getattr(m, name)) for m in model.modules() for name in getattr(m, "no_weight_decay", ())}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in trainable if id(p) not in slow | undecayed]},
        {"params": [p for p in trainable if id(p) in slow and id(p) not in undecayed], "lr": config.pretrained_lr},
        {"params": [p for p in trainable if id(p) in undecayed], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def train_model(
    model: nn.Module,
    data: SplitData,
    task: TaskSpec,
    config: TrainConfig,
    progress: bool = True,
    label: str = "training",
    inputs: Inputs | None = None,
    eval_inputs: Inputs | None = None,
    cache: TokenCache | None = None,
) -> TrainResult:
    """Fit a model on the train split; select the epoch on the validation split; restore that epoch's weights.
    `inputs` rewrites training and validation batches, `eval_inputs` the final test batches (default: `inputs`).
    Frozen pretrained encoders run once per sample, before the first epoch, through `cache` (`legokit.cache`), and
    longitudinal encoders summarise each sample once (`legokit.encoders.longitudinal.SummaryTable`)."""
    trainer = Trainer(model, data, task, config, inputs)
    shown = progress and trainer.place.main
    everyone = [i for split in ("train", "val", "test") for i in data.ids(split, trainer.modalities)]
    # built-in longitudinal encoders summarise each sample once (`SummaryTable`); a compiled step keeps its graph
    summarised = summarised_once(model, data) if not config.compile else nullcontext()
    with encoded_once(model, data, everyone, cache, training=True, progress=shown) as encoding, summarised:
        trainer.encoding = encoding
        with progress_bar(label, config.epochs, enabled=shown, unit="epochs") as advance:
            return trainer.fit([show_progress(advance, trainer.primary), early_stopping(config.patience)], eval_inputs)
