"""The steps a user runs: train a block on a dataset folder, fuse blocks and fine-tune them, evaluate a model."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from .block import BlockConfig, EncoderSpec, LegoBlock
from .compose.fuse import FusedModel, fuse
from .data.folder import modality_shape
from .data.training import SplitData
from .encoders import build_encoder
from .errors import ConfigError
from .samples import refuse_overlap, training_seed
from .spec import BlockSpec
from .tasks import TaskSpec
from .train import TrainConfig, TrainResult, evaluate, model_modalities, train_model


def build_block(spec: BlockSpec, input_shape: tuple[int | None, ...]) -> LegoBlock:
    """A fresh block from a spec, for inputs of this per-sample shape."""
    kwargs = {"in_features": input_shape[-1], **dict(spec.encoder_kwargs)}
    encoder = build_encoder(spec.encoder, kwargs)
    config = BlockConfig(spec.modality, EncoderSpec(spec.encoder, kwargs, encoder.out_dim), tuple(input_shape), spec.task,
                         spec.latent, spec.depth, spec.fft_axes, spec.heads, spec.dim_head, 4, spec.dropout,
                         update=spec.update, head_features=spec.head_features, shared_init=spec.shared_init)
    return LegoBlock(config, encoder=encoder)


def train_block(data_dir: str | os.PathLike[str], spec: BlockSpec, splits: dict[str, str] | None = None,
                ids: Sequence[str] | None = None, progress: bool = True) -> tuple[LegoBlock, TrainResult]:
    """Train one block on its modality of a dataset folder; `ids` restricts training to those samples (unpaired
    settings). Its input standardisation comes from the training split; provenance records data, split, metrics."""
    torch.manual_seed(spec.training.seed)
    shape = modality_shape(data_dir, spec.modality)
    data = SplitData.load(data_dir, {spec.modality: shape}, spec.task, spec.training.seed, splits)
    if ids is not None:
        keep = set(ids)
        data.splits = {i: s if s != "train" or i in keep else "unused" for i, s in data.splits.items()}
    block = build_block(spec, shape)
    block.set_normalization(*data.normalization(spec.modality, data.ids("train", [spec.modality])))
    result = train_model(block, data, spec.task, spec.training, progress, label=f"training {spec.modality}")
    block.provenance = {"trained": result.provenance(data, spec.training, [spec.modality])}
    return block.cpu().eval(), result


def train_wrapped_block(data_dir: str | os.PathLike[str], block: LegoBlock, config: TrainConfig = TrainConfig(),
                        standardize: bool = False, splits: dict[str, str] | None = None,
                        progress: bool = True) -> tuple[LegoBlock, TrainResult]:
    """Train a wrapped (or any loaded) block on its modality of a dataset folder: its latent, update layers and
    head, and its encoder too unless `config.freeze_encoders` (a pretrained encoder stays frozen by default in the
    CLI). `standardize` sets the input standardisation from the training split; otherwise the encoder sees the
    data as stored, as it was trained to. Same trainer, splits, provenance and metrics as a built-in block."""
    torch.manual_seed(config.seed)
    data = SplitData.load(data_dir, {block.modality: block.data_input}, block.config.task, config.seed, splits)
    if standardize:
        if block.config.input_dtype != "float32" or len(block.config.input_shape) > 2:
            raise ConfigError(f"block {block.modality}: --standardize is for feature vectors and bags of feature "
                              f"tokens, not inputs of shape {block.config.input_shape} ({block.config.input_dtype})")
        block.set_normalization(*data.normalization(block.modality, data.ids("train", [block.modality])))
    result = train_model(block, data, block.config.task, config, progress, label=f"training {block.modality}")
    kept = {k: v for k, v in block.provenance.items() if k != "trained"}
    block.provenance = {**kept, "trained": {**result.provenance(data, config, [block.modality]),
                                            "encoder": "frozen" if config.freeze_encoders else "fine-tuned",
                                            "standardized": standardize}}
    return block.cpu().eval(), result


def fuse_blocks(blocks: Sequence[LegoBlock], data_dir: str | os.PathLike[str], mode: str = "stack",
                config: TrainConfig = TrainConfig(epochs=2), splits: dict[str, str] | None = None,
                progress: bool = True) -> tuple[FusedModel, TrainResult]:
    """LegoFuse: stack or weave the blocks, then fine-tune on (paired) data for a few epochs (default 2)."""
    torch.manual_seed(config.seed)
    model = fuse(list(blocks), mode)
    task = model.task
    inputs = {m: b.data_input for m, b in model.blocks.items()}
    data = SplitData.load(data_dir, inputs, task, config.seed, splits)
    for block in model.blocks.values():
        trained_on = (block.provenance.get("trained") or {}).get("split")
        if trained_on is not None and (trained_on != data.split_source or data.split_source == "given"):
            result_note = f"block {block.modality} was trained on split '{trained_on}', fused on '{data.split_source}'"
            model.provenance.setdefault("warnings", []).append(result_note)
    result = train_model(model, data, task, config, progress, label=f"fusing ({mode})")
    model.provenance.update({"fused": result.provenance(data, config, model.modalities),
                             "blocks": {m: b.provenance for m, b in model.blocks.items()}})
    return model.cpu().eval(), result


def labelled_data(model: nn.Module, data_dir: str | os.PathLike[str], seed: int,
                  splits: dict[str, str] | None = None) -> tuple[SplitData, TaskSpec, list[str]]:
    """A dataset folder read for a model (a block, a merged or fused model, or any of them with adapters): the
    data with its split, the model's task, and its modalities."""
    from .adapters import Adapted

    base = model.base if isinstance(model, Adapted) else model
    blocks = [base] if isinstance(base, LegoBlock) else list(base.blocks.values())
    task: TaskSpec = blocks[0].config.task
    data = SplitData.load(data_dir, {b.modality: b.data_input for b in blocks}, task, seed, splits)
    return data, task, model_modalities(model)


def evaluate_model(model: nn.Module, data_dir: str | os.PathLike[str], split: str = "test", seed: int | None = None,
                   splits: dict[str, str] | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Metrics of any model on one split of a labelled dataset folder (splits.csv, or the seeded split the model
    -- or all its blocks -- was trained with). Samples any of its blocks was trained or validated on are refused
    (`allow_overlap`: scored, with a warning in the result)."""
    data, task, modalities = labelled_data(model, data_dir, _training_seed(model) if seed is None else seed, splits)
    ids = data.ids(split, modalities) if split != "all" else [i for s in ("train", "val", "test") for i in data.ids(s, modalities)]
    warnings = [] if split in ("train", "val", "all") else refuse_overlap(provenance_of(model), ids, split, allow_overlap)
    return {"split": split, "split_source": data.split_source, "samples": len(ids), "warnings": warnings,
            **evaluate(model, data, ids, task, next(model.parameters()).device)}


def provenance_of(model: nn.Module) -> dict[str, Any]:
    """A model's provenance; an adapted model's is its base's."""
    return getattr(model, "provenance", None) or getattr(getattr(model, "base", None), "provenance", None) or {}


def _training_seed(model: nn.Module) -> int:
    found = training_seed(provenance_of(model))
    return 0 if found is None else found


ADAPT_METHODS = ("head", "mora", "ssf", "full")


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters, and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def prepare_adaptation(model: nn.Module, method: str, rank: int = 4, at: str | None = None) -> nn.Module:
    """The model ready for one way of adapting to missing modalities: `head` (only the head trains), `mora` or
    `ssf` (the adapter and the head train, the base is frozen), or `full` (everything trains)."""
    from .adapters import MoRA, SSF, attach
    from .adapters.files import head_of

    if method not in ADAPT_METHODS:
        from .errors import ConfigError

        raise ConfigError(f"unknown adaptation {method!r}; choose one of {', '.join(ADAPT_METHODS)}")
    modalities = model_modalities(model)
    if method == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if method in ("mora", "ssf"):
        adapter = MoRA(modalities, rank=rank) if method == "mora" else SSF(modalities)
        model = attach(model, adapter, at)
    head_of(model).requires_grad_(True)
    return model


def adapt(model: nn.Module, data_dir: str | os.PathLike[str], method: str = "mora", rank: int = 4,
          at: str | None = None, train_missing: str | None = None, test_missing: str | None = None,
          config: TrainConfig = TrainConfig(epochs=20, patience=5), splits: dict[str, str] | None = None,
          progress: bool = True, allow_overlap: bool = False) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train a missing-modality adaptation on a dataset folder under the MoRA protocol: per modality, the train
    (and validation) missing rates `train_missing`, and `test_missing` for the reported test metrics."""
    from .adapters import MissingRates

    data, task, modalities = labelled_data(model, data_dir, config.seed, splits)
    warnings = refuse_overlap(provenance_of(model), data.ids("test", modalities), "test", allow_overlap)
    train_rates = MissingRates.parse(train_missing, config.seed)
    # test draws use seed + 1, independent of the training draws, and the same as `evaluate_missing` makes
    test_rates = MissingRates.parse(train_missing if test_missing is None else test_missing, config.seed + 1)
    train_rates.check(modalities)
    test_rates.check(modalities)
    prepared = prepare_adaptation(model, method, rank, at)
    counts = parameter_counts(prepared)
    result = train_model(prepared, data, task, config, progress, label=f"adapting ({method})",
                         inputs=lambda b, ids: train_rates.apply(b, ids, modalities),
                         eval_inputs=lambda b, ids: test_rates.apply(b, ids, modalities))
    return prepared.cpu().eval(), result, {**counts, "warnings": warnings}


def evaluate_missing(model: nn.Module, data_dir: str | os.PathLike[str], missing: str | None, split: str = "test",
                     seed: int | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Metrics of a model (adapted or not) on a split, with the modalities missing at the given rates; the split is
    the one the model was trained with unless `seed` says otherwise, and seen samples are refused as above."""
    from .adapters import MissingRates

    seed = _training_seed(model) if seed is None else seed
    data, task, modalities = labelled_data(model, data_dir, seed)
    rates = MissingRates.parse(missing, seed + 1)
    rates.check(modalities)
    ids = data.ids(split, modalities)
    warnings = [] if split in ("train", "val", "all") else refuse_overlap(provenance_of(model), ids, split, allow_overlap)
    metrics = evaluate(model, data, ids, task, next(model.parameters()).device,
                       inputs=lambda b, chunk: rates.apply(b, chunk, modalities))
    return {"split": split, "split_source": data.split_source, "samples": len(ids), "missing": dict(rates.rates),
            "warnings": warnings, **metrics}
