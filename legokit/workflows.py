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
from .spec import BlockSpec
from .tasks import TaskSpec
from .train import TrainConfig, TrainResult, evaluate, model_modalities, train_model


def build_block(spec: BlockSpec, input_shape: tuple[int | None, ...]) -> LegoBlock:
    """A fresh block from a spec, for inputs of this per-sample shape."""
    kwargs = {"in_features": input_shape[-1], **dict(spec.encoder_kwargs)}
    encoder = build_encoder(spec.encoder, kwargs)
    config = BlockConfig(spec.modality, EncoderSpec(spec.encoder, kwargs, encoder.out_dim), tuple(input_shape), spec.task,
                         spec.latent, spec.depth, spec.fft_axes, spec.heads, spec.dim_head, 4, spec.dropout)
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


def fuse_blocks(blocks: Sequence[LegoBlock], data_dir: str | os.PathLike[str], mode: str = "stack",
                config: TrainConfig = TrainConfig(epochs=2), splits: dict[str, str] | None = None,
                progress: bool = True) -> tuple[FusedModel, TrainResult]:
    """LegoFuse: stack or weave the blocks, then fine-tune on (paired) data for a few epochs (default 2)."""
    torch.manual_seed(config.seed)
    model = fuse(list(blocks), mode)
    task = model.task
    inputs = {m: b.config.input_shape for m, b in model.blocks.items()}
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


def evaluate_model(model: nn.Module, data_dir: str | os.PathLike[str], split: str = "test", seed: int | None = None,
                   splits: dict[str, str] | None = None) -> dict[str, Any]:
    """Metrics of any model on one split of a labelled dataset folder (splits.csv, or the seeded split the model
    was trained with)."""
    modalities = model_modalities(model)
    blocks = [model] if isinstance(model, LegoBlock) else list(model.blocks.values())
    task: TaskSpec = blocks[0].config.task
    if seed is None:
        seed = _training_seed(model)
    data = SplitData.load(data_dir, {b.modality: b.config.input_shape for b in blocks}, task, seed, splits)
    ids = data.ids(split, modalities) if split != "all" else [i for s in ("train", "val", "test") for i in data.ids(s, modalities)]
    return {"split": split, "split_source": data.split_source, "samples": len(ids),
            **evaluate(model, data, ids, task, next(model.parameters()).device)}


def _training_seed(model: nn.Module) -> int:
    record = getattr(model, "provenance", {}) or {}
    for key in ("fused", "trained"):
        if key in record:
            return int(record[key].get("config", {}).get("seed", 0))
    return 0
